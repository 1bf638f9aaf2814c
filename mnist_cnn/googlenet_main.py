"""Trains GoogLeNet (Inception v1) on MNIST with the Estimator run loop.

  python -m mnist_cnn.googlenet_main --data_dir=DIR --model_dir=DIR

--dataset=cifar10 or tfds:<name> trains it on other data (mnist_cnn/datasets.py).

The network is mnist_cnn/googlenet_model.py: the paper's nine inception modules and auxiliary
heads, with a stem for 28x28 inputs. It trains through the same run loop, lifecycle, export
and serving as ResNet (resnet_run_loop.resnet_model_fn adds the auxiliary heads' losses with
--aux_loss_weight), and takes the same recipe: momentum SGD, a 0.2-epoch warm-up then a cosine
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

from absl import app
from absl import flags

from mnist_cnn import estimator_main
from mnist_cnn import googlenet_model
from official.resnet import resnet_model
from official.utils.flags import core as flags_core


def define_googlenet_flags(flag_values=flags.FLAGS):
  """The Estimator run-loop flags, GoogLeNet's own, and MNIST defaults."""
  estimator_main.define_flags(flag_values)
  fv = {'flag_values': flag_values}
  flags.DEFINE_enum('stem', 'mnist', list(googlenet_model.STEMS),
                    'Layers before module 3a: mnist (3x3/1 conv, two pools: 28x28 -> 7x7), '
                    'cifar (one pool: -> 14x14) or imagenet (the paper\'s 7x7/2 stem: -> 4x4).',
                    **fv)
  flags.DEFINE_float('width_multiplier', 1.0,
                     'Every layer\'s filters times this (0.25: a sixteenth of the arithmetic).',
                     **fv)
  flags.DEFINE_enum('normalization', 'batch_norm', list(googlenet_model.NORMALIZATIONS),
                    'batch_norm (after every convolution, no biases, no LRN) or lrn (the '
                    'paper\'s network: biases and local response normalisation in the stem).',
                    **fv)
  flags.DEFINE_float('aux_loss_weight', 0.3,
                     'Weight of each auxiliary head\'s cross-entropy in the training loss '
                     '(0: no auxiliary heads).', **fv)
  flags.DEFINE_float('dropout_rate', googlenet_model.DROPOUT_RATE,
                     'Fraction of the pooled features dropped before the linear layer.', **fv)
  flags.DEFINE_float('aux_dropout_rate', googlenet_model.AUX_DROPOUT_RATE,
                     'Fraction dropped before each auxiliary head\'s linear layer.', **fv)
  flags.register_validator('width_multiplier', lambda v: 0 < v <= 4,
                           message='--width_multiplier must be in (0, 4]', **fv)
  flags.register_validator('aux_loss_weight', lambda v: v >= 0,
                           message='--aux_loss_weight must be zero or more', **fv)
  for name in ('dropout_rate', 'aux_dropout_rate'):
    flags.register_validator(name, lambda v: 0 <= v < 1,
                             message='--%s must be in [0, 1)' % name, **fv)
  flags_core.set_defaults(flag_values, train_epochs=6, batch_size=128, epochs_between_evals=1,
                          weight_decay=5e-4, base_learning_rate=0.2, warmup_epochs=0.2,
                          lr_schedule='cosine', model_dir='/tmp/mnist_googlenet')


def run_googlenet(flags_obj):
  """Trains and evaluates GoogLeNet on --dataset (or synthetic data); returns the eval
  results."""
  return estimator_main.run(flags_obj, 'googlenet', model_params)


def model_params(flags_obj, raw, plan):
  """The Estimator params (see resnet_run_loop.resnet_model_fn), all built here."""
  num_classes = raw.num_classes
  config = dict(stem=flags_obj.stem, width_multiplier=flags_obj.width_multiplier,
                normalization=flags_obj.normalization,
                aux_heads=flags_obj.aux_loss_weight > 0, dropout_rate=flags_obj.dropout_rate,
                aux_dropout_rate=flags_obj.aux_dropout_rate,
                data_format=flags_obj.data_format or resnet_model.default_data_format())
  params = estimator_main.recipe_params(flags_obj, raw.num_train, plan)

  def build_model(dtype, batch_norm_decay=params['batch_norm_decay']):
    return googlenet_model.GoogLeNet(num_classes, dtype=dtype,
                                     batch_norm_decay=batch_norm_decay, **config)

  return dict(params, model=build_model, num_classes=num_classes,
              aux_loss_weight=flags_obj.aux_loss_weight)


def main(_):
  estimator_main.main(run_googlenet, flags.FLAGS)


if __name__ == '__main__':
  define_googlenet_flags()
  app.run(main)
