"""ResNet training speed: the Estimator (fp32, bf16) vs the same graph in a bare Session vs
tf.keras fit.

  python benchmarks/resnet_pipeline.py [--data_dir=DIR] [--rounds=5] [--steps_per_window=10]

All train the MNIST ResNet (same size, stem, widths, batch, momentum SGD) from the same tf.data
pipeline (array_input.arrays_input_fn: cache, shuffle, map_and_batch with pixel shifts,
prefetch):
- estimator: tf.estimator.Estimator with resnet_model_fn in fp32, one long train() call;
- estimator_bf16: a second Estimator computing in bf16 as resnet_main's --dtype=bf16 does (on a
  CPU the oneDNN rewrite of the fp32 graph; float32 variables), trained in its own thread a
  window at a time (with --bf16; it needs a CPU with AVX512-BF16 or AMX to mean anything);
- estimator_bf16_casts: the same, computing in bfloat16 by casts inside the model instead;
- session: resnet_model_fn's fp32 TRAIN graph run in a plain tf.compat.v1.Session loop;
- keras: the same architecture written with tf.keras layers, fp32, trained with fit.
The windows are interleaved in one run: a hook inside the fp32 Estimator's train() call times
its steps and, between its windows, runs a window of each of the others, so that machine noise
hits all alike. Prints median (min-max) examples/second and ratios.

`measure(Config(...))` returns the rates ({variant: [examples/s per window]}); the suite calls
it.
"""

import dataclasses
import os
import statistics
import tempfile
import threading
import time

from absl import app
from absl import flags
import tensorflow as tf

from mnist_cnn import resnet_main
from official.data import array_input
from official.data import idx
from official.data import raw_data
from official.utils import classifier_model_fn
from official.utils import lifecycle
from official.utils import precision
from official.utils import session_config



@dataclasses.dataclass(frozen=True)
class Config(object):
  """What one measurement trains (the command's flags, as values)."""
  data_dir: str = None
  resnet_size: int = 18
  num_filters: int = 64
  stem: str = 'mnist'
  batch_size: int = 128
  rounds: int = 5
  steps_per_window: int = 10
  warmup_steps: int = 5
  bf16: bool = True


def _define_flags():
  defaults = Config()
  flags.DEFINE_string('data_dir', None, 'IDX files to train on (default: random images).')
  flags.DEFINE_integer('resnet_size', defaults.resnet_size,
                       'ResNet size (18 or 34: building blocks).')
  flags.DEFINE_integer('num_filters', defaults.num_filters, 'Filters of the first stage.')
  flags.DEFINE_enum('stem', defaults.stem, list(resnet_main.STEMS), 'Stem.')
  flags.DEFINE_integer('batch_size', defaults.batch_size, 'Batch size.')
  flags.DEFINE_integer('rounds', defaults.rounds, 'Timing windows per variant.')
  flags.DEFINE_integer('steps_per_window', defaults.steps_per_window,
                       'Training steps per window.')
  flags.DEFINE_integer('warmup_steps', defaults.warmup_steps,
                       'Untimed steps before the first window.')
  flags.DEFINE_boolean('bf16', defaults.bf16, 'Include the bf16 Estimator.')


LEARNING_RATE = 0.01
MOMENTUM = 0.9
NUM_CLASSES = 10


def _arrays(data_dir):
  if data_dir:
    raw = idx.load_idx_dataset_cached(data_dir)
    return raw.train_images, raw.train_labels
  raw = raw_data.synthetic_raw_data(num_train=10000, num_test=1)
  return raw.train_images, raw.train_labels


def _params(f, dtype='fp32'):
  return {'resnet_size': f.resnet_size, 'stem': f.stem, 'num_filters': f.num_filters,
          'dtype': dtype}


def _model_fn(features, labels, mode, params):
  """MnistModel through the shared EstimatorSpec at a constant learning rate."""
  dtype = precision.tf_dtype(params['dtype'])
  model = resnet_main.MnistModel(params['resnet_size'], 'channels_last',
                                 num_classes=NUM_CLASSES, stem=params['stem'],
                                 num_filters=params['num_filters'], dtype=dtype)
  return classifier_model_fn.estimator_spec(
      features, labels, mode, model, weight_decay=1e-4,
      learning_rate_fn=lambda step: tf.constant(LEARNING_RATE), momentum=MOMENTUM, dtype=dtype)


def _quiet_config(onednn_bf16=False):
  return tf.estimator.RunConfig(save_checkpoints_secs=None, save_checkpoints_steps=10 ** 9,
                                save_summary_steps=10 ** 9, log_step_count_steps=10 ** 9,
                                session_config=session_config.make(0, 0, onednn_bf16))


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


def _stepped_estimator_runner(f, dataset_fn, dtype, model_dir, casts=False):
  """An Estimator trained in a background thread, a granted number of steps at a time; the
  runner returned blocks until its steps are done. Call .close() to end the thread.

  It computes in dtype as resnet_main does (on a CPU, bf16 is the oneDNN rewrite of the fp32
  graph), or with casts=True by casting inside the model, as resnet_main did before."""
  gate = _GateHook()
  plan = precision.plan(dtype, has_gpu=bool(tf.config.list_physical_devices('GPU')))
  if casts:
    plan = precision.Plan(dtype, dtype, False)
  estimator = tf.estimator.Estimator(_model_fn, model_dir=model_dir,
                                     config=_quiet_config(plan.onednn_bf16),
                                     params=_params(f, plan.graph_dtype))
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
    spec = _model_fn(features, labels, tf.estimator.ModeKeys.TRAIN, _params(f))
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


def measure(f):
  """{variant: [examples/s of each interleaved window]} for Config f."""
  images, labels = _arrays(f.data_dir)

  def dataset_fn():
    return array_input.arrays_input_fn(images, labels, True, f.batch_size, num_epochs=None,
                                      seed=0, shift_pixels=2, drop_remainder=True)

  with tempfile.TemporaryDirectory() as model_dir:
    others = {}
    if f.bf16:
      others['estimator_bf16'] = _stepped_estimator_runner(
          f, dataset_fn, 'bf16', os.path.join(model_dir, 'bf16'))
      others['estimator_bf16_casts'] = _stepped_estimator_runner(
          f, dataset_fn, 'bf16', os.path.join(model_dir, 'bf16_casts'), casts=True)
    others.update(session=_session_runner(f, dataset_fn), keras=_keras_runner(f, dataset_fn))
    rates = {name: [] for name in ['estimator'] + list(others)}
    estimator = tf.estimator.Estimator(_model_fn,
                                       model_dir=os.path.join(model_dir, 'fp32'),
                                       config=_quiet_config(), params=_params(f))
    try:
      estimator.train(lambda: dataset_fn(), hooks=[_InterleavingHook(f, others, rates)])
    finally:
      for run in others.values():
        if hasattr(run, 'close'):
          run.close()
  return rates


def print_table(rates):
  keras = statistics.median(rates['keras'])
  session = statistics.median(rates['session'])
  print('| variant | examples/s median (min-max) | vs session | vs keras |')
  print('|---|---:|---:|---:|')
  for name, values in rates.items():
    median = statistics.median(values)
    print('| %s | %.1f (%.1f-%.1f) | %.2f | %.2f |' % (
        name, median, min(values), max(values), median / session, median / keras))


def main(_):
  print_table(measure(lifecycle.settings_from_flags(Config, flags.FLAGS)))


if __name__ == '__main__':
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  _define_flags()
  app.run(main)
