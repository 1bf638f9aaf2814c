"""Trains the CIFAR-10 ResNets (He et al. 2016, section 4.2) with the Estimator run loop.

  python -m official.resnet.cifar10_main --data_dir=/tmp/cifar10_data --resnet_size=56

The Model Garden's cifar10_main, with its module API: HEIGHT, WIDTH, NUM_CHANNELS, NUM_CLASSES,
NUM_IMAGES, DATASET_NAME, _RECORD_BYTES, get_filenames, parse_record, preprocess_image,
input_fn, get_synth_input_fn, Cifar10Model, cifar10_model_fn, define_cifar_flags, run_cifar
and main. `Cifar10Model` is ResNet for 32x32 images, sizes 6n+2 (20, 32, 44, 56, 110): a 3x3
convolution of 16 filters, three stages of n building blocks with 16, 32 and 64 filters
(strides 1, 2, 2), no max-pool, global average pool and a dense layer. Training images are
padded by 4, randomly cropped back to 32x32 and mirrored at random.

Where this differs from the Model Garden: every image (served ones too) is standardised to
zero mean and unit variance by the model itself (the Model Garden did it in preprocess_image),
so an export answers as the trained model did, and parse_record gives images in [0, 1]; the
schedule's boundaries are the same fractions (91/182, 136/182) of any --train_epochs, and the
base rate, weight decay and schedule are flags with the Model Garden's values as defaults;
run_cifar reads the files once, validated, into memory (the same records input_fn streams),
and takes --dataset (cifar10, mnist or tfds:<name>: the model takes channels and classes from
the data).

Defaults are the Model Garden's: 182 epochs of batch 128, momentum 0.9, learning rate 0.1 per
128 images divided by 10 after epochs 91 and 136, weight decay 2e-4 on every variable, batch
norm included (its note: "seems more stable in testing" than the paper's 1e-4), evaluation
every 10 epochs. Everything else (cycles, batch-norm statistics, export with both signatures,
serving, bf16, distribution) is resnet_run_loop.resnet_main's.
"""

import functools
import os

from absl import app
from absl import flags
import tensorflow as tf

from official.data import array_input
from official.data import cifar10
from official.data import datasets
from official.resnet import resnet_model
from official.resnet import resnet_run_loop
from official.utils import learning_rate
from official.utils import lifecycle
from official.utils.flags import core as flags_core

HEIGHT = cifar10.HEIGHT
WIDTH = cifar10.WIDTH
NUM_CHANNELS = cifar10.NUM_CHANNELS
NUM_CLASSES = cifar10.NUM_CLASSES
_RECORD_BYTES = cifar10.RECORD_BYTES  # one label byte and 3,072 pixel bytes
NUM_IMAGES = {'train': 50000, 'validation': 10000}
DATASET_NAME = 'CIFAR-10'

NUM_FILTERS = 16
BLOCK_STRIDES = [1, 2, 2]
# The Model Garden's schedule: boundaries at epochs 91, 136 and 182 of 182; the last one ends
# the run, so the rate is divided by 10 twice.
BOUNDARY_FRACTIONS = (91 / 182, 136 / 182, 1.0)
DECAY_RATES = (1, 0.1, 0.01, 0.001)
BATCH_DENOM = 128
# The Model Garden's recipe: the flags' defaults, and what cifar10_model_fn takes for a key its
# params lack (the Model Garden's own params held none of them).
RECIPE = dict(train_epochs=182, base_learning_rate=0.1, weight_decay=2e-4, momentum=0.9,
              lr_schedule='step', warmup_epochs=0.0, label_smoothing=0.0,
              batch_norm_decay=resnet_model.BATCH_NORM_DECAY, num_images=NUM_IMAGES['train'],
              num_classes=NUM_CLASSES)
PHOTO_AUGMENTATION = datasets.AUGMENTATION[datasets.CIFAR10]


