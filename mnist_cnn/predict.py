"""Classifies image files with an exported SavedModel.

  python -m mnist_cnn.predict --export_dir=DIR image.png [more.jpg ...]

--export_dir is an export base directory (its highest integer version is used) or one version
directory. Images are PNG, JPEG, GIF or BMP of any size, colour or grey: the export's
`image_bytes:serving_default` signature decodes, converts and resizes them in the graph, exactly
as the REST server does. Prints the class and the top probabilities of each file; a file that is
not an image gets an error line, and the command then exits 1.
"""

import os
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from mnist_cnn.serving import image_headers
from mnist_cnn.serving import inference_graph
from mnist_cnn.serving import json_tensors
from mnist_cnn.serving import models
from official.utils import export


def define_predict_flags(flag_values=flags.FLAGS):
  flags.DEFINE_string('export_dir', None, 'Export base directory, or one version directory.',
                      flag_values=flag_values)
  flags.DEFINE_integer('top_k', 3, 'How many of the most likely classes to print.',
                       flag_values=flag_values)
  flags.DEFINE_integer('max_image_pixels', json_tensors.DEFAULT_LIMITS.max_image_pixels,
                       'Most pixels an image may declare (all frames of a GIF); larger files are '
                       'refused from their header instead of being decoded.',
                       flag_values=flag_values)
  inference_graph.define_flags(flag_values)
  flags.mark_flag_as_required('export_dir', flag_values=flag_values)
  flags.register_validator('max_image_pixels', lambda v: v >= 1,
                           message='--max_image_pixels must be at least 1', flag_values=flag_values)
  flags.register_validator('top_k', lambda v: v >= 1, message='--top_k must be at least 1',
                           flag_values=flag_values)


def resolve_export(export_dir):
  """A version directory: export_dir itself if it holds a SavedModel, else its newest version."""
  if not os.path.isdir(export_dir):
    raise ValueError('--export_dir %s is not a directory' % export_dir)
  if any(os.path.exists(os.path.join(export_dir, f)) for f in export.SAVED_MODEL_FILES):
    return export_dir
  versions = export.loadable_versions(export_dir)
  if not versions:
    raise ValueError('%s holds no SavedModel and no integer version directory with one' %
                     export_dir)
  return os.path.join(export_dir, str(versions[-1]))


def image_bytes_signature(loaded):
  """The signature that takes encoded images: by its input name, whichever is default."""
  for name in (export.alternative_signature(export.IMAGE_BYTES_INPUT),
               export.DEFAULT_SIGNATURE):
    signature = loaded.signatures.get(name)
    if signature and list(signature.inputs) == [export.IMAGE_BYTES_INPUT]:
      return signature
  raise ValueError('the export at %s has no signature taking %r (signatures: %s)' % (
      loaded.path, export.IMAGE_BYTES_INPUT, ', '.join(sorted(loaded.signatures))))


def classify_files(loaded, paths, max_image_pixels=json_tensors.DEFAULT_LIMITS.max_image_pixels):
  """Yields (path, probabilities or None, error or None) for each file, one model call each."""
  signature = image_bytes_signature(loaded)
  for path in paths:
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      yield path, None, 'cannot read: %s' % (e.strerror or e)
      continue
    try:
      image_headers.check_pixels(data, max_image_pixels)
    except image_headers.ImageSizeError as e:
      yield path, None, str(e)
      continue
    try:
      outputs = loaded.run(signature, {export.IMAGE_BYTES_INPUT: np.array([data], dtype=object)})
    except models.ServingError as e:
      yield path, None, 'not a PNG/JPEG/GIF/BMP image (%s)' % e.message
      continue
    yield path, outputs['probabilities'][0], None


def run_predict(flags_obj, paths, out=sys.stdout):
  """Prints one line per file; returns the number of files that failed."""
  loaded = models.LoadedVersion(0, resolve_export(flags_obj.export_dir),
                                optimize=flags_obj.optimize_graph,
                                serving_precision=flags_obj.serving_precision)
  failures = 0
  try:
    for path, probabilities, error in classify_files(loaded, paths,
                                                     flags_obj.max_image_pixels):
      if error:
        failures += 1
        print('%s: error: %s' % (path, error), file=out)
        continue
      top = np.argsort(-probabilities)[:flags_obj.top_k]
      print('%s: class %d (%.4f); top %d: %s' % (
          path, top[0], probabilities[top[0]], len(top),
          ', '.join('%d %.4f' % (c, probabilities[c]) for c in top)), file=out)
  finally:
    loaded.close_when_drained()
  return failures


def main(argv):
  paths = argv[1:]
  if not paths:
    sys.exit('usage: python -m mnist_cnn.predict --export_dir=DIR IMAGE [IMAGE ...]')
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  try:
    failures = run_predict(flags.FLAGS, paths)
  except (ValueError, OSError) as e:
    sys.exit('error: %s' % e)
  if failures:
    sys.exit(1)


def run_command():
  """The `mnist-cnn-predict` console command (setup.py), as `python -m` runs this module."""
  define_predict_flags()
  app.run(main)


if __name__ == '__main__':
  run_command()
