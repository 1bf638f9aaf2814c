"""Trains ResNet on MNIST with the Estimator run loop: the project's front door.

  python -m mnist_cnn.resnet_main --resnet_size=18 --data_dir=DIR --model_dir=DIR

The report's MNIST variant of the Model Garden's cifar10_main, in the same shape: HEIGHT,
WIDTH, NUM_CHANNELS, NUM_CLASSES, NUM_IMAGES, DATASET_NAME, input_fn, get_synth_input_fn,
MnistModel, mnist_model_fn, define_mnist_flags, run_resnet and main; run_resnet calls
resnet_run_loop.resnet_main as run_cifar does. --dataset=cifar10 or tfds:<name> trains the same
network on other data (official/data/datasets.py); official/resnet/cifar10_main.py has the
CIFAR-10 family of the paper and the Model Garden.

The network is the ImageNet-family ResNet (official/resnet/resnet_model.py) with a stem for
28x28x1 digits. Stems, measured here (ResNet-18, batch 128, 2-core CPU, the old defaults' step
schedule; README has the tables):
- 'mnist' (default): 3x3/1 convolution, then 2x2/2 max-pool; stages at 14, 7, 4, 2 pixels.
  197 examples/s; 98.21% after 1 epoch, 99.59% after 6 (33.8 min).
- 'cifar': 3x3/1 convolution, no pool; stages at 28, 14, 7, 4. 2.4x slower (82 examples/s).
- 'imagenet': 7x7/2 convolution and 3x3/2 max-pool, as for 224x224 inputs; stages at 7, 4, 2, 1.
  2.9x faster (571 examples/s); 98.72% after 1 epoch, 99.43% after 6 (12.3 min).
'mnist' is the default as the only measured stem that reaches 99.5% in 6 epochs; 'imagenet' is
the quick alternative. For time to accuracy use --flagfile=mnist_cnn/configs/resnet18_fast.flags
(quarter-width stages, bf16, cosine over 8 epochs; the file has its measured figures).

Recipe (README "Recipes" has the runs that chose it): after a 0.2-epoch linear warm-up the
learning rate follows a half cosine to zero over --train_epochs (--lr_schedule=step keeps the
Model Garden's steps at 50/75/90% of the run); before every evaluation and export the batch-norm
statistics are recomputed from the trained weights (--batch_norm_batches), whose moving
averages otherwise lag a high learning rate; training images are shifted by up to
--shift_pixels pixels. The report's runs are reproduced with --lr_schedule=step
--batch_norm_batches=0 --batch_norm_decay=0.997.
"""

import functools

from absl import app
from absl import flags
import tensorflow as tf

from official.data import array_input
from official.data import datasets
from official.data import idx
from official.data import raw_data
from official.resnet import resnet_model
from official.resnet import resnet_run_loop
from official.utils import learning_rate
from official.utils import lifecycle
from official.utils.flags import core as flags_core

HEIGHT = raw_data.MNIST_HEIGHT
WIDTH = raw_data.MNIST_WIDTH
NUM_CHANNELS = raw_data.GREY_CHANNELS
NUM_CLASSES = raw_data.MNIST_NUM_CLASSES
NUM_IMAGES = {'train': 60000, 'validation': 10000}
DATASET_NAME = 'MNIST'

# stem name -> (kernel_size, conv_stride, first_pool_size, first_pool_stride)
STEMS = {
    'mnist': (3, 1, 2, 2),
    'cifar': (3, 1, None, None),
    'imagenet': (7, 2, 3, 2),
}
BLOCK_STRIDES = [1, 2, 2, 2]
# The step schedule (--lr_schedule=step): the Model Garden's ImageNet boundaries (30, 60, 80 of
# 90 epochs) as fractions of any run; --base_learning_rate is for a batch of BATCH_DENOM.
BOUNDARY_FRACTIONS = (0.5, 0.75, 0.9)
DECAY_RATES = (1.0, 0.1, 0.01, 0.001)
BATCH_DENOM = 256
# This project's recipe for MNIST: the flags' defaults, and what mnist_model_fn takes for a
# key its params lack.
RECIPE = dict(train_epochs=6, base_learning_rate=0.2, weight_decay=5e-4, momentum=0.9,
              lr_schedule='cosine', warmup_epochs=0.2, label_smoothing=0.0,
              batch_norm_decay=resnet_model.BATCH_NORM_DECAY, num_images=NUM_IMAGES['train'],
              num_classes=NUM_CLASSES, stem='mnist', num_filters=64)


def input_fn(is_training, data_dir, batch_size, num_epochs=1, dtype=tf.float32,
             datasets_num_private_threads=None, input_context=None, seed=None,
             drop_remainder=False):
  """The four IDX files of data_dir (read and validated once per process) as tf.data, training
  images shifted by up to 2 pixels.

  Returns:
    tf.data.Dataset of (images [B, 28, 28, 1] dtype in [0, 1], labels [B] int32).
  """
  augmentation = datasets.AUGMENTATION[datasets.MNIST]
  return array_input.ArrayInput(idx.load_idx_dataset_cached(data_dir),
                                augmentation.shift_pixels, augmentation.flip)(
      is_training, data_dir, batch_size, num_epochs, dtype=dtype,
      datasets_num_private_threads=datasets_num_private_threads, input_context=input_context,
      seed=seed, drop_remainder=drop_remainder)


