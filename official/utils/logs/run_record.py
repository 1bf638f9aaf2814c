"""What every run leaves beside its checkpoints: flags.json and JSON-lines metrics.json.

flags.json is replaced atomically, so a reader never sees half a file; metrics.json gets one
line per evaluation, appended and flushed, so an interrupted run keeps what it measured.
"""

import json
import os
import tempfile
import time

FLAGS_FILE = 'flags.json'
METRICS_FILE = 'metrics.json'
# An epoch's record between its checkpoint's save and its line in metrics.json (commit_epoch).
PENDING_FILE = 'pending_epoch.json'
# Printed when a training session is up (its variables initialised or restored); the local
# cluster launcher waits for the chief's before starting workers.
SESSION_READY = 'Training session ready'


def _json_default(value):
  """Makes numpy scalars and other odd values serialisable."""
  if hasattr(value, 'item'):
    return value.item()
  return str(value)


def publish(tmp_path, path):
  """Renames a finished temporary file onto path with the permissions a plain open() gives
  (mkstemp makes files private to their owner)."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp_path, 0o666 & ~umask)
  os.replace(tmp_path, path)


def write_text_atomic(path, text):
  """Writes text to path through a temporary file in the same directory."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    publish(tmp, path)
  except BaseException:
    os.remove(tmp)
    raise


def write_json_atomic(path, obj):
  """Writes obj as JSON to path, atomically."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + '\n')


def write_flags(model_dir, flag_values, extra=None):
  """Writes the run's flags (and facts such as the model name) to model_dir/flags.json."""
  record = dict(flag_values)
  record.update(extra or {})
  write_json_atomic(os.path.join(model_dir, FLAGS_FILE), record)


def append_metrics(model_dir, metrics):
  """Appends one JSON line of metrics (with a wall-clock timestamp) to metrics.json."""
  os.makedirs(model_dir, exist_ok=True)
  record = dict(metrics)
  record.setdefault('timestamp', time.time())
  with open(os.path.join(model_dir, METRICS_FILE), 'a') as f:
    f.write(json.dumps(record, sort_keys=True, default=_json_default) + '\n')
    f.flush()
    os.fsync(f.fileno())


def commit_epoch(model_dir, record, save_checkpoint):
  """Saves an epoch's checkpoint and records its metrics so that one never exists without the
  other: the record is put aside first, and a run killed between the two writes finds it there
  on its next start (settle_pending)."""
  record = dict(record)
  record.setdefault('timestamp', time.time())
  pending = os.path.join(model_dir, PENDING_FILE)
  write_json_atomic(pending, record)
  save_checkpoint()
  append_metrics(model_dir, record)
  os.remove(pending)


def settle_pending(model_dir, resumed_step):
  """Finishes a commit_epoch that a killed run left half done; returns the record it added.

  The record goes to metrics.json when its checkpoint is the one resumed from (and is not
  there yet); a record whose checkpoint never landed is dropped with its epoch, which reruns.
  """
  pending = os.path.join(model_dir, PENDING_FILE)
  if not os.path.exists(pending):
    return None
  try:
    with open(pending) as f:
      record = json.load(f)
  except ValueError:
    record = None  # written atomically, so never half a file; anything else is dropped
  added = None
  if (isinstance(record, dict) and resumed_step is not None and
      record.get('global_step') == resumed_step and not any(
          r.get('global_step') == resumed_step and 'epoch' in r
          for r in read_metrics(model_dir))):
    append_metrics(model_dir, record)
    added = record
  os.remove(pending)
  return added


def count_parameters(variables):
  """Number of scalars in the given (trainable) variables, as the run records state it."""
  return int(sum(v.shape.num_elements() for v in variables))


def read_metrics(model_dir):
  """Returns the list of metric records in model_dir/metrics.json ([] if there is none)."""
  path = os.path.join(model_dir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          records.append(json.loads(line))
        except ValueError as e:
          raise ValueError('%s: line %d is not JSON (%s)' % (path, number, e)) from None
  return records
