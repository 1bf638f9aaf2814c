"""Training speed of ResNet stems for 28x28 MNIST, measured side by side.

  python benchmarks/resnet_stems.py [--resnet_size=18] [--batch_size=128] [--rounds=5]

Builds one training graph per stem (resnet_model_fn in TRAIN mode on a fixed random batch),
then times interleaved windows of steps so that machine noise hits every stem alike. Prints
median (min-max) examples/second per stem and the implied minutes per 60,000-image epoch.
"""

import statistics
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from mnist_cnn import resnet_main
from official.utils import classifier_model_fn

EPOCH_IMAGES = 60000


def train_session(build_model, batch_size, config=None, aux_loss_weight=0.0,
                  image_shape=(28, 28, 1)):
  """(warmed-up Session, train_op): the shared EstimatorSpec in TRAIN mode on a fixed random batch of
  image_shape images, the model from build_model(dtype). GoogLeNet's and the CIFAR ResNets'
  benchmarks share it."""
  graph = tf.Graph()
  with graph.as_default():
    rng = np.random.RandomState(0)
    features = tf.constant(rng.rand(batch_size, *image_shape).astype(np.float32))
    labels = tf.constant(rng.randint(0, 10, batch_size).astype(np.int32))
    spec = classifier_model_fn.estimator_spec(
        features, labels, tf.estimator.ModeKeys.TRAIN, build_model(tf.float32),
        weight_decay=1e-4, learning_rate_fn=lambda step: tf.constant(0.01), momentum=0.9,
        aux_loss_weight=aux_loss_weight)
    init = tf.compat.v1.global_variables_initializer()
  session = tf.compat.v1.Session(graph=graph, config=config)
  session.run(init)
  for _ in range(3):  # warm-up: graph optimisation and oneDNN kernel selection
    session.run(spec.train_op)
  return session, spec.train_op


def time_sessions(sessions, batch_size, rounds, steps_per_window):
  """{name: [examples/s of each window]} for {name: (Session, train_op)}, timed in interleaved
  windows so that machine noise hits every variant alike; closes the sessions."""
  rates = {name: [] for name in sessions}
  try:
    for _ in range(rounds):
      for name, (session, train_op) in sessions.items():
        started = time.perf_counter()
        for _ in range(steps_per_window):
          session.run(train_op)
        rates[name].append(steps_per_window * batch_size / (time.perf_counter() - started))
  finally:
    for session, _ in sessions.values():
      session.close()
  return rates


def _train_session(stem, resnet_size, batch_size):
  return train_session(
      lambda dtype: resnet_main.MnistModel(resnet_size, 'channels_last', stem=stem,
                                           dtype=dtype), batch_size)


def main(_):
  f = flags.FLAGS
  sessions = {stem: _train_session(stem, f.resnet_size, f.batch_size) for stem in f.stems}
  rates = time_sessions(sessions, f.batch_size, f.rounds, f.steps_per_window)
  print('| stem | examples/s median (min-max) | min/epoch (60k) |')
  print('|---|---:|---:|')
  for stem in f.stems:
    median = statistics.median(rates[stem])
    print('| %s | %.1f (%.1f-%.1f) | %.1f |' % (stem, median, min(rates[stem]),
                                                 max(rates[stem]), EPOCH_IMAGES / median / 60))


def _define_flags():
  flags.DEFINE_integer('resnet_size', 18, 'ResNet size.')
  flags.DEFINE_integer('batch_size', 128, 'Batch size.')
  flags.DEFINE_integer('rounds', 5, 'Interleaved timing windows per stem.')
  flags.DEFINE_integer('steps_per_window', 5, 'Training steps per window.')
  flags.DEFINE_list('stems', list(resnet_main.STEMS), 'Stems to compare.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
