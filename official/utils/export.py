"""The one export path of every model: serving inputs, signatures, versioned atomic directories.

An export goes to `<export_dir>/<integer version>/`, the layout TensorFlow Serving loads. It
is written into a hidden temporary directory beside it and renamed only when complete, so a
reader never sees half an export and a failed export leaves earlier versions as they were.

Every export has two signatures with the same outputs (`classes` int64 [N], `probabilities`
float32 [N, num_classes]): `serving_default` takes float images in [0, 1] (`images`), and
`image_bytes:serving_default` takes encoded PNG/JPEG/GIF/BMP images (`image_bytes`, [N] string)
that the graph decodes, converts to the model's channels and resizes. The names follow the
Estimator's convention for alternative receivers, so both models answer the same client code;
each is also there under the Estimator's other name (`predict`, `image_bytes:predict`), which
ResNet exports had while the Estimator wrote them.

A model exports with `export_model(export_dir, image_shape, build_outputs, checkpoint, ...)`:
build_outputs(images) builds its inference graph, whose variables the checkpoint restores;
Estimator models with `export_from_model_fn`, whose graph is their model_fn's PREDICT graph.
`image_bytes_serving_input_fn` is the Model Garden's receiver of encoded images, for
`Estimator.export_saved_model`.
"""

import json
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from official.utils import precision
from official.utils import weight_averages

IMAGES_INPUT = 'images'
IMAGE_BYTES_INPUT = 'image_bytes'
DEFAULT_SIGNATURE = 'serving_default'
PREDICT_SIGNATURE = 'predict'
OUTPUTS = ('classes', 'probabilities')
SAVED_MODEL_FILES = ('saved_model.pb', 'saved_model.pbtxt')
# What an export needs to say beyond its signatures: the dtype its graph computes in (fp32,
# unless a GPU run cast its layers), its image shape, the dtype it was trained and evaluated in
# and its test accuracy in fp32 and bf16, by which our server and `predict` choose to serve in
# bf16 (mnist_cnn/serving/inference_graph.py). TF Serving ignores assets.extra apart from
# warm-up requests.
SERVING_INFO = 'assets.extra/mnist_cnn.json'
STAGING_PREFIX = '.tmp-export-'
INT64_MAX = 2 ** 63 - 1


def alternative_signature(input_name):
  """The name the Estimator gives the signature of an alternative receiver."""
  return '%s:%s' % (input_name, DEFAULT_SIGNATURE)


def _to_channels(image, num_channels):
  """float32 [h, w, any of 1-4 channels] -> [h, w, num_channels] (1: grey, 3: RGB).

  Decoders give what the file holds: grey (1), grey + alpha (2), RGB (3) or RGBA (4); GIFs are
  always RGB and BMPs RGB(A) or grey. Alpha is dropped; grey <-> RGB by ITU-R 601 weights.
  """
  have = tf.shape(image)[-1]
  if num_channels == 1:
    return tf.cond(have < 3, lambda: image[..., :1],
                   lambda: tf.image.rgb_to_grayscale(tf.ensure_shape(image[..., :3],
                                                                     [None, None, 3])))
  grey_to_rgb = lambda: tf.tile(image[..., :1], [1, 1, num_channels])
  return tf.cond(have < 3, grey_to_rgb, lambda: image[..., :num_channels])


def _decode_image(image_bytes, height, width, num_channels):
  """PNG/JPEG/GIF/BMP bytes -> float32 [height, width, num_channels] in [0, 1].

  Decoded with the channels the file has, then converted: asking the decoder for one channel
  fails for every GIF ("channels must be 0 or 3") and for RGB BMPs.
  """
  image = tf.io.decode_image(image_bytes, channels=0, expand_animations=False)
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = _to_channels(image, num_channels)
  image = tf.image.resize(image, [height, width], antialias=True)
  return tf.ensure_shape(image, [height, width, num_channels])


def decode_image_batch(image_bytes, image_shape, dtype=tf.float32):
  """A batch of encoded images [N] string -> [N, h, w, c] in [0, 1], converted to grayscale
  when c is 1 and resized to the model's input."""
  height, width, num_channels = image_shape
  images = tf.map_fn(lambda one: _decode_image(one, height, width, num_channels), image_bytes,
                     fn_output_signature=tf.float32)
  return tf.cast(images, dtype)


