"""What every command-line main does around its run function."""

import sys

import tensorflow as tf

from mnist_cnn import input_data


def run_main(run_fn, flags_obj):
  """Runs run_fn(flags_obj) with quiet TF logging; a data error becomes one line and exit 1.

  TF's INFO log is noise here, except for the output of hooks the user asked for (--hooks).
  """
  tf.compat.v1.logging.set_verbosity(
      tf.compat.v1.logging.INFO if flags_obj.hooks else tf.compat.v1.logging.ERROR)
  try:
    return run_fn(flags_obj)
  except input_data.DATA_ERRORS as e:
    sys.exit('error: %s' % e)