###############################################################################
# Data processing
###############################################################################
def get_filenames(is_training, data_dir):
  """The five training files or the test file, in data_dir or its cifar-10-batches-bin.

  Raises:
    FileNotFoundError: one of them is missing (one line naming the directory and the fix).
  """
  directory = cifar10.batches_dir(data_dir)
  names = cifar10.TRAIN_FILES if is_training else cifar10.TEST_FILES
  missing = [name for name in names if not os.path.isfile(os.path.join(directory, name))]
  if missing:
    raise cifar10.missing_files_error(directory, missing, 'input_fn does not download')
  return [os.path.join(directory, name) for name in names]


def parse_record(raw_record, is_training, dtype):
  """One 3,073-byte record -> (image [32, 32, 3] in [0, 1] as dtype, label int32), the image
  augmented in training (preprocess_image)."""
  image, label = cifar10.decode_records(raw_record)
  image = preprocess_image(tf.cast(image, tf.float32) * (1.0 / 255.0), is_training)
  return tf.cast(image, dtype), tf.cast(label, tf.int32)


def preprocess_image(image, is_training):
  """Training images [32, 32, 3] padded by 4, randomly cropped back and mirrored at random;
  no standardisation (Cifar10Model standardises every image it is given)."""
  if is_training:
    image = array_input.augment(image, PHOTO_AUGMENTATION.shift_pixels,
                                PHOTO_AUGMENTATION.flip)
  return image


def input_fn(is_training, data_dir, batch_size, num_epochs=1, dtype=tf.float32,
             datasets_num_private_threads=None, parse_record_fn=parse_record,
             input_context=None, drop_remainder=False):
  """The record files of data_dir as a tf.data pipeline, as the Model Garden streamed them.

  Returns:
    tf.data.Dataset of (images [B, 32, 32, 3] dtype, labels [B] int32).
  """
  dataset = tf.data.FixedLengthRecordDataset(get_filenames(is_training, data_dir),
                                             _RECORD_BYTES)
  if input_context:
    dataset = dataset.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  return resnet_run_loop.process_record_dataset(
      dataset=dataset, is_training=is_training, batch_size=batch_size,
      shuffle_buffer=NUM_IMAGES['train'], parse_record_fn=parse_record_fn,
      num_epochs=num_epochs, dtype=dtype,
      datasets_num_private_threads=datasets_num_private_threads,
      drop_remainder=drop_remainder)


def get_synth_input_fn(dtype):
  return resnet_run_loop.get_synth_input_fn(HEIGHT, WIDTH, NUM_CHANNELS, NUM_CLASSES,
                                            dtype=dtype)


###############################################################################
# Running the model
###############################################################################
def is_6n_plus_2(resnet_size):
  """Whether resnet_size is a size of the family (6n+2, n >= 1)."""
  return resnet_size >= 8 and resnet_size % 6 == 2


def blocks_per_stage(resnet_size):
  """n of a 6n+2 size; ValueError for any other size."""
  if not is_6n_plus_2(resnet_size):
    raise ValueError('resnet_size must be 6n+2 with n >= 1 (20, 32, 44, 56, 110...), got %r' %
                     (resnet_size,))
  return (resnet_size - 2) // 6


class Cifar10Model(resnet_model.Model):
  """ResNet for CIFAR-10-sized images: 6n+2 layers, per-image standardisation built in."""

  def __init__(self, resnet_size, data_format=None, num_classes=NUM_CLASSES,
               resnet_version=resnet_model.DEFAULT_VERSION, dtype=resnet_model.DEFAULT_DTYPE,
               batch_norm_decay=resnet_model.BATCH_NORM_DECAY):
    """Args as resnet_model.Model.

    Raises:
      ValueError: resnet_size is not 6n+2.
    """
    resnet_size = int(resnet_size)
    num_blocks = blocks_per_stage(resnet_size)
    super().__init__(
        resnet_size, bottleneck=False, num_classes=num_classes, num_filters=NUM_FILTERS,
        kernel_size=3, conv_stride=1, first_pool_size=None, first_pool_stride=None,
        block_sizes=[num_blocks] * 3, block_strides=BLOCK_STRIDES,
        resnet_version=resnet_version, data_format=data_format, dtype=dtype,
        batch_norm_decay=batch_norm_decay)

  def __call__(self, inputs, training):
    """The network on per-image standardised inputs (each image less its mean, over its
    standard deviation: the Model Garden's last preprocessing step, here in the graph)."""
    inputs = tf.image.per_image_standardization(tf.cast(inputs, tf.float32))
    return super().__call__(inputs, training)


