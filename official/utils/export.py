"""SavedModel export helpers shared by the mains: serving inputs, versioned atomic directories.

An export goes to `<export_dir>/<integer version>/`, the layout TensorFlow Serving loads. It
is written into a hidden temporary directory beside it and renamed only when complete, so a
reader never sees half an export and a failed export leaves earlier versions as they were.

Every export has two signatures with the same outputs (`classes` int64 [N], `probabilities`
float32 [N, num_classes]): `serving_default` takes float images in [0, 1] (`images`), and
`image_bytes:serving_default` takes encoded PNG/JPEG/GIF/BMP images (`image_bytes`, [N] string)
that the graph decodes, converts to the model's channels and resizes. The names follow the
Estimator's convention for alternative receivers, so both models answer the same client code.
"""

import os
import shutil
import tempfile
import time

import tensorflow as tf

IMAGES_INPUT = 'images'
IMAGE_BYTES_INPUT = 'image_bytes'
DEFAULT_SIGNATURE = 'serving_default'


def alternative_signature(input_name):
  """The name the Estimator gives the signature of an alternative receiver."""
  return '%s:%s' % (input_name, DEFAULT_SIGNATURE)


def _decode_image(image_bytes, height, width, num_channels):
  """PNG/JPEG/GIF/BMP bytes -> float32 [height, width, num_channels] in [0, 1]."""
  image = tf.io.decode_image(image_bytes, channels=num_channels, expand_animations=False)
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.resize(image, [height, width], antialias=True)
  return tf.ensure_shape(image, [height, width, num_channels])


def decode_image_batch(image_bytes, image_shape, dtype=tf.float32):
  """A batch of encoded images [N] string -> [N, h, w, c] in [0, 1], converted to grayscale
  when c is 1 and resized to the model's input."""
  height, width, num_channels = image_shape
  images = tf.map_fn(lambda one: _decode_image(one, height, width, num_channels), image_bytes,
                     fn_output_signature=tf.float32)
  return tf.cast(images, dtype)


def serving_inputs(image_shape, accept_flat=False):
  """Both serving inputs, feeding one image tensor.

  Each input is a placeholder with a default, so a signature that feeds one of them leaves the
  other's branch unevaluated: `image_bytes` defaults to an empty batch, and `images` defaults
  to the decoded `image_bytes`.

  Args:
    image_shape: [h, w, c] of the model's input.
    accept_flat: let `images` take any shape that holds whole images ([N, h*w*c] as well as
      [N, h, w, c]), for models fed flat vectors like the report's AlexNet.

  Returns:
    (images_input, image_bytes_input, images [N, h, w, c] float32).
  """
  image_bytes = tf.compat.v1.placeholder_with_default(
      tf.constant([], tf.string), [None], name=IMAGE_BYTES_INPUT)
  decoded = decode_image_batch(image_bytes, image_shape)
  shape = None if accept_flat else [None] + list(image_shape)
  images_input = tf.compat.v1.placeholder_with_default(decoded, shape, name=IMAGES_INPUT)
  images = tf.reshape(images_input, [-1] + list(image_shape))
  return images_input, image_bytes, images


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
