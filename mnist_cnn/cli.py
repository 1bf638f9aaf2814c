"""What every command-line main does around its run function."""

import os
import sys

import tensorflow as tf

from mnist_cnn import input_data
from official.utils import distribution_utils
from official.utils import precision
from official.utils import run_dir
from official.utils.logs import run_record


def _record_event(model_dir, event, **fields):
  """Marks how a run ended in its metrics.json, when the run got as far as writing flags.json.

  The report generator reads these marks to tell a finished run from a failed or cut one.
  """
  if model_dir and os.path.exists(os.path.join(model_dir, run_record.FLAGS_FILE)):
    try:
      run_record.append_metrics(model_dir, dict(fields, event=event))
    except OSError:
      pass  # the original error matters more than the mark


def _is_chief(flags_obj):
  try:
    config = distribution_utils.cluster_config(
        os.environ, getattr(flags_obj, 'worker_hosts', None), getattr(flags_obj, 'ps_hosts', None),
        getattr(flags_obj, 'task_type', 'worker'), getattr(flags_obj, 'task_index', 0))
  except distribution_utils.DistributionError:
    return False  # a misconfigured member must not mark the chief's run
  return distribution_utils.task_of(config)[0] == 'chief'


def run_main(run_fn, flags_obj):
  """Runs run_fn(flags_obj) with quiet TF logging; a data error becomes one line and exit 1.

  TF's INFO log is noise here, except for the output of hooks the user asked for (--hooks).
  """
  tf.compat.v1.logging.set_verbosity(
      tf.compat.v1.logging.INFO if flags_obj.hooks else tf.compat.v1.logging.ERROR)
  # In a cluster all members share model_dir, and only the chief's run is recorded there.
  model_dir = getattr(flags_obj, 'model_dir', None) if _is_chief(flags_obj) else None
  try:
    result = run_fn(flags_obj)
  except input_data.DATA_ERRORS + (precision.PrecisionError, run_dir.RunDirError,
                                   distribution_utils.DistributionError) as e:
    _record_event(model_dir, 'failed', error=str(e))
    sys.exit('error: %s' % e)
  except Exception as e:
    _record_event(model_dir, 'failed', error='%s: %s' % (type(e).__name__, e))
    raise
  _record_event(model_dir, 'finished')
  return result
