"""Training hooks chosen by name (--hooks), for Estimators and the AlexNet Session loop.

Names are case-insensitive: LoggingTensorHook, ExamplesPerSecondHook, ProfilerHook,
StepCounterHook. The logged tensors are found by name in the graph, so each model must create
`cross_entropy`, `learning_rate` and `train_accuracy` with tf.identity.
"""

import sys
import time

import tensorflow as tf

from official.utils.flags import core as flags_core
from official.utils.logs import run_record

PROGRESS_EVERY_N_STEPS = 100
# Tensors the models name for logging; a test checks that each exists in their graphs.
TENSORS_TO_LOG = {
    'learning_rate': 'learning_rate',
    'cross_entropy': 'cross_entropy',
    'train_accuracy': 'train_accuracy',
}


class ExamplesPerSecondHook(tf.compat.v1.train.SessionRunHook):
  """Logs training examples/second every `every_n_steps`, from the global step's progress."""

  def __init__(self, batch_size, every_n_steps=100, warm_steps=5, log_fn=None):
    self._batch_size = batch_size
    self._timer = tf.compat.v1.train.SecondOrStepTimer(every_steps=every_n_steps)
    self._warm_steps = warm_steps
    self._log_fn = log_fn or tf.compat.v1.logging.info
    self._total_steps = 0
    self._total_seconds = 0.0
    self.last_examples_per_second = None

  def begin(self):
    self._global_step = tf.compat.v1.train.get_global_step()
    if self._global_step is None:
      raise RuntimeError('ExamplesPerSecondHook needs a global step in the graph')

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self._global_step)

  def after_run(self, run_context, run_values):
    global_step = run_values.results
    if global_step <= self._warm_steps or not self._timer.should_trigger_for_step(global_step):
      return
    elapsed, steps = self._timer.update_last_triggered_step(global_step)
    if elapsed is None:
      return
    self._total_steps += steps
    self._total_seconds += elapsed
    self.last_examples_per_second = self._batch_size * steps / elapsed
    average = self._batch_size * self._total_steps / self._total_seconds
    self._log_fn('examples/sec: %.1f (average %.1f) at step %d' %
                 (self.last_examples_per_second, average, global_step))


def get_train_hooks(names, model_dir, batch_size, every_n_iter=100,
                    tensors_to_log=None):
  """Builds the hooks named in `names`.

  Raises:
    ValueError: a name is not one of flags_core.HOOK_NAMES.
  """
  tensors_to_log = TENSORS_TO_LOG if tensors_to_log is None else tensors_to_log
  builders = {
      'loggingtensorhook': lambda: tf.compat.v1.train.LoggingTensorHook(
          tensors=tensors_to_log, every_n_iter=every_n_iter),
      'examplespersecondhook': lambda: ExamplesPerSecondHook(batch_size, every_n_iter),
      'profilerhook': lambda: tf.compat.v1.train.ProfilerHook(
          save_steps=every_n_iter * 10, output_dir=model_dir),
      'stepcounterhook': lambda: tf.compat.v1.train.StepCounterHook(
          every_n_steps=every_n_iter, output_dir=model_dir),
  }
  hooks = []
  for name in names:
    key = name.strip().lower()
    if key not in builders:
      raise ValueError('unknown hook %r; --hooks takes: %s' %
                       (name, ', '.join(flags_core.HOOK_NAMES)))
    hooks.append(builders[key]())
  return hooks


class HookedSessionRunner(object):
  """Runs SessionRunHooks around plain `Session.run` calls (for loops without MonitoredSession).

  Calls begin() at construction (before the graph is finalised), after_create_session()
  through `attach`, and before_run/after_run around each `run`.
  """

  def __init__(self, hooks):
    self._hooks = list(hooks)
    for hook in self._hooks:
      hook.begin()
    self._session = None

  def attach(self, session):
    self._session = session
    for hook in self._hooks:
      hook.after_create_session(session, None)

  def run(self, fetches, feed_dict=None):
    """Runs fetches plus what the hooks ask for; returns the results of `fetches`."""
    if not self._hooks:
      return self._session.run(fetches, feed_dict=feed_dict)
    context = tf.compat.v1.train.SessionRunContext((fetches, feed_dict), self._session)
    hook_args = [hook.before_run(context) for hook in self._hooks]
    hook_fetches = [args.fetches if args is not None and args.fetches is not None else []
                    for args in hook_args]
    options = tf.compat.v1.RunOptions()
    for args in hook_args:
      if args is not None and args.options is not None:
        options.MergeFrom(args.options)
    run_metadata = tf.compat.v1.RunMetadata()
    results, hook_results = self._session.run(
        [fetches, hook_fetches], feed_dict=feed_dict, options=options,
        run_metadata=run_metadata)
    for hook, result in zip(self._hooks, hook_results):
      hook.after_run(context, tf.compat.v1.train.SessionRunValues(
          results=result, options=options, run_metadata=run_metadata))
    return results

  def end(self):
    for hook in self._hooks:
      hook.end(self._session)


class ProgressHook(tf.compat.v1.train.SessionRunHook):
  """Prints step, loss, accuracy, learning rate, examples/second and the epoch's ETA."""

  def __init__(self, batch_size, steps_per_epoch, every_n_steps=PROGRESS_EVERY_N_STEPS,
               print_fn=print):
    self._batch_size = batch_size
    self._steps_per_epoch = steps_per_epoch
    self._every_n_steps = every_n_steps
    self._print = print_fn
    self._last = None
    self.loss_sum = 0.0
    self.loss_steps = 0
    self.num_parameters = None

  @property
  def mean_loss(self):
    """Mean training cross-entropy over the steps of the last train() call (None if none)."""
    return self.loss_sum / self.loss_steps if self.loss_steps else None

  def begin(self):
    # Each train() call starts timing and the loss average afresh.
    self._last = None
    self.loss_sum, self.loss_steps = 0.0, 0
    self.num_parameters = run_record.count_parameters(tf.compat.v1.trainable_variables())
    graph = tf.compat.v1.get_default_graph()
    self._fetches = {name: graph.get_tensor_by_name(name + ':0')
                     for name in ('cross_entropy', 'train_accuracy', 'learning_rate')}
    self._fetches['global_step'] = tf.compat.v1.train.get_global_step()

  def after_create_session(self, session, coord):
    # The launcher of a local cluster waits for this line to start the workers.
    step = session.run(self._fetches['global_step'])
    self._print('%s at step %d' % (run_record.SESSION_READY, step))
    sys.stdout.flush()

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self._fetches)

  def after_run(self, run_context, run_values):
    values = run_values.results
    step = int(values['global_step'])
    now = time.monotonic()
    self.loss_sum += float(values['cross_entropy'])
    self.loss_steps += 1
    if self._last is None:
      self._last = (step, now)
      return
    if step - self._last[0] < self._every_n_steps:
      return
    rate = (step - self._last[0]) * self._batch_size / (now - self._last[1])
    where, eta = '', ''
    if self._steps_per_epoch:  # unknown for input functions of unknown length
      where = ' (epoch %.2f)' % (step / self._steps_per_epoch)
      seconds = (self._steps_per_epoch - step % self._steps_per_epoch) * self._batch_size / rate
      eta = ', epoch ends in %dm%02ds' % (seconds // 60, seconds % 60)
    self._print('step %d%s: loss %.4f, accuracy %.3f, learning rate %.5f, %.1f examples/s%s' % (
        step, where, values['cross_entropy'], values['train_accuracy'],
        values['learning_rate'], rate, eta))
    sys.stdout.flush()
    self._last = (step, now)