def image_bytes_serving_input_fn(image_shape, dtype=tf.float32):
  """The Model Garden's serving input receiver of encoded images (its r1 name and signature).

  Takes `image_bytes` [N] string (PNG/JPEG/GIF/BMP), decodes each image and fits it to
  image_shape [h, w, c] as decode_image_batch does (in [0, 1], resized with antialiasing; the
  Model Garden's cropped to the centre and resized for ImageNet).

  Returns:
    tf.estimator.export.TensorServingInputReceiver of images [N, h, w, c] in dtype.
  """
  image_bytes_list = tf.compat.v1.placeholder(shape=[None], dtype=tf.string,
                                              name='input_tensor')
  images = decode_image_batch(image_bytes_list, image_shape, dtype)
  return tf.estimator.export.TensorServingInputReceiver(images,
                                                        {IMAGE_BYTES_INPUT: image_bytes_list})


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
  if accept_flat:
    # Whatever the request's layout, one instance must be one image: without this check an
    # instance of two images' floats would come back as two predictions, and a server that
    # merges requests would hand the second one to another client.
    with tf.control_dependencies([tf.debugging.assert_equal(
        tf.shape(images)[0], tf.shape(images_input)[0],
        message='each instance of "images" must hold exactly one image of %s values' %
        'x'.join(str(d) for d in image_shape))]):
      images = tf.identity(images)
  return images_input, image_bytes, images


def signature_defs(images_input, image_bytes_input, outputs, image_bytes_default=False):
  """Every export's signatures (see the module note): `serving_default` takes float images, or
  encoded images with image_bytes_default, and the other input gets `<input>:serving_default`.
  """
  inputs = {IMAGES_INPUT: images_input, IMAGE_BYTES_INPUT: image_bytes_input}
  default = IMAGE_BYTES_INPUT if image_bytes_default else IMAGES_INPUT
  defs = {}
  for name, tensor in inputs.items():
    signature = tf.compat.v1.saved_model.predict_signature_def(inputs={name: tensor},
                                                               outputs=outputs)
    prefix = '' if name == default else name + ':'
    for signature_name in (DEFAULT_SIGNATURE, PREDICT_SIGNATURE):
      defs[prefix + signature_name] = signature
  return defs


def export_model(export_dir, image_shape, build_outputs, checkpoint_path, compute_dtype,
                 training_dtype, image_bytes_default=False, accept_flat=False, test_set=None,
                 averaged=False):
  """Exports a checkpoint as a new version under export_dir; returns its path.

  Args:
    export_dir: base directory of versions.
    image_shape: [h, w, c] of the model's input.
    build_outputs: fn(images [N, h, w, c] float32 in [0, 1]) -> {'classes', 'probabilities'},
      building the inference graph with the checkpoint's variable names.
    checkpoint_path: the checkpoint to restore every variable of that graph from.
    compute_dtype: the dtype the graph computes in, recorded in SERVING_INFO.
    training_dtype: the dtype the run trained and evaluated in ('fp32', 'bf16': the run's
      dtype_used), recorded too: servers choose their precision by it.
    image_bytes_default: `serving_default` takes encoded images.
    accept_flat: `images` also takes [N, h*w*c] (see serving_inputs).
    test_set: None, or fn() -> (float images [N, h, w, c] in [0, 1], int labels [N]): the
      export's accuracy on them in each precision this CPU computes natively is recorded
      (`test_accuracy`), by which servers decide whether bf16 may serve it.
    averaged: the trainable variables take the values of their averages in the checkpoint
      (official/utils/weight_averages.py; a run with --ema_decay evaluated those).
  """
  def write(path):
    with tf.Graph().as_default() as graph:
      images_input, image_bytes_input, images = serving_inputs(image_shape, accept_flat)
      outputs = build_outputs(images)
      saver = tf.compat.v1.train.Saver(weight_averages.restore_map(checkpoint_path, averaged))
      with tf.compat.v1.Session(graph=graph) as sess:
        saver.restore(sess, checkpoint_path)
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            sess, [tf.compat.v1.saved_model.tag_constants.SERVING],
            signature_def_map=signature_defs(images_input, image_bytes_input,
                                             {k: outputs[k] for k in OUTPUTS},
                                             image_bytes_default),
            strip_default_attrs=True)
        builder.save()
    info = {'compute_dtype': compute_dtype, 'image_shape': list(image_shape),
            'training_dtype': training_dtype}
    if test_set is not None:
      images, labels = test_set()
      dtypes = ['fp32', 'bf16'] if precision.cpu_supports_bf16() else ['fp32']
      info['test_accuracy'] = {dtype: measure_accuracy(path, images, labels, dtype)
                               for dtype in dtypes}
    write_serving_info(path, info)
  return export_atomically(export_dir, write)


