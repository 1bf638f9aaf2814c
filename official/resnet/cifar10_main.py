"""Trains the CIFAR-10 ResNets (He et al. 2016, section 4.2) with the Estimator run loop.

  python -m official.resnet.cifar10_main --data_dir=/tmp/cifar10_data --resnet_size=56

The Model Garden's cifar10_main in this project's run loop: `Cifar10Model` is ResNet for 32x32
images, sizes 6n+2 (20, 32, 44, 56, 110): a 3x3 convolution of 16 filters, three stages of n
building blocks with 16, 32 and 64 filters (strides 1, 2, 2), no max-pool, global average pool
and a 10-way dense layer. Training images are padded by 4, randomly cropped back to 32x32 and
mirrored at random; every image (served ones too) is standardised to zero mean and unit
variance by the model itself, so an export answers as the trained model did.

Defaults are the Model Garden's: 182 epochs of batch 128, momentum 0.9, learning rate 0.1 per
128 images divided by 10 after epochs 91 and 136 (the same fractions of any --train_epochs),
weight decay 2e-4 on every variable, batch norm included (its note: "seems more stable in
testing" than the paper's 1e-4), evaluation every 10 epochs. Everything else (cycles,
batch-norm statistics, export with both signatures, serving, bf16, distribution) is the shared
Estimator loop's. --dataset takes cifar10 (the default here), mnist or tfds:<name>: the model
takes channels and classes from the data.
"""

from absl import app
from absl import flags
import tensorflow as tf

from mnist_cnn import estimator_main
from official.resnet import resnet_flags
from official.resnet import resnet_model
from official.utils.flags import core as flags_core

NUM_FILTERS = 16
BLOCK_STRIDES = [1, 2, 2]
# The Model Garden's schedule: boundaries at epochs 91, 136 and 182 of 182; the last one ends
# the run, so the rate is divided by 10 twice.
BOUNDARY_FRACTIONS = (91 / 182, 136 / 182, 1.0)
BATCH_DENOM = 128
DEFAULT_SIZE = 56


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

  def __init__(self, resnet_size, data_format=None, num_classes=10,
               resnet_version=resnet_model.DEFAULT_VERSION, dtype=resnet_model.DEFAULT_DTYPE,
               batch_norm_decay=resnet_model.BATCH_NORM_DECAY):
    """Args as resnet_model.Model.

    Raises:
      ValueError: resnet_size is not 6n+2.
    """
    num_blocks = blocks_per_stage(resnet_size)
    super().__init__(
        bottleneck=False, num_classes=num_classes, num_filters=NUM_FILTERS, kernel_size=3,
        conv_stride=1, first_pool_size=None, first_pool_stride=None,
        block_sizes=[num_blocks] * 3, block_strides=BLOCK_STRIDES,
        resnet_version=resnet_version, data_format=data_format, dtype=dtype,
        batch_norm_decay=batch_norm_decay)

  def __call__(self, inputs, training):
    """The network on per-image standardised inputs (each image less its mean, over its
    standard deviation: the Model Garden's last preprocessing step, here in the graph)."""
    inputs = tf.image.per_image_standardization(tf.cast(inputs, tf.float32))
    return super().__call__(inputs, training)


def define_cifar_flags(flag_values=flags.FLAGS):
  """The Estimator run-loop flags, --resnet_size/--resnet_version, and the Model Garden's
  CIFAR-10 defaults."""
  estimator_main.define_flags(flag_values)
  resnet_flags.define_version_flag(flag_values)
  fv = {'flag_values': flag_values}
  flags.DEFINE_integer('resnet_size', DEFAULT_SIZE,
                       'Layers: 6n+2 (20, 32, 44, 56, 110).', **fv)
  flags.register_validator('resnet_size', is_6n_plus_2,
                           message='--resnet_size must be 6n+2 (20, 32, 44, 56, 110)', **fv)
  flags_core.set_defaults(flag_values, dataset='cifar10', data_dir='/tmp/cifar10_data',
                          model_dir='/tmp/cifar10_model', train_epochs=182,
                          epochs_between_evals=10, batch_size=128, weight_decay=2e-4,
                          base_learning_rate=0.1, lr_schedule='step')


def run_cifar(flags_obj):
  """Trains and evaluates a CIFAR-10 ResNet; returns the eval results."""
  return estimator_main.run(flags_obj, 'resnet', model_params)


def model_params(flags_obj, raw, plan):
  """The Estimator params (see resnet_run_loop.resnet_model_fn), all built here."""
  resnet_size, resnet_version = flags_obj.resnet_size, int(flags_obj.resnet_version)
  data_format, num_classes = flags_obj.data_format, raw.num_classes
  params = estimator_main.recipe_params(flags_obj, raw.num_train, plan,
                                        boundary_fractions=BOUNDARY_FRACTIONS,
                                        batch_denom=BATCH_DENOM)

  def build_model(dtype, batch_norm_decay=params['batch_norm_decay']):
    return Cifar10Model(resnet_size, data_format=data_format, num_classes=num_classes,
                        resnet_version=resnet_version, dtype=dtype,
                        batch_norm_decay=batch_norm_decay)

  # The Model Garden decays every variable here, batch-norm gamma and beta included.
  return dict(params, model=build_model, num_classes=num_classes,
              loss_filter_fn=lambda name: True)


def main(_):
  estimator_main.main(run_cifar, flags.FLAGS)


if __name__ == '__main__':
  define_cifar_flags()
  app.run(main)
