"""Trains GoogLeNet (Inception v1) on MNIST with the Estimator run loop.

  python -m mnist_cnn.googlenet_main --data_dir=DIR --model_dir=DIR

--dataset=cifar10 or tfds:<name> trains it on other data (mnist_cnn/datasets.py).

The network is mnist_cnn/googlenet_model.py: the paper's nine inception modules and auxiliary
heads, with a stem for 28x28 inputs. It trains through the same run loop, lifecycle, export
and serving as ResNet (resnet_run_loop.resnet_main with googlenet_model_fn, whose EstimatorSpec
adds the auxiliary heads' losses with --aux_loss_weight), and takes the same recipe: momentum SGD, a 0.2-epoch warm-up then a cosine
to zero, batch-norm statistics recomputed before each evaluation, +-2-pixel shifts.

Stems, measured here (batch 128, training steps with the auxiliary heads, fp32, 2-core CPU,
benchmarks/googlenet_variants.py; full MNIST runs of the defaults, seed 0; README "GoogLeNet
results" has the tables):
- 'mnist' (default): 3x3/1 convolution and the paper's other stem layers; modules 3 at 7x7,
  4 at 4x4, 5 at 2x2. 0.22 GFLOPs per image forward, 275 examples/s; 0.9883 after 1 epoch,
  0.9959 after 6 (26.5 min).
- 'cifar': the same with one pool fewer; modules 3 at 14x14. 0.63 GFLOPs, 98 examples/s
  (accuracy not measured: ~65 min for 6 epochs).
- 'imagenet': the paper's 7x7/2 stem; modules 3 at 4x4, 4 at 2x2, 5 at 1x1. 0.07 GFLOPs, 820
  examples/s; 0.9883 after 1 epoch, 0.9948 after 6 (10.6 min).
'mnist' is the default as the measured stem that reaches 99.5% in 6 epochs (after epoch 4).
For time to accuracy: --flagfile=mnist_cnn/configs/googlenet_fast.flags (the file has its
measured figures).
"""

import functools

from absl import app
from absl import flags

from mnist_cnn import googlenet_model
from official.data import datasets
from official.resnet import resnet_flags
from official.resnet import resnet_model
from official.resnet import resnet_run_loop
from official.utils import classifier_model_fn
from official.utils import learning_rate
from official.utils import lifecycle
from official.utils import precision
from official.utils.flags import core as flags_core

# The recipe ResNet's MNIST main measured (mnist_cnn/resnet_main.py): the step schedule's
# fractions, and --base_learning_rate for a batch of BATCH_DENOM.
BOUNDARY_FRACTIONS = (0.5, 0.75, 0.9)
DECAY_RATES = (1.0, 0.1, 0.01, 0.001)
BATCH_DENOM = 256
# The recipe and the model's defaults: the flags', and what googlenet_model_fn takes for a key
# its params lack (params of resnet_main hold them all).
RECIPE = dict(train_epochs=6, batch_size=128, base_learning_rate=0.2, weight_decay=5e-4,
              momentum=0.9, lr_schedule='cosine', warmup_epochs=0.2, label_smoothing=0.0,
              batch_norm_decay=resnet_model.BATCH_NORM_DECAY, num_images=60000,
              num_classes=10, dtype='fp32', loss_scale=None, fine_tune=False,
              data_format=None, stem='mnist', width_multiplier=1.0,
              normalization='batch_norm', aux_loss_weight=0.3,
              dropout_rate=googlenet_model.DROPOUT_RATE,
              aux_dropout_rate=googlenet_model.AUX_DROPOUT_RATE)
# The model_fn params of GoogLeNet's own flags.
MODEL_KEYS = ('stem', 'width_multiplier', 'normalization', 'aux_loss_weight', 'dropout_rate',
              'aux_dropout_rate')


