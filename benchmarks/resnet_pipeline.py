"""ResNet training speed: the Estimator (fp32, bf16) vs the same graph in a bare Session vs
tf.keras fit.

  python benchmarks/resnet_pipeline.py [--data_dir=DIR] [--rounds=5] [--steps_per_window=10]

All train the MNIST ResNet (same size, stem, widths, batch, momentum SGD) from the same tf.data
pipeline (input_data.arrays_input_fn: cache, shuffle, map_and_batch with pixel shifts,
prefetch):
- estimator: tf.estimator.Estimator with resnet_model_fn in fp32, one long train() call;
- estimator_bf16: a second Estimator with --dtype=bf16's graph (bfloat16 compute, float32
  variables), trained in its own thread a window at a time (with --bf16; it needs a CPU with
  AVX512-BF16 or AMX to mean anything);
- session: resnet_model_fn's fp32 TRAIN graph run in a plain tf.compat.v1.Session loop;
- keras: the same architecture written with tf.keras layers, fp32, trained with fit.
The windows are interleaved in one run: a hook inside the fp32 Estimator's train() call times
its steps and, between its windows, runs a window of each of the others, so that machine noise
hits all alike. Prints median (min-max) examples/second and ratios.
"""

import os
import statistics
import tempfile
import threading
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from mnist_cnn import input_data
from mnist_cnn import resnet_main
from official.resnet import resnet_run_loop

flags.DEFINE_string('data_dir', None, 'IDX files to train on (default: random images).')
flags.DEFINE_integer('resnet_size', 18, 'ResNet size (18 or 34: building blocks).')
flags.DEFINE_integer('num_filters', 64, 'Filters of the first stage.')
flags.DEFINE_enum('stem', 'mnist', list(resnet_main.STEMS), 'Stem.')
flags.DEFINE_integer('batch_size', 128, 'Batch size.')
flags.DEFINE_integer('rounds', 5, 'Timing windows per variant.')
flags.DEFINE_integer('steps_per_window', 10, 'Training steps per window.')
flags.DEFINE_integer('warmup_steps', 5, 'Untimed steps before the first window.')
flags.DEFINE_boolean('bf16', True, 'Include the bf16 Estimator.')
LEARNING_RATE = 0.01
MOMENTUM = 0.9
NUM_CLASSES = 10


def _arrays(data_dir):
  if data_dir:
    raw = input_data.load_idx_dataset_cached(data_dir)
    return raw.train_images, raw.train_labels
  rng = np.random.RandomState(0)
  return (rng.randint(0, 256, (10000, 28, 28)).astype(np.uint8),
          rng.randint(0, NUM_CLASSES, 10000).astype(np.uint8))


def _params(f, dtype='fp32'):
  def build_model(tf_dtype):
    return resnet_main.MnistModel(f.resnet_size, NUM_CLASSES, stem=f.stem,
                                  num_filters=f.num_filters, data_format='channels_last',
                                  dtype=tf_dtype)
  return {'model': build_model, 'num_classes': NUM_CLASSES, 'weight_decay': 1e-4,
          'momentum': MOMENTUM, 'dtype': dtype,
          'learning_rate_fn': lambda step: tf.constant(LEARNING_RATE)}


def _quiet_config():
  return tf.estimator.RunConfig(save_checkpoints_secs=None, save_checkpoints_steps=10 ** 9,
                                save_summary_steps=10 ** 9, log_step_count_steps=10 ** 9)


class _GateHook(tf.compat.v1.train.SessionRunHook):
  """Lets an Estimator's train() call run only the steps it is granted."""

  def __init__(self):
    self.granted = threading.Semaphore(0)
    self.finished = threading.Semaphore(0)
    self.left = 0
    self.stop = False

  def before_run(self, run_context):
    if self.left == 0:
      if self.stop:
        run_context.request_stop()
        return
      self.granted.acquire()
      if self.stop:
        run_context.request_stop()

  def after_run(self, run_context, run_values):
    self.left -= 1
    if self.left == 0:
      self.finished.release()


def _stepped_estimator_runner(f, dataset_fn, dtype, model_dir):
  """An Estimator trained in a background thread, a granted number of steps at a time; the
  runner returned blocks until its steps are done. Call .close() to end the thread."""
  gate = _GateHook()
  estimator = tf.estimator.Estimator(resnet_run_loop.resnet_model_fn, model_dir=model_dir,
                                     config=_quiet_config(), params=_params(f, dtype))
  errors = []

  def train():
    try:
      estimator.train(lambda: dataset_fn(), hooks=[gate])
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
      gate.finished.release()
  thread = threading.Thread(target=train, daemon=True)
  thread.start()

  def run(steps):
    gate.left = steps
    gate.granted.release()
    gate.finished.acquire()
    if errors:
      raise errors[0]

  def close():
    gate.stop = True
    gate.granted.release()
    thread.join(timeout=60)
  run.close = close
  return run


def _session_runner(f, dataset_fn):
  graph = tf.Graph()
  with graph.as_default():
    features, labels = tf.compat.v1.data.make_one_shot_iterator(dataset_fn()).get_next()
    spec = resnet_run_loop.resnet_model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                           _params(f))
    init = tf.compat.v1.global_variables_initializer()
  session = tf.compat.v1.Session(graph=graph)
  session.run(init)

  def run(steps):
    for _ in range(steps):
      session.run(spec.train_op)
  return run


