"""Training speed of the CIFAR-10 ResNets (official/resnet/cifar10_main.py), side by side.

  python benchmarks/cifar_resnet.py [--variants=20:fp32,56:fp32] [--rounds=5]

Each variant is resnet_size:dtype (fp32, or bf16: the oneDNN rewrite the mains use on a CPU).
One training graph per variant (resnet_model_fn in TRAIN mode on a fixed random batch of
32x32x3 images, Cifar10Model as cifar10_main builds it), timed in interleaved windows of steps
so that machine noise hits every variant alike. Prints median (min-max) examples/second, the
projected minutes per 50,000-image epoch, and forward GFLOPs per image (TensorFlow's
profiler). No CIFAR-10 data is needed: the figures are the arithmetic's, not the input's.
"""

import os
import statistics
import sys

from absl import app
from absl import flags
import tensorflow as tf

# The repository root, so that `python benchmarks/cifar_resnet.py` finds the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import resnet_stems
from official.resnet import cifar10_main
from official.utils import session_config
# pylint: enable=g-import-not-at-top,wrong-import-position

EPOCH_IMAGES = 50000
IMAGE_SHAPE = (32, 32, 3)


def parse_variant(text):
  size, dtype = text.split(':')
  return int(size), dtype


def forward_gflops(resnet_size):
  """Forward GFLOPs of one 32x32x3 image, by suite.forward_flops (imported here: the suite
  imports this module)."""
  from benchmarks import suite  # pylint: disable=g-import-not-at-top

  def build():
    images = tf.compat.v1.placeholder(tf.float32, [1] + list(IMAGE_SHAPE))
    cifar10_main.Cifar10Model(resnet_size, data_format='channels_last')(images, False)
  return suite.forward_flops(build) / 1e9


def _train_session(variant, batch_size):
  resnet_size, dtype = parse_variant(variant)
  return resnet_stems.train_session(
      lambda tf_dtype: cifar10_main.Cifar10Model(resnet_size, data_format='channels_last',
                                                 dtype=tf_dtype),
      batch_size, config=session_config.make(0, 0, onednn_bf16=dtype == 'bf16'),
      image_shape=IMAGE_SHAPE)


def measure(variants, batch_size=128, rounds=5, steps_per_window=5):
  """{variant: [examples/s of each interleaved window]}."""
  sessions = {v: _train_session(v, batch_size) for v in variants}
  return resnet_stems.time_sessions(sessions, batch_size, rounds, steps_per_window)


def main(_):
  f = flags.FLAGS
  rates = measure(f.variants, f.batch_size, f.rounds, f.steps_per_window)
  print('| variant (size:dtype) | forward GFLOPs/image | examples/s median (min-max) | '
        'min/epoch (50k) |')
  print('|---|---:|---:|---:|')
  sizes = {parse_variant(variant)[0] for variant in f.variants}
  gflops = {size: forward_gflops(size) for size in sizes}  # one count per size, not per dtype
  for variant in f.variants:
    size, dtype = parse_variant(variant)
    median = statistics.median(rates[variant])
    print('| ResNet-%d %s | %.4f | %.1f (%.1f-%.1f) | %.1f |' % (
        size, dtype, gflops[size], median, min(rates[variant]), max(rates[variant]),
        EPOCH_IMAGES / median / 60))


def _define_flags():
  flags.DEFINE_list('variants', ['20:fp32', '56:fp32'], 'resnet_size:dtype, comma-separated.')
  flags.DEFINE_integer('batch_size', 128, 'Training batch size (cifar10_main\'s default).')
  flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds.')
  flags.DEFINE_integer('steps_per_window', 5, 'Training steps per timed window.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
