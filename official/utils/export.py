"""SavedModel export helpers shared by the mains: versioned, atomic directories.

An export goes to `<export_dir>/<integer version>/`, the layout TensorFlow Serving loads. It
is written into a hidden temporary directory beside it and renamed only when complete, so a
reader never sees half an export and a failed export leaves earlier versions as they were.
"""

import os
import shutil
import tempfile
import time


def existing_versions(export_dir):
  """Returns the sorted integer version numbers under export_dir."""
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(name) for name in os.listdir(export_dir)
                if name.isdigit() and os.path.isdir(os.path.join(export_dir, name)))


def next_version(export_dir):
  """A version above every existing one: the Unix time, or the last version + 1 if larger."""
  versions = existing_versions(export_dir)
  return max([int(time.time())] + [v + 1 for v in versions])


def export_atomically(export_dir, write_fn):
  """Calls write_fn(tmp_path) to write a SavedModel, then renames it into a new version.

  Args:
    export_dir: base directory of versions.
    write_fn: callable that writes a complete SavedModel to the (not yet existing) path it
      is given.

  Returns:
    The final export path, `<export_dir>/<version>`.
  """
  os.makedirs(export_dir, exist_ok=True)
  staging = tempfile.mkdtemp(dir=export_dir, prefix='.tmp-export-')
  try:
    written = os.path.join(staging, 'model')
    write_fn(written)
    final = os.path.join(export_dir, str(next_version(export_dir)))
    os.rename(written, final)
    return final
  finally:
    shutil.rmtree(staging, ignore_errors=True)
