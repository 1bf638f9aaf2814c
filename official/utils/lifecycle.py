"""The run lifecycle every model's loop shares, from the entry point to the export.

  run_main(run, log_hooks)           quiet logs; a user error is one line and exit 1
  recording(model_dir)               the run's ending (finished, failed, interrupted) marked in
                                     metrics.json
  settings_from_flags(cls, flags)    the entry point's one read of the flags, as a frozen value
  start(settings, keep, facts)       --clean, model_dir checks and recovery (prepare), flags.json
                                     (record_flags); returns the checkpoint to resume from
  epoch_record(...)                  the one per-epoch record schema of metrics.json
  should_stop(settings, record)      --max_train_steps and --stop_threshold
  StopOnInterrupt / interrupted()    Ctrl-C stops between steps, after a checkpoint
  export_if_asked(settings, fn)      --export_dir

The AlexNet Session loop (mnist_cnn/alexnet_main.py) and the Estimator loop
(official/resnet/resnet_run_loop.resnet_main) call these, and so does every model still to come.
"""

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import threading

import tensorflow as tf

from official.utils import precision
from official.utils import run_dir
from official.utils import weight_averages
from official.utils.flags import core as flags_core
from official.utils.logs import run_record

# Errors of the user's making (flags, files, machine) that print one line and exit 1; entry
# points add their data layer's errors.
USER_ERRORS = (precision.PrecisionError, run_dir.RunDirError,
               weight_averages.WeightAverageError)
# Keys every epoch record of metrics.json has (None where a run cannot tell); models add more.
EPOCH_KEYS = ('epoch', 'global_step', 'seconds', 'examples_per_second', 'train_loss_mean',
              'num_parameters', 'accuracy')


@dataclasses.dataclass(frozen=True)
class RunSettings(object):
  """The flags every run loop reads (official/utils/flags/core.py), as values."""
  model_dir: str
  export_dir: str
  clean: bool
  train_epochs: int
  epochs_between_evals: int
  batch_size: int
  stop_threshold: float
  max_train_steps: int
  seed: int
  ema_decay: float
  hooks: tuple
  inter_op_parallelism_threads: int
  intra_op_parallelism_threads: int
  # Every flag of the entry point, for flags.json.
  flags_record: dict = dataclasses.field(default_factory=dict, compare=False)


def settings_from_flags(cls, flags_obj, **overrides):
  """An instance of dataclass cls from the parsed flags of the same names (and flags_record,
  when cls has one); the entry point's one read of its flags."""
  values = {}
  for field in dataclasses.fields(cls):
    if field.name == 'flags_record':
      values[field.name] = flags_core.flags_dict(flags_obj)
    elif field.name not in overrides:
      value = getattr(flags_obj, field.name)
      values[field.name] = tuple(value) if isinstance(value, list) else value
  values.update(overrides)
  return cls(**values)


def start(settings, keep_checkpoints, facts):
  """prepare() and record_flags() at once; returns the checkpoint to resume from."""
  checkpoint = prepare(settings, keep_checkpoints)
  record_flags(settings, facts)
  return checkpoint


def prepare(settings, keep_checkpoints):
  """Makes model_dir ready to train in; returns the checkpoint to resume from (None for a
  fresh start).

  --clean empties model_dir first; run_dir.prepare checks it and the export dir, removes what
  killed runs left, and picks the newest intact checkpoint, which must agree with --ema_decay
  (WeightAverageError).
  """
  if settings.clean and os.path.isdir(settings.model_dir):
    shutil.rmtree(settings.model_dir)
  checkpoint = run_dir.prepare(settings.model_dir, settings.export_dir, keep_checkpoints)
  weight_averages.check_resumable(checkpoint, settings.ema_decay)
  return checkpoint


def record_flags(settings, facts):
  """Writes flags.json: every flag, and facts (model, data, dtype_used...) beside them."""
  run_record.write_flags(settings.model_dir, settings.flags_record, extra=facts)


def epoch_record(epoch, global_step, seconds, examples, train_loss_mean, num_parameters,
                 evaluation=None, **extra):
  """One line of metrics.json for a training cycle ending at `epoch`.

  Args:
    epoch: epochs completed when the cycle ended.
    global_step: the step the cycle's checkpoint holds.
    seconds: training time of the cycle (evaluation excluded).
    examples: training examples the cycle processed.
    train_loss_mean: mean training cross-entropy of the cycle (None when it trained nothing).
    num_parameters: trainable scalars of the model.
    evaluation: the cycle's test-set results (accuracy and the model's other metrics), if any.
    **extra: the model's own fields.
  """
  record = dict.fromkeys(EPOCH_KEYS)
  record.update(extra)
  record.update(evaluation or {})
  record.update(epoch=epoch, global_step=int(global_step), seconds=seconds,
                examples_per_second=examples / seconds if seconds else None,
                train_loss_mean=train_loss_mean, num_parameters=num_parameters)
  return record


