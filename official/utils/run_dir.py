"""What a run's directories must be before its first step: writable, clean, and resumable.

Found by trying (issue "Trust at the edges"): a garbage `checkpoint` state file, or a deleted
newest `.index`, made both mains retrain from step 0 and rotate the old checkpoints away; kill
-9 left AlexNet with 9 checkpoints (581 MB) instead of 3, `.tempstate` files and export staging
directories forever; an unwritable --model_dir or --export_dir showed as a traceback, the
latter only after training. Here, before anything trains:
- both directories are checked by writing to them (one line each when they cannot be written);
- temporaries a killed run left are removed;
- the newest checkpoint that reads back whole is the one resumed (each newer one skipped is
  named, with why); a directory holding checkpoints of which none reads back is refused, never
  trained over, unless --clean empties it first;
- checkpoints beyond the retention limit are pruned, oldest first.
"""

import os
import re
import shutil
import tempfile

import tensorflow as tf

from official.utils import export

CHECKPOINT_STATE = 'checkpoint'
# Written before their rename by TensorFlow's checkpoint writers (`.tempstate<n>`), its atomic
# file writes such as the state file (`.tmp<uuid hex>`), run_record's atomic writes (`.tmp-`),
# and sharded saves (`_temp` directories).
_TEMPORARY = re.compile(r'(\.tempstate\d*$|\.tmp[0-9a-f]{32}$|^\.tmp-|_temp(_[0-9a-f]+)?$)')
# A checkpoint shows by its index or its data shards: data without an index is a checkpoint
# that cannot be read, and counts as one.
_CHECKPOINT_FILE = re.compile(
    r'^(?P<prefix>.+)-(?P<step>\d+)\.(index|data-\d+-of-\d+)$')


class RunDirError(ValueError):
  """A --model_dir or --export_dir that a run cannot use; the message says why and the fix."""


def _check_writable(path, flag, create):
  """Raises RunDirError unless path is (or, create=False, can become) a writable directory."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise RunDirError('--%s %s is a file, not a directory' % (flag, path))
  probe_dir = path
  if not os.path.isdir(path):
    if create:
      try:
        os.makedirs(path, exist_ok=True)
      except OSError as e:
        raise RunDirError('--%s %s cannot be created: %s' % (flag, path, e.strerror or e)) from None
    else:
      # Made only when the export is written; what must be writable now is the nearest
      # existing directory above it.
      probe_dir = os.path.dirname(os.path.abspath(path))
      while not os.path.isdir(probe_dir):
        if os.path.exists(probe_dir):
          raise RunDirError('--%s %s cannot be created: %s is a file' % (flag, path, probe_dir))
        probe_dir = os.path.dirname(probe_dir)
  try:
    fd, probe = tempfile.mkstemp(dir=probe_dir, prefix='.tmp-write-check-')
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise RunDirError('--%s %s is not writable (%s): choose a directory this user can write' % (
        flag, path, e.strerror or e)) from None


def check_dirs(model_dir, export_dir=None):
  """Makes model_dir and checks that it and export_dir (if given) can be written."""
  _check_writable(model_dir, 'model_dir', create=True)
  if export_dir:
    _check_writable(export_dir, 'export_dir', create=False)


def remove_temporaries(model_dir, export_dir=None):
  """Removes what killed runs left half-written; returns the names removed."""
  removed = []
  if os.path.isdir(model_dir):
    for name in sorted(os.listdir(model_dir)):
      if _TEMPORARY.search(name):
        path = os.path.join(model_dir, name)
        if os.path.isdir(path):
          shutil.rmtree(path, ignore_errors=True)
        else:
          os.remove(path)
        removed.append(name)
  if export_dir:
    removed += export.remove_stale_staging(export_dir)
  return removed


def _checkpoint_files(model_dir, prefix):
  """The files of one checkpoint prefix (index, data shards, meta graph)."""
  base = os.path.basename(prefix)
  return [os.path.join(model_dir, name) for name in os.listdir(model_dir)
          if name == base + '.index' or name == base + '.meta' or
          name.startswith(base + '.data-')]


def _why_unreadable(prefix, every_tensor):
  """None when the checkpoint's index reads and, with every_tensor, every tensor reads back too
  (the reader checks each one's checksum); else a short reason."""
  if not os.path.exists(prefix + '.index'):
    return 'its .index file is missing'
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map() if every_tensor else ():
      reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).strip().splitlines()
    return message[0][:200] if message else type(e).__name__
  return None


