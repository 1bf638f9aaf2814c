"""Training speed of GoogLeNet variants for 28x28 images, measured side by side.

  python benchmarks/googlenet_variants.py [--variants=mnist:1:fp32,cifar:1:fp32] [--rounds=5]

Each variant is stem:width_multiplier:dtype (dtype fp32, or bf16: the oneDNN rewrite the mains
use on a CPU). One training graph per variant (resnet_model_fn in TRAIN mode on a fixed random
batch, auxiliary heads on), timed in interleaved windows of steps so that machine noise hits
every variant alike. Prints median (min-max) examples/second, the implied minutes per
60,000-image epoch, and forward GFLOPs per image (TensorFlow's profiler).
"""

import statistics

import os
import sys

from absl import app
from absl import flags
import tensorflow as tf

# The repository root, so that `python benchmarks/googlenet_variants.py` finds the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import resnet_stems
from mnist_cnn import googlenet_model
from official.utils import session_config
# pylint: enable=g-import-not-at-top,wrong-import-position

EPOCH_IMAGES = 60000
AUX_LOSS_WEIGHT = 0.3  # googlenet_main's default: the heads train, as in a real run


def parse_variant(text):
  stem, width, dtype = text.split(':')
  return stem, float(width), dtype


def forward_gflops(stem, width, normalization):
  """Forward GFLOPs of one 28x28x1 image, by suite.forward_flops (imported here: the suite
  imports this module)."""
  from benchmarks import suite  # pylint: disable=g-import-not-at-top

  def build():
    images = tf.compat.v1.placeholder(tf.float32, [1, 28, 28, 1])
    googlenet_model.GoogLeNet(10, stem=stem, width_multiplier=width,
                              normalization=normalization)(images, False)
  return suite.forward_flops(build) / 1e9


def _train_session(variant, batch_size, normalization):
  stem, width, dtype = parse_variant(variant)
  return resnet_stems.train_session(
      lambda dtype: googlenet_model.GoogLeNet(10, stem=stem, width_multiplier=width,
                                              normalization=normalization, dtype=dtype),
      batch_size, config=session_config.make(0, 0, onednn_bf16=dtype == 'bf16'),
      aux_loss_weight=AUX_LOSS_WEIGHT)


def measure(variants, batch_size=128, rounds=5, steps_per_window=5,
            normalization='batch_norm'):
  """{variant: [examples/s of each interleaved window]}."""
  sessions = {v: _train_session(v, batch_size, normalization) for v in variants}
  return resnet_stems.time_sessions(sessions, batch_size, rounds, steps_per_window)


def main(_):
  f = flags.FLAGS
  rates = measure(f.variants, f.batch_size, f.rounds, f.steps_per_window, f.normalization)
  print('| variant (stem:width:dtype) | forward GFLOPs/image | examples/s median (min-max) | '
        'min/epoch (60k) |')
  print('|---|---:|---:|---:|')
  for variant in f.variants:
    stem, width, _ = parse_variant(variant)
    median = statistics.median(rates[variant])
    print('| %s | %.3f | %.1f (%.1f-%.1f) | %.1f |' % (
        variant, forward_gflops(stem, width, f.normalization), median, min(rates[variant]),
        max(rates[variant]), EPOCH_IMAGES / median / 60))


def _define_flags():
  flags.DEFINE_list('variants', ['mnist:1:fp32', 'imagenet:1:fp32', 'cifar:1:fp32'],
                    'stem:width_multiplier:dtype to compare.')
  flags.DEFINE_integer('batch_size', 128, 'Batch size.')
  flags.DEFINE_integer('rounds', 5, 'Interleaved timing windows per variant.')
  flags.DEFINE_integer('steps_per_window', 5, 'Training steps per window.')
  flags.DEFINE_string('normalization', 'batch_norm', 'lrn or batch_norm.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
