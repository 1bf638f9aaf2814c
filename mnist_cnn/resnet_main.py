"""Trains ResNet on MNIST with the Estimator run loop: the project's front door.

  python -m mnist_cnn.resnet_main --resnet_size=18 --data_dir=DIR --model_dir=DIR

--dataset=cifar10 or tfds:<name> trains the same network on other data (mnist_cnn/datasets.py);
official/resnet/cifar10_main.py has the CIFAR-10 family of the paper and the Model Garden.

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

from absl import app
from absl import flags

from mnist_cnn import estimator_main
from official.resnet import resnet_flags
from official.resnet import resnet_model
from official.utils.flags import core as flags_core

# stem name -> (kernel_size, conv_stride, first_pool_size, first_pool_stride)
STEMS = {
    'mnist': (3, 1, 2, 2),
    'cifar': (3, 1, None, None),
    'imagenet': (7, 2, 3, 2),
}
BLOCK_STRIDES = [1, 2, 2, 2]


class MnistModel(resnet_model.Model):
  """ResNet configured for small grayscale images."""

  def __init__(self, resnet_size, num_classes, stem='mnist', num_filters=64,
               resnet_version=resnet_model.DEFAULT_VERSION, data_format=None,
               dtype=resnet_model.DEFAULT_DTYPE, batch_norm_decay=resnet_model.BATCH_NORM_DECAY):
    """Args as resnet_model.Model; stem is a key of STEMS.

    Raises:
      ValueError: unknown resnet_size (lists the valid ones) or stem.
    """
    if stem not in STEMS:
      raise ValueError('unknown stem %r; choose one of %s' % (stem, ', '.join(STEMS)))
    block_sizes, bottleneck = resnet_model.get_block_sizes(resnet_size)
    kernel_size, conv_stride, pool_size, pool_stride = STEMS[stem]
    super().__init__(
        bottleneck=bottleneck, num_classes=num_classes,
        num_filters=num_filters, kernel_size=kernel_size, conv_stride=conv_stride,
        first_pool_size=pool_size, first_pool_stride=pool_stride, block_sizes=block_sizes,
        block_strides=BLOCK_STRIDES, resnet_version=resnet_version, data_format=data_format,
        dtype=dtype, batch_norm_decay=batch_norm_decay)


def define_mnist_flags(flag_values=flags.FLAGS):
  """The ResNet run-loop flags, this model's own, and MNIST defaults."""
  resnet_flags.define_resnet_flags(flag_values=flag_values)
  estimator_main.define_augmentation_flags(flag_values)
  fv = {'flag_values': flag_values}
  flags.DEFINE_enum('stem', 'mnist', list(STEMS),
                    'First layers: mnist (3x3/1 conv + 2x2/2 pool), cifar (3x3/1, no pool) or '
                    'imagenet (7x7/2 conv + 3x3/2 pool).', **fv)
  flags.DEFINE_integer('num_filters', 64, 'Filters of the first stage (doubled per stage).',
                       **fv)
  flags.register_validator('num_filters', lambda v: v > 0,
                           message='--num_filters must be positive', **fv)
  flags_core.set_defaults(flag_values, resnet_size='18', resnet_version='2', train_epochs=6,
                          batch_size=128, epochs_between_evals=1, weight_decay=5e-4,
                          base_learning_rate=0.2, warmup_epochs=0.2, lr_schedule='cosine',
                          model_dir='/tmp/mnist_resnet')


def run_resnet(flags_obj):
  """Trains and evaluates ResNet on --dataset (or synthetic data); returns the eval results."""
  return estimator_main.run(flags_obj, 'resnet', model_params)


def model_params(flags_obj, raw, plan):
  """The Estimator params (see resnet_run_loop.resnet_model_fn), all built here."""
  resnet_size = int(flags_obj.resnet_size)
  resnet_version = int(flags_obj.resnet_version)
  stem, num_filters, data_format = flags_obj.stem, flags_obj.num_filters, flags_obj.data_format
  num_classes = raw.num_classes
  params = estimator_main.recipe_params(flags_obj, raw.num_train, plan)

  def build_model(dtype, batch_norm_decay=params['batch_norm_decay']):
    return MnistModel(resnet_size, num_classes, stem=stem, num_filters=num_filters,
                      resnet_version=resnet_version, data_format=data_format, dtype=dtype,
                      batch_norm_decay=batch_norm_decay)

  return dict(params, model=build_model, num_classes=num_classes)


def main(_):
  estimator_main.main(run_resnet, flags.FLAGS)


if __name__ == '__main__':
  define_mnist_flags()
  app.run(main)