def cifar10_model_fn(features, labels, mode, params):
  """Model function for CIFAR-10: resnet_model_fn with the Model Garden's recipe (RECIPE for
  the keys params lacks; resnet_main gives them all, from the flags)."""
  params = dict(RECIPE, **params)
  if not isinstance(features, dict) and features.shape.ndims == 2:  # flat CIFAR-10 images, as the Model Garden reshaped them
    features = tf.reshape(features, [-1, HEIGHT, WIDTH, NUM_CHANNELS])
  learning_rate_fn = learning_rate.from_params(params, BATCH_DENOM, BOUNDARY_FRACTIONS,
                                               DECAY_RATES)
  model_class = functools.partial(Cifar10Model, num_classes=params['num_classes'],
                                  batch_norm_decay=params['batch_norm_decay'])
  # The Model Garden decays every variable here, batch-norm gamma and beta included: it
  # measured better validation accuracy on this small data set.
  return resnet_run_loop.resnet_model_fn(
      features, labels, mode, model_class, resnet_size=params['resnet_size'],
      weight_decay=params['weight_decay'], learning_rate_fn=learning_rate_fn,
      momentum=params['momentum'], data_format=params['data_format'],
      resnet_version=params['resnet_version'], loss_scale=params['loss_scale'],
      loss_filter_fn=lambda name: True, dtype=params['dtype'],
      fine_tune=params['fine_tune'], label_smoothing=params['label_smoothing'],
      ema_decay=params.get('ema_decay', 0.0))


def define_cifar_flags(flag_values=flags.FLAGS):
  """The run loop's flags (resnet_run_loop.define_resnet_flags: --resnet_size takes any
  number, checked here to be 6n+2) with the Model Garden's CIFAR-10 defaults."""
  resnet_run_loop.define_resnet_flags(flag_values=flag_values)
  flags.register_validator('resnet_size', lambda v: v.isdigit() and is_6n_plus_2(int(v)),
                           message='--resnet_size must be 6n+2 (20, 32, 44, 56, 110)',
                           flag_values=flag_values)
  flags_core.set_defaults(
      flag_values, dataset='cifar10', data_dir='/tmp/cifar10_data',
      model_dir='/tmp/cifar10_model', resnet_size='56', epochs_between_evals=10,
      batch_size=128, image_bytes_as_serving_input=False,
      **{key: RECIPE[key] for key in ('train_epochs', 'weight_decay', 'base_learning_rate',
                                      'lr_schedule')})


def run_cifar(flags_obj):
  """Runs ResNet CIFAR-10 training and evaluation; returns resnet_main's results."""
  input_function = datasets.input_function(
      flags_obj.dataset, flags_obj.data_dir, flags_obj.use_synthetic_data, flags_obj.seed,
      flags_obj.shift_pixels, flags_obj.random_flip)
  return resnet_run_loop.resnet_main(
      flags_obj, cifar10_model_fn, input_function, datasets.display_name(flags_obj.dataset),
      data=input_function)


def main(_):
  lifecycle.run_main(functools.partial(run_cifar, flags.FLAGS), bool(flags.FLAGS.hooks),
                     user_errors=resnet_run_loop.USER_ERRORS)


def run_command():
  """The `mnist-cnn-cifar10` console command (setup.py), as `python -m` runs this module."""
  define_cifar_flags()
  app.run(main)


if __name__ == '__main__':
  run_command()