def define_googlenet_flags(flag_values=flags.FLAGS):
  """The Estimator run-loop flags, GoogLeNet's own, and MNIST defaults."""
  resnet_flags.define_estimator_flags(flag_values)
  fv = {'flag_values': flag_values}
  flags.DEFINE_enum('stem', RECIPE['stem'], list(googlenet_model.STEMS),
                    'Layers before module 3a: mnist (3x3/1 conv, two pools: 28x28 -> 7x7), '
                    'cifar (one pool: -> 14x14) or imagenet (the paper\'s 7x7/2 stem: -> 4x4).',
                    **fv)
  flags.DEFINE_float('width_multiplier', RECIPE['width_multiplier'],
                     'Every layer\'s filters times this (0.25: a sixteenth of the arithmetic).',
                     **fv)
  flags.DEFINE_enum('normalization', RECIPE['normalization'],
                    list(googlenet_model.NORMALIZATIONS),
                    'batch_norm (after every convolution, no biases, no LRN) or lrn (the '
                    'paper\'s network: biases and local response normalisation in the stem).',
                    **fv)
  flags.DEFINE_float('aux_loss_weight', RECIPE['aux_loss_weight'],
                     'Weight of each auxiliary head\'s cross-entropy in the training loss '
                     '(0: no auxiliary heads).', **fv)
  flags.DEFINE_float('dropout_rate', RECIPE['dropout_rate'],
                     'Fraction of the pooled features dropped before the linear layer.', **fv)
  flags.DEFINE_float('aux_dropout_rate', RECIPE['aux_dropout_rate'],
                     'Fraction dropped before each auxiliary head\'s linear layer.', **fv)
  flags.register_validator('width_multiplier', lambda v: 0 < v <= 4,
                           message='--width_multiplier must be in (0, 4]', **fv)
  flags.register_validator('aux_loss_weight', lambda v: v >= 0,
                           message='--aux_loss_weight must be zero or more', **fv)
  for name in ('dropout_rate', 'aux_dropout_rate'):
    flags.register_validator(name, lambda v: 0 <= v < 1,
                             message='--%s must be in [0, 1)' % name, **fv)
  flags_core.set_defaults(
      flag_values, batch_size=128, epochs_between_evals=1, model_dir='/tmp/mnist_googlenet',
      **{key: RECIPE[key] for key in ('train_epochs', 'weight_decay', 'base_learning_rate',
                                      'warmup_epochs', 'lr_schedule')})


def googlenet_model_fn(features, labels, mode, params):
  """Model function for GoogLeNet: the shared EstimatorSpec (classifier_model_fn) of
  googlenet_model.GoogLeNet, with its auxiliary heads' losses weighted by
  params['aux_loss_weight'] (RECIPE for the keys params lacks)."""
  params = dict(RECIPE, **params)
  model = googlenet_model.GoogLeNet(
      params['num_classes'], stem=params['stem'], width_multiplier=params['width_multiplier'],
      normalization=params['normalization'], aux_heads=params['aux_loss_weight'] > 0,
      dropout_rate=params['dropout_rate'], aux_dropout_rate=params['aux_dropout_rate'],
      data_format=params['data_format'] or resnet_model.default_data_format(),
      dtype=precision.tf_dtype(params['dtype']), batch_norm_decay=params['batch_norm_decay'])
  return classifier_model_fn.estimator_spec(
      features, labels, mode, model, params['weight_decay'],
      learning_rate.from_params(params, BATCH_DENOM, BOUNDARY_FRACTIONS, DECAY_RATES),
      params['momentum'], loss_scale=params['loss_scale'], dtype=params['dtype'],
      fine_tune=params['fine_tune'], label_smoothing=params['label_smoothing'],
      aux_loss_weight=params['aux_loss_weight'], ema_decay=params.get('ema_decay', 0.0))


def run_googlenet(flags_obj):
  """Trains and evaluates GoogLeNet on --dataset (or synthetic data); returns resnet_main's
  results."""
  input_function = datasets.input_function(
      flags_obj.dataset, flags_obj.data_dir, flags_obj.use_synthetic_data, flags_obj.seed,
      flags_obj.shift_pixels, flags_obj.random_flip)
  return resnet_run_loop.resnet_main(
      flags_obj, googlenet_model_fn, input_function, datasets.display_name(flags_obj.dataset),
      data=input_function,
      model_params={key: getattr(flags_obj, key) for key in MODEL_KEYS}, model_name='googlenet')


def main(_):
  lifecycle.run_main(functools.partial(run_googlenet, flags.FLAGS), bool(flags.FLAGS.hooks),
                     user_errors=resnet_run_loop.USER_ERRORS)


def run_command():
  """The `mnist-cnn-googlenet` console command (setup.py), as `python -m` runs this module."""
  define_googlenet_flags()
  app.run(main)


if __name__ == '__main__':
  run_command()