def export_from_model_fn(export_dir, model_fn, params, image_shape, checkpoint_path,
                         training_dtype, image_bytes_default=False, test_set=None):
  """export_model of an Estimator model: model_fn's PREDICT graph, computing in
  params['dtype'] (float32 when bf16 came from the CPU rewrite, which exports leave out;
  training_dtype records it), with the averaged weights when params['ema_decay'] is set."""
  def build_outputs(images):
    return model_fn(images, None, tf.estimator.ModeKeys.PREDICT, params).predictions
  return export_model(export_dir, list(image_shape), build_outputs, checkpoint_path,
                      precision.dtype_name(params['dtype']), training_dtype,
                      image_bytes_default=image_bytes_default, test_set=test_set,
                      averaged=bool(params.get('ema_decay')))


def measure_accuracy(saved_model_dir, images, labels, dtype, batch_size=500):
  """Test accuracy of a SavedModel's `serving_default` computing in dtype ('fp32', or 'bf16'
  by the oneDNN rewrite), a batch at a time."""
  config = tf.compat.v1.ConfigProto()
  if dtype == 'bf16':
    precision.enable_bf16_rewrite(config)
  with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph,
                                                               config=config) as sess:
    meta_graph = tf.compat.v1.saved_model.loader.load(
        sess, [tf.compat.v1.saved_model.tag_constants.SERVING], saved_model_dir)
    signature = meta_graph.signature_def[DEFAULT_SIGNATURE]
    if IMAGES_INPUT not in signature.inputs:  # image_bytes_default: the floats are here
      signature = meta_graph.signature_def[alternative_signature(IMAGES_INPUT)]
    run = sess.make_callable(signature.outputs['classes'].name,
                             [signature.inputs[IMAGES_INPUT].name])
    correct = sum(int(np.sum(run(images[i:i + batch_size]) == labels[i:i + batch_size]))
                  for i in range(0, len(images), batch_size))
  return correct / float(len(images))


def version_number(name):
  """The version a directory name stands for, or None: ASCII digits within int64 only.

  `str.isdigit` is also true for '²' and other Unicode digits that int() refuses; a stray
  directory named so once stopped the server's version polling for good.
  """
  if not name or len(name) > 19 or not all('0' <= c <= '9' for c in name):
    return None
  number = int(name)
  return number if number <= INT64_MAX else None


def existing_versions(export_dir):
  """Returns the sorted integer version numbers of the directories under export_dir."""
  if not os.path.isdir(export_dir):
    return []
  versions = []
  for name in os.listdir(export_dir):
    number = version_number(name)
    if number is not None and os.path.isdir(os.path.join(export_dir, name)):
      versions.append(number)
  return sorted(versions)


def loadable_versions(base_path):
  """Integer version directories under base_path that hold a SavedModel, ascending."""
  return [v for v in existing_versions(base_path) if any(
      os.path.exists(os.path.join(base_path, str(v), f)) for f in SAVED_MODEL_FILES)]


def next_version(export_dir):
  """A version above every existing one: the Unix time, or the last version + 1 if larger."""
  versions = existing_versions(export_dir)
  return max([int(time.time())] + [v + 1 for v in versions])


def write_serving_info(saved_model_dir, info):
  """Writes what the signatures cannot say (see SERVING_INFO) into a SavedModel directory."""
  path = os.path.join(saved_model_dir, SERVING_INFO)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(info, f, indent=2, sort_keys=True)


def read_serving_info(saved_model_dir):
  """The export's SERVING_INFO record, or {} for exports made before it existed."""
  path = os.path.join(saved_model_dir, SERVING_INFO)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _staging_owner(name):
  """The pid in a staging directory's name, or None for names without one."""
  parts = name[len(STAGING_PREFIX):].split('-')
  return int(parts[0]) if parts and parts[0].isdigit() and parts[0].isascii() else None


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # alive, and another user's
  return True


def remove_stale_staging(export_dir):
  """Removes staging directories that a killed export left behind; returns their names.

  A staging directory belongs to the process whose pid its name carries, and is stale once that
  process is gone; `temp-*` directories are the Estimator's own staging, which exports of
  earlier versions of this project used.
  """
  if not os.path.isdir(export_dir):
    return []
  removed = []
  for name in sorted(os.listdir(export_dir)):
    if name.startswith(STAGING_PREFIX):
      owner = _staging_owner(name)
      stale = owner is None or (owner != os.getpid() and not _alive(owner))
    else:
      stale = name.startswith('temp-') and name[5:].isdigit()
    if stale:
      shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)
      removed.append(name)
  return removed


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
  remove_stale_staging(export_dir)
  staging = tempfile.mkdtemp(dir=export_dir, prefix='%s%d-' % (STAGING_PREFIX, os.getpid()))
  try:
    written = os.path.join(staging, 'model')
    write_fn(written)
    final = os.path.join(export_dir, str(next_version(export_dir)))
    os.rename(written, final)
    return final
  finally:
    shutil.rmtree(staging, ignore_errors=True)