def recorded_epochs(model_dir, last_step_of, checkpoint_step):
  """Epochs an earlier run of model_dir trained and recorded: metrics.json has the epoch's
  record at last_step_of(epoch) and the checkpoint (at checkpoint_step) is at or past it. A
  rerun skips them: evaluating again would record the newest checkpoint under an old epoch."""
  return {record['epoch'] for record in run_record.read_metrics(model_dir)
          if 'accuracy' in record and isinstance(record.get('epoch'), int)
          and last_step_of(record['epoch']) is not None
          and record.get('global_step') == last_step_of(record['epoch']) <= checkpoint_step}


def should_stop(settings, record):
  """Whether training ends after this record: --max_train_steps reached, or an evaluation at
  --stop_threshold (which it says)."""
  if settings.max_train_steps and record['global_step'] >= settings.max_train_steps:
    return True
  accuracy = record.get('accuracy')
  if settings.stop_threshold and accuracy is not None and accuracy >= settings.stop_threshold:
    print('Stopping: test accuracy %.4f reached --stop_threshold=%s' % (
        accuracy, settings.stop_threshold))
    return True
  return False


class StopOnInterrupt(object):
  """Context manager: `.requested` turns True at the first SIGINT while it is active.

  A KeyboardInterrupt raised at an arbitrary point can land inside a checkpoint write or inside
  TensorFlow's own Python code and leave the process hanging; so the first Ctrl-C only sets a
  flag, the loop checks it after each step, saves and calls interrupted(). A second Ctrl-C
  interrupts at once, as usual.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    print('\nStopping after this step (Ctrl-C again to stop at once).', flush=True)

  def __enter__(self):
    # Signal handlers can only be set from the main thread; elsewhere Ctrl-C is not ours.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None
    return False


class StopHook(tf.compat.v1.train.SessionRunHook):
  """Ends an Estimator's training between steps once a StopOnInterrupt was requested (the
  Estimator then saves its checkpoint as at any end of training)."""

  def __init__(self, stop):
    self._stop = stop

  def after_run(self, run_context, run_values):
    if self._stop.requested:
      run_context.request_stop()


class Interrupted(KeyboardInterrupt):
  """Ctrl-C after the loop saved its last checkpoint; run_main records it with its step."""

  def __init__(self, global_step=None):
    super().__init__()
    self.global_step = global_step


def interrupted(model_dir, global_step):
  """Raises Interrupted once a loop stopped by StopOnInterrupt has saved its checkpoint."""
  print('Interrupted; the last complete checkpoint in %s is intact.' % model_dir)
  sys.stdout.flush()
  raise Interrupted(None if global_step is None else int(global_step))


def export_if_asked(settings, export_fn, results):
  """Calls export_fn(export_dir) with --export_dir and adds 'export_path' to results."""
  if settings.export_dir:
    results['export_path'] = export_fn(settings.export_dir)
    print('Exported SavedModel to %s' % results['export_path'])
  return results


def _mark(model_dir, event, **fields):
  """Marks how a run ended in its metrics.json, when the run got as far as writing flags.json.

  The report generator reads these marks to tell a finished run from a failed or cut one.
  """
  if model_dir and os.path.exists(os.path.join(model_dir, run_record.FLAGS_FILE)):
    try:
      run_record.append_metrics(model_dir, dict(fields, event=event))
    except OSError:
      pass  # the original error matters more than the mark


@contextlib.contextmanager
def recording(model_dir, user_errors=()):
  """Marks how the run inside ended in model_dir's metrics.json: `finished`, `failed` (with the
  error: its message for USER_ERRORS and user_errors, its type and message otherwise) or
  `interrupted` (with the step of the last checkpoint). model_dir None marks nothing (a
  cluster's non-chiefs: the chief records the run)."""
  try:
    yield
  except KeyboardInterrupt as e:
    step = getattr(e, 'global_step', None)
    _mark(model_dir, 'interrupted', **({} if step is None else {'global_step': step}))
    raise
  except Exception as e:
    known = isinstance(e, USER_ERRORS + tuple(user_errors))
    _mark(model_dir, 'failed', error=str(e) if known else '%s: %s' % (type(e).__name__, e))
    raise
  _mark(model_dir, 'finished')


def run_main(run, log_hooks=False, user_errors=()):
  """Runs run() as a command and returns what it returns: TF's INFO log only when hooks that
  print there were asked for (log_hooks), and an error of the user's making (USER_ERRORS and
  user_errors) as one line and exit status 1 instead of a traceback."""
  tf.compat.v1.logging.set_verbosity(
      tf.compat.v1.logging.INFO if log_hooks else tf.compat.v1.logging.ERROR)
  try:
    return run()
  except USER_ERRORS + tuple(user_errors) as e:
    sys.exit('error: %s' % e)