def _keras_block(inputs, filters, strides, projection):
  """The pre-activation (v2) building block, as resnet_model._building_block_v2."""
  layers = tf.keras.layers
  preact = layers.ReLU()(layers.BatchNormalization(momentum=0.997, epsilon=1e-5)(inputs))
  shortcut = inputs
  if projection:
    shortcut = layers.Conv2D(filters, 1, strides, use_bias=False)(preact)
  net = layers.Conv2D(filters, 3, strides, padding='same', use_bias=False)(preact)
  net = layers.ReLU()(layers.BatchNormalization(momentum=0.997, epsilon=1e-5)(net))
  net = layers.Conv2D(filters, 3, 1, padding='same', use_bias=False)(net)
  return layers.Add()([net, shortcut])


def _keras_runner(f, dataset_fn):
  layers = tf.keras.layers
  kernel, stride, pool, pool_stride = resnet_main.STEMS[f.stem]
  block_sizes, bottleneck = resnet_main.resnet_model.get_block_sizes(f.resnet_size)
  if bottleneck:
    raise ValueError('the Keras peer implements building blocks only (sizes 18 and 34)')
  inputs = tf.keras.Input([28, 28, 1])
  net = layers.Conv2D(f.num_filters, kernel, stride, padding='same', use_bias=False)(inputs)
  if pool:
    net = layers.MaxPool2D(pool, pool_stride, padding='same')(net)
  channels = f.num_filters
  for index, (blocks, strides) in enumerate(zip(block_sizes, resnet_main.BLOCK_STRIDES)):
    filters = f.num_filters * 2 ** index
    for block in range(blocks):
      block_strides = strides if block == 0 else 1
      projection = block == 0 and (block_strides != 1 or channels != filters)
      net = _keras_block(net, filters, block_strides, projection)
      channels = filters
  net = layers.ReLU()(layers.BatchNormalization(momentum=0.997, epsilon=1e-5)(net))
  net = layers.GlobalAveragePooling2D()(net)
  model = tf.keras.Model(inputs, layers.Dense(NUM_CLASSES)(net))
  model.compile(optimizer=tf.keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  dataset = dataset_fn()
  iterator = iter(dataset)

  def run(steps):
    model.fit(iterator, steps_per_epoch=steps, epochs=1, verbose=0)
  return run


def _in_own_thread(run, steps):
  """Runs a peer outside the Estimator's graph context (a new thread starts eager, with no
  default graph), so Keras trains as it would on its own."""
  errors = []

  def target():
    try:
      run(steps)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  thread = threading.Thread(target=target)
  thread.start()
  thread.join()
  if errors:
    raise errors[0]


class _InterleavingHook(tf.compat.v1.train.SessionRunHook):
  """Times the Estimator's steps in windows and runs the other variants between them."""

  def __init__(self, f, others, rates):
    self._f = f
    self._others = others
    self._rates = rates
    self._step = 0
    self._window_start = None

  def before_run(self, run_context):
    if self._step == self._f.warmup_steps:
      for run in self._others.values():
        _in_own_thread(run, self._f.warmup_steps)  # warm the peers up too
      self._window_start = time.perf_counter()

  def after_run(self, run_context, run_values):
    self._step += 1
    done = self._step - self._f.warmup_steps
    if done > 0 and done % self._f.steps_per_window == 0:
      elapsed = time.perf_counter() - self._window_start
      self._rates['estimator'].append(self._f.steps_per_window * self._f.batch_size / elapsed)
      for name, run in self._others.items():
        started = time.perf_counter()
        _in_own_thread(run, self._f.steps_per_window)
        self._rates[name].append(
            self._f.steps_per_window * self._f.batch_size / (time.perf_counter() - started))
      if len(self._rates['estimator']) == self._f.rounds:
        run_context.request_stop()
      self._window_start = time.perf_counter()


def main(_):
  f = flags.FLAGS
  images, labels = _arrays(f.data_dir)

  def dataset_fn():
    return input_data.arrays_input_fn(images, labels, True, f.batch_size, num_epochs=None,
                                      seed=0, shift_pixels=2, drop_remainder=True)

  with tempfile.TemporaryDirectory() as model_dir:
    others = {}
    if f.bf16:
      others['estimator_bf16'] = _stepped_estimator_runner(
          f, dataset_fn, 'bf16', os.path.join(model_dir, 'bf16'))
    others.update(session=_session_runner(f, dataset_fn), keras=_keras_runner(f, dataset_fn))
    rates = {name: [] for name in ['estimator'] + list(others)}
    estimator = tf.estimator.Estimator(resnet_run_loop.resnet_model_fn,
                                       model_dir=os.path.join(model_dir, 'fp32'),
                                       config=_quiet_config(), params=_params(f))
    try:
      estimator.train(lambda: dataset_fn(), hooks=[_InterleavingHook(f, others, rates)])
    finally:
      for run in others.values():
        if hasattr(run, 'close'):
          run.close()
  keras = statistics.median(rates['keras'])
  session = statistics.median(rates['session'])
  print('| variant | examples/s median (min-max) | vs session | vs keras |')
  print('|---|---:|---:|---:|')
  for name, values in rates.items():
    median = statistics.median(values)
    print('| %s | %.1f (%.1f-%.1f) | %.2f | %.2f |' % (
        name, median, min(values), max(values), median / session, median / keras))


if __name__ == '__main__':
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  app.run(main)