def _state_paths(model_dir):
  """Checkpoint prefixes the state file names, newest last; (paths, problem or None)."""
  if not os.path.exists(os.path.join(model_dir, CHECKPOINT_STATE)):
    return [], None
  try:
    state = tf.train.get_checkpoint_state(model_dir)
  except Exception as e:  # pylint: disable=broad-except
    return [], 'the %s state file does not parse (%s)' % (
        CHECKPOINT_STATE, str(e).strip().splitlines()[0][:120] if str(e).strip() else 'empty')
  if state is None:  # TensorFlow logs the parse error and returns None
    return [], 'the %s state file does not parse' % CHECKPOINT_STATE
  paths = list(state.all_model_checkpoint_paths)
  if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
    paths.append(state.model_checkpoint_path)
  return [os.path.join(model_dir, os.path.basename(p)) for p in paths], None


def _step(prefix):
  match = re.search(r'-(\d+)$', prefix)
  return int(match.group(1)) if match else -1


def recover_checkpoints(model_dir, max_to_keep, log=print):
  """Leaves model_dir resuming from its newest intact checkpoint, keeping max_to_keep.

  Every checkpoint the state file names or an `.index` file shows is a candidate, newest step
  first. Newer ones that do not read back are skipped (logged with why). The state file is
  rewritten to list the intact ones kept, so that whatever restores next (a Saver, an
  Estimator) resumes from the newest of them; older intact ones beyond max_to_keep are deleted.

  Returns:
    The prefix resumed from, or None when model_dir holds no checkpoint.

  Raises:
    RunDirError: model_dir holds checkpoints, and none of them reads back.
  """
  if not os.path.isdir(model_dir):
    return None
  listed, problem = _state_paths(model_dir)
  found = [os.path.join(model_dir, m.group('prefix') + '-' + m.group('step'))
           for m in map(_CHECKPOINT_FILE.match, os.listdir(model_dir)) if m]
  candidates = sorted(set(listed) | set(found), key=_step, reverse=True)
  if not candidates:
    if problem:
      log('warning: %s in %s, and there is no checkpoint; starting afresh' % (problem,
                                                                             model_dir))
    return None
  if problem:
    log('warning: %s in %s; looking for checkpoints by their files' % (problem, model_dir))
  intact, skipped = [], []
  for prefix in candidates:
    if len(intact) == max_to_keep:
      break
    # Only the one resumed from is read whole: older ones kept are checked by their index.
    why = _why_unreadable(prefix, every_tensor=not intact)
    if why is None:
      intact.append(prefix)
    elif not intact:
      skipped.append('%s (%s)' % (os.path.basename(prefix), why))
  if not intact:
    raise RunDirError(
        '--model_dir %s holds checkpoints but none reads back whole: %s. Restore them, or '
        'pass --clean to start afresh (that deletes them)' % (model_dir, '; '.join(skipped)))
  for entry in skipped:
    log('warning: skipping checkpoint %s; resuming from %s' % (
        entry, os.path.basename(intact[0])))
  if len(intact) == max_to_keep:  # what the Saver would have rotated away, had it known
    for prefix in candidates[candidates.index(intact[-1]) + 1:]:
      for path in _checkpoint_files(model_dir, prefix):
        os.remove(path)
  kept = [os.path.basename(p) for p in reversed(intact)]
  if problem or skipped or listed != [os.path.join(model_dir, k) for k in kept]:
    tf.compat.v1.train.update_checkpoint_state(
        model_dir, kept[-1], all_model_checkpoint_paths=kept)
  return intact[0]


def prepare(model_dir, export_dir, max_to_keep, log=print):
  """All of the above, in order; returns the checkpoint prefix to resume from, or None."""
  check_dirs(model_dir, export_dir)
  for name in remove_temporaries(model_dir, export_dir):
    log('removed %s, left by an interrupted run' % name)
  return recover_checkpoints(model_dir, max_to_keep, log)