def get_synth_input_fn(dtype):
  return resnet_run_loop.get_synth_input_fn(HEIGHT, WIDTH, NUM_CHANNELS, NUM_CLASSES,
                                            dtype=dtype)


class MnistModel(resnet_model.Model):
  """ResNet configured for small grayscale images."""

  def __init__(self, resnet_size, data_format=None, num_classes=NUM_CLASSES,
               resnet_version=resnet_model.DEFAULT_VERSION, dtype=resnet_model.DEFAULT_DTYPE,
               stem='mnist', num_filters=64, batch_norm_decay=resnet_model.BATCH_NORM_DECAY):
    """Args as resnet_model.Model, in the Model Garden's Cifar10Model order; stem is a key of
    STEMS.

    Raises:
      ValueError: unknown resnet_size (lists the valid ones) or stem.
    """
    if stem not in STEMS:
      raise ValueError('unknown stem %r; choose one of %s' % (stem, ', '.join(STEMS)))
    resnet_size = int(resnet_size)
    block_sizes, bottleneck = resnet_model.get_block_sizes(resnet_size)
    kernel_size, conv_stride, pool_size, pool_stride = STEMS[stem]
    super().__init__(
        resnet_size, bottleneck=bottleneck, num_classes=num_classes,
        num_filters=num_filters, kernel_size=kernel_size, conv_stride=conv_stride,
        first_pool_size=pool_size, first_pool_stride=pool_stride, block_sizes=block_sizes,
        block_strides=BLOCK_STRIDES, resnet_version=resnet_version, data_format=data_format,
        dtype=dtype, batch_norm_decay=batch_norm_decay)


def mnist_model_fn(features, labels, mode, params):
  """Model function for MNIST: resnet_model_fn with MnistModel and this project's recipe
  (RECIPE for the keys params lacks; resnet_main gives them all, from the flags)."""
  params = dict(RECIPE, **params)
  learning_rate_fn = learning_rate.from_params(params, BATCH_DENOM, BOUNDARY_FRACTIONS,
                                               DECAY_RATES)
  model_class = functools.partial(
      MnistModel, num_classes=params['num_classes'], stem=params['stem'],
      num_filters=params['num_filters'], batch_norm_decay=params['batch_norm_decay'])
  return resnet_run_loop.resnet_model_fn(
      features, labels, mode, model_class, resnet_size=params['resnet_size'],
      weight_decay=params['weight_decay'], learning_rate_fn=learning_rate_fn,
      momentum=params['momentum'], data_format=params['data_format'],
      resnet_version=params['resnet_version'], loss_scale=params['loss_scale'],
      dtype=params['dtype'], fine_tune=params['fine_tune'],
      label_smoothing=params['label_smoothing'], ema_decay=params.get('ema_decay', 0.0))


def define_mnist_flags(flag_values=flags.FLAGS):
  """The ResNet run-loop flags, this model's own, and MNIST defaults."""
  resnet_run_loop.define_resnet_flags(
      resnet_size_choices=sorted(resnet_model.RESNET_SIZES), flag_values=flag_values)
  fv = {'flag_values': flag_values}
  flags.DEFINE_enum('stem', RECIPE['stem'], list(STEMS),
                    'First layers: mnist (3x3/1 conv + 2x2/2 pool), cifar (3x3/1, no pool) or '
                    'imagenet (7x7/2 conv + 3x3/2 pool).', **fv)
  flags.DEFINE_integer('num_filters', RECIPE['num_filters'],
                       'Filters of the first stage (doubled per stage).', **fv)
  flags.register_validator('num_filters', lambda v: v > 0,
                           message='--num_filters must be positive', **fv)
  flags_core.set_defaults(
      flag_values, resnet_size='18', resnet_version='2', batch_size=128, epochs_between_evals=1,
      model_dir='/tmp/mnist_resnet',
      **{key: RECIPE[key] for key in ('train_epochs', 'weight_decay', 'base_learning_rate',
                                      'warmup_epochs', 'lr_schedule')})


def run_resnet(flags_obj):
  """Trains and evaluates ResNet on --dataset (or synthetic data); returns resnet_main's
  results."""
  input_function = datasets.input_function(
      flags_obj.dataset, flags_obj.data_dir, flags_obj.use_synthetic_data, flags_obj.seed,
      flags_obj.shift_pixels, flags_obj.random_flip)
  return resnet_run_loop.resnet_main(
      flags_obj, mnist_model_fn, input_function, datasets.display_name(flags_obj.dataset),
      data=input_function,
      model_params={'stem': flags_obj.stem, 'num_filters': flags_obj.num_filters})


def main(_):
  lifecycle.run_main(functools.partial(run_resnet, flags.FLAGS), bool(flags.FLAGS.hooks),
                     user_errors=resnet_run_loop.USER_ERRORS)


def run_command():
  """The `mnist-cnn-resnet` console command (setup.py), as `python -m` runs this module."""
  define_mnist_flags()
  app.run(main)


if __name__ == '__main__':
  run_command()
