"""MNIST-style IDX data: reading, validation, splits, batching and tf.data input.

A port of the report's `tensorflow.examples.tutorials.mnist.input_data` (removed from
TensorFlow long ago), keeping its API: `read_data_sets(data_dir, one_hot=True,
validation_size=5000)` returns `.train`, `.validation` and `.test` sets with `.images`,
`.labels`, `.num_examples`, `.epochs_completed` and `next_batch`.

All dataset facts live here: file names, the IDX layout, split sizes, image shape and class
count. Nothing assumes MNIST beyond the IDX format: the image size comes from the file
headers and the class count from the training labels, so Fashion-MNIST, KMNIST or any other
set of four IDX files trains through the same code.

Every file is validated (gzip stream, magic number, dimensions, payload length, image/label
count agreement, label range); each defect raises `IdxFormatError` naming the file.
"""

import collections
import functools
import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib

import numpy as np
import tensorflow as tf

from official.utils import record_pipeline

TRAIN_IMAGES = 'train-images-idx3-ubyte.gz'
TRAIN_LABELS = 'train-labels-idx1-ubyte.gz'
TEST_IMAGES = 't10k-images-idx3-ubyte.gz'
TEST_LABELS = 't10k-labels-idx1-ubyte.gz'
FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
_HEADER_BYTES = {IMAGES_MAGIC: 16, LABELS_MAGIC: 8}

# MNIST's own facts, used only for defaults (synthetic data, download, docs).
MNIST_HEIGHT = 28
MNIST_WIDTH = 28
NUM_CHANNELS = 1
MNIST_NUM_CLASSES = 10
DEFAULT_VALIDATION_SIZE = 5000

# The mirror TensorFlow's own MNIST tutorials and TFDS download from, and the published md5
# of each gzip file there.
DEFAULT_SOURCE_URL = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
MNIST_MD5 = {
    TRAIN_IMAGES: 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
    TRAIN_LABELS: 'd53e105ee54ea40749a09fcbcd1e9432',
    TEST_IMAGES: '9fb629c4189551a2d022fa330f9573f3',
    TEST_LABELS: 'ec29112dd5afa0611ce80d1b7f02629c',
}


class IdxFormatError(ValueError):
  """A data file is not a valid IDX file; the message names the file and the defect."""


class SplitError(ValueError):
  """A validation split the training data cannot give."""


# What a bad --data_dir can raise; the mains turn these into one line and a non-zero exit.
DATA_ERRORS = (IdxFormatError, SplitError, FileNotFoundError, NotADirectoryError)


# --------------------------------------------------------------------------------------------
# IDX parsing


def _read_maybe_gzip(path):
  """Returns the raw bytes of `path`, gunzipping it when it starts with the gzip magic."""
  name = os.path.basename(path)
  with open(path, 'rb') as f:
    data = f.read()
  if data[:2] != b'\x1f\x8b':
    return data
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise IdxFormatError('%s: corrupt gzip stream (%s)' % (name, e)) from None


def parse_idx(data, name, expected_magic):
  """Parses IDX bytes into a uint8 array of the shape the header gives.

  Args:
    data: the uncompressed file contents.
    name: file name used in error messages.
    expected_magic: IMAGES_MAGIC (3 dimensions) or LABELS_MAGIC (1 dimension).

  Returns:
    uint8 array of shape [count, rows, cols] for images, [count] for labels.

  Raises:
    IdxFormatError: wrong magic number, short header, zero-sized dimensions, or a payload
      whose length does not match the header.
  """
  kind = 'images' if expected_magic == IMAGES_MAGIC else 'labels'
  header_bytes = _HEADER_BYTES[expected_magic]
  if len(data) < 4:
    raise IdxFormatError('%s: file is %d bytes long, too short for an IDX header' %
                         (name, len(data)))
  magic = int.from_bytes(data[:4], 'big')
  if magic != expected_magic:
    raise IdxFormatError(
        '%s: bad magic number %d, expected %d for an IDX %s file' %
        (name, magic, expected_magic, kind))
  if len(data) < header_bytes:
    raise IdxFormatError('%s: header is truncated (%d of %d bytes)' %
                         (name, len(data), header_bytes))
  dims = np.frombuffer(data, dtype='>u4', count=header_bytes // 4 - 1, offset=4)
  dims = tuple(int(d) for d in dims)
  if kind == 'images' and (dims[1] == 0 or dims[2] == 0):
    raise IdxFormatError('%s: header gives an empty image size %dx%d' % (name, dims[1], dims[2]))
  payload = len(data) - header_bytes
  expected = int(np.prod(dims))
  if payload != expected:
    if kind == 'images':
      what = '%d images of %dx%d' % dims
      unit = 'bytes of pixels'
    else:
      what = '%d labels' % dims[0]
      unit = 'label bytes'
    problem = 'truncated' if payload < expected else 'has trailing data'
    raise IdxFormatError('%s: header says %s but the file holds %d %s (expected %d); '
                         'the file is %s' % (name, what, payload, unit, expected, problem))
  return np.frombuffer(data, dtype=np.uint8, offset=header_bytes).reshape(dims)


def read_idx_file(path, expected_magic):
  """Reads and validates one IDX file, gzip-compressed or plain. See `parse_idx`."""
  return parse_idx(_read_maybe_gzip(path), os.path.basename(path), expected_magic)


# --------------------------------------------------------------------------------------------
# Locating and downloading the files


def _find_file(data_dir, gz_name):
  """Returns the path of `gz_name` or its uncompressed twin in data_dir, else None."""
  for candidate in (gz_name, gz_name[:-len('.gz')]):
    path = os.path.join(data_dir, candidate)
    if os.path.isfile(path):
      return path
  return None


def _md5(path):
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def download_file(url, dest, md5, timeout, error=None):
  """Downloads url to dest through a temporary file, checking md5 when given; a mismatch raises
  error (IdxFormatError by default) naming dest and leaves nothing behind. The CIFAR-10
  archive downloads through it too."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix='.download-')
  try:
    with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=timeout) as response:
      shutil.copyfileobj(response, out)
    if md5 and _md5(tmp) != md5:
      raise (error or IdxFormatError)(
          '%s: downloaded from %s but its md5 %s is not the expected %s' %
          (os.path.basename(dest), url, _md5(tmp), md5))
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _missing_files_error(data_dir, missing, reason):
  return FileNotFoundError(
      'MNIST data not found in %s: missing %s (%s). Fix: copy the four IDX files (gzip or '
      'plain) into that directory and pass it as --data_dir, or run with '
      '--use_synthetic_data.' % (os.path.abspath(data_dir), ', '.join(missing), reason))


def maybe_download(data_dir, source_url=DEFAULT_SOURCE_URL, checksums=None, timeout=20):
  """Makes sure the four IDX files are in data_dir, downloading missing ones.

  Files already present are used as they are. Missing ones are fetched from `source_url`
  (the mirror TensorFlow's tutorials and TFDS use), verified against `checksums` (the
  published MNIST md5 sums by default) and moved into place only when whole.

  Returns:
    dict: canonical file name -> path.

  Raises:
    FileNotFoundError: files are missing and cannot be downloaded (offline, say); the message
      names the directory, the files and the two fixes.
  """
  checksums = MNIST_MD5 if checksums is None else checksums
  paths = {name: _find_file(data_dir, name) for name in FILE_NAMES}
  missing = [name for name, path in paths.items() if path is None]
  if not missing:
    return paths
  if not source_url:
    raise _missing_files_error(data_dir, missing, 'downloading is off')
  created = not os.path.isdir(data_dir)
  try:
    os.makedirs(data_dir, exist_ok=True)
    for name in missing:
      dest = os.path.join(data_dir, name)
      download_file(source_url.rstrip('/') + '/' + name, dest, checksums.get(name), timeout)
      paths[name] = dest
  except (urllib.error.URLError, OSError) as e:
    if created and not os.listdir(data_dir):
      os.rmdir(data_dir)  # leave no empty directory behind a failed first download
    raise _missing_files_error(data_dir, [n for n in missing if paths[n] is None],
                               'download from %s failed: %s' % (source_url, e)) from None
  return paths


# --------------------------------------------------------------------------------------------
# Loading and splitting


class RawData(collections.namedtuple(
    'RawData', ['train_images', 'train_labels', 'test_images', 'test_labels', 'num_classes'])):
  """The four arrays of a dataset (uint8 images [N, rows, cols] as IDX files hold them, or
  [N, rows, cols, channels] from the other sources; labels [N]) and what a model needs to know
  of them: the image shape, the class count and the split sizes."""

  @property
  def image_shape(self):
    shape = tuple(int(d) for d in self.train_images.shape[1:])
    return shape if len(shape) == 3 else shape + (NUM_CHANNELS,)

  @property
  def num_train(self):
    return len(self.train_images)

  @property
  def num_test(self):
    return len(self.test_images)

  def test_set(self):
    """(float32 images [N, rows, cols, channels] in [0, 1], int labels [N]): the test split as
    an export is checked on."""
    images = _to_float_images(self.test_images).reshape((-1,) + tuple(self.image_shape))
    return images, self.test_labels.astype(np.int64)

  def describe(self):
    """The facts a run records in flags.json."""
    return {'image_shape': list(self.image_shape), 'num_classes': self.num_classes,
            'train_examples': self.num_train, 'test_examples': self.num_test}


def _check_labels(labels, images, labels_name, images_name, num_classes, classes_source):
  if len(labels) != len(images):
    raise IdxFormatError('%s: holds %d labels but %s holds %d images' %
                         (labels_name, len(labels), images_name, len(images)))
  if len(labels) and int(labels.max()) >= num_classes:
    index = int(np.argmax(labels >= num_classes))
    raise IdxFormatError('%s: label %d at index %d is outside the range 0..%d (%s)' %
                         (labels_name, labels[index], index, num_classes - 1, classes_source))


def load_idx_dataset(data_dir, num_classes=None, source_url=DEFAULT_SOURCE_URL):
  """Loads and validates the four IDX files as uint8 arrays.

  Args:
    data_dir: directory holding the files (downloaded there when missing and online).
    num_classes: class count; None takes it from the training labels (max + 1).
    source_url: where to download missing files from; None or '' never downloads.

  Returns:
    RawData with images [N, rows, cols] uint8 and labels [N] uint8.

  Raises:
    FileNotFoundError: files missing and not downloadable.
    IdxFormatError: any file is malformed, the counts disagree, the train and test image
      sizes differ, or a label is out of range.
  """
  if os.path.isfile(data_dir):
    raise NotADirectoryError('--data_dir %s is a file; pass the directory holding the IDX files'
                             % data_dir)
  paths = maybe_download(data_dir, source_url=source_url)
  train_images = read_idx_file(paths[TRAIN_IMAGES], IMAGES_MAGIC)
  train_labels = read_idx_file(paths[TRAIN_LABELS], LABELS_MAGIC)
  test_images = read_idx_file(paths[TEST_IMAGES], IMAGES_MAGIC)
  test_labels = read_idx_file(paths[TEST_LABELS], LABELS_MAGIC)
  names = {k: os.path.basename(v) for k, v in paths.items()}
  if test_images.shape[1:] != train_images.shape[1:]:
    raise IdxFormatError('%s: images are %dx%d but %s holds %dx%d images' %
                         ((names[TEST_IMAGES],) + test_images.shape[1:] +
                          (names[TRAIN_IMAGES],) + train_images.shape[1:]))
  if len(train_labels) == 0:
    raise IdxFormatError('%s: holds no labels' % names[TRAIN_LABELS])
  if num_classes is None:
    num_classes = int(train_labels.max()) + 1
    source = 'the class count the training labels give'
  else:
    source = 'num_classes=%d' % num_classes
  _check_labels(train_labels, train_images, names[TRAIN_LABELS], names[TRAIN_IMAGES],
                num_classes, source)
  _check_labels(test_labels, test_images, names[TEST_LABELS], names[TEST_IMAGES],
                num_classes, source)
  return RawData(train_images, train_labels, test_images, test_labels, num_classes)


def load_idx_dataset_cached(data_dir, num_classes=None, source_url=DEFAULT_SOURCE_URL):
  """`load_idx_dataset`, remembering the last two loads (keyed on the absolute directory, so
  every way of calling it finds the same entry).

  The arrays are shared: do not modify them.
  """
  return _load_cached(os.path.abspath(data_dir), num_classes, source_url)


@functools.lru_cache(maxsize=2)
def _load_cached(data_dir, num_classes, source_url):
  return load_idx_dataset(data_dir, num_classes, source_url)


def synthetic_raw_data(num_train=1024, num_test=256, seed=0, height=MNIST_HEIGHT,
                       width=MNIST_WIDTH, num_classes=MNIST_NUM_CLASSES, channels=None):
  """Random uint8 images with labels cycling over every class: the one synthetic source that
  every model trains on with --use_synthetic_data (timing and smoke runs without data).
  Images are [N, height, width] as IDX files hold them, or [N, height, width, channels]."""
  rng = np.random.RandomState(seed)
  shape = (height, width) if channels is None else (height, width, channels)

  def make(count):
    images = rng.randint(0, 256, size=(count,) + shape).astype(np.uint8)
    return images, (np.arange(count) % num_classes).astype(np.uint8)

  return RawData(*make(num_train), *make(num_test), num_classes)


def load_data(data_dir, use_synthetic_data=False, seed=0):
  """What a run trains on: the IDX files in data_dir, read and validated once per process, or
  synthetic_raw_data(seed=seed)."""
  if use_synthetic_data:
    return synthetic_raw_data(seed=seed)
  return load_idx_dataset_cached(data_dir)


def dense_to_one_hot(labels, num_classes):
  """Converts class indices [N] to one-hot float32 rows [N, num_classes]."""
  one_hot = np.zeros((len(labels), num_classes), dtype=np.float32)
  one_hot[np.arange(len(labels)), labels] = 1.0
  return one_hot


class DataSet(object):
  """Images and labels in memory with epoch-tracking, seedable mini-batches.

  Attributes:
    images: float32 [N, rows * cols] in [0, 1].
    labels: float32 one-hot [N, num_classes], or int64 [N].
  """

  def __init__(self, images, labels, seed=None, image_shape=None, num_classes=None):
    if len(images) != len(labels):
      raise ValueError('images and labels differ in count: %d vs %d' %
                       (len(images), len(labels)))
    self._images = images
    self._labels = labels
    self._num_examples = len(images)
    self._epochs_completed = 0
    self._index_in_epoch = 0
    self._rng = np.random.RandomState(seed)
    self._order = np.arange(self._num_examples)
    self._shuffled = False
    self.image_shape = image_shape
    self.num_classes = num_classes

  @property
  def images(self):
    return self._images

  @property
  def labels(self):
    return self._labels

  @property
  def num_examples(self):
    return self._num_examples

  @property
  def epochs_completed(self):
    return self._epochs_completed

  def _new_order(self, shuffle):
    self._order = self._rng.permutation(self._num_examples) if shuffle else np.arange(
        self._num_examples)

  def restart(self, seed):
    """Starts a fresh epoch shuffled by `seed`, dropping any partial one.

    The AlexNet loop calls this with seed + epoch at each epoch, so a run resumed from a
    checkpoint sees the same batches as one that was never stopped.
    """
    self._rng = np.random.RandomState(seed)
    self._index_in_epoch = 0
    self._shuffled = False

  def next_batch(self, batch_size, shuffle=True):
    """Returns the next `batch_size` (images, labels).

    Each epoch visits every example exactly once; a batch that crosses an epoch boundary
    takes the rest of the old epoch and the start of the new one, as the original did.

    Raises:
      ValueError: batch_size is not in 1..num_examples.
    """
    if not 0 < batch_size <= self._num_examples:
      raise ValueError('batch_size must be in 1..%d (the set size), got %d' %
                       (self._num_examples, batch_size))
    if self._index_in_epoch == 0 and not self._shuffled:
      self._new_order(shuffle)
      self._shuffled = True
    start = self._index_in_epoch
    end = start + batch_size
    if end <= self._num_examples:
      index = self._order[start:end]
      self._index_in_epoch = end
    else:
      rest = self._order[start:]
      self._epochs_completed += 1
      self._new_order(shuffle)
      self._index_in_epoch = batch_size - len(rest)
      index = np.concatenate([rest, self._order[:self._index_in_epoch]])
    if self._index_in_epoch == self._num_examples:
      self._epochs_completed += 1
      self._index_in_epoch = 0
      self._shuffled = False
    return self._images[index], self._labels[index]


class DataSets(collections.namedtuple('DataSets', ['train', 'validation', 'test'])):
  """The three splits, plus the facts models need (image shape and class count)."""

  @property
  def image_shape(self):
    return self.train.image_shape

  @property
  def num_classes(self):
    return self.train.num_classes


def _to_float_images(images):
  """uint8 [N, rows, cols] -> float32 [N, rows * cols] in [0, 1], in one vectorised pass."""
  flat = images.reshape(len(images), int(np.prod(images.shape[1:])))
  return np.multiply(flat, np.float32(1.0 / 255.0), dtype=np.float32)


def _make_dataset(images, labels, one_hot, num_classes, seed, image_shape):
  return DataSet(_to_float_images(images),
                 dense_to_one_hot(labels, num_classes) if one_hot else labels.astype(np.int64),
                 seed=seed, image_shape=image_shape, num_classes=num_classes)


def split_sizes(num_train_file_examples, validation_size):
  """Returns (train, validation) counts; raises SplitError when validation_size is off."""
  if not 0 <= validation_size < num_train_file_examples:
    raise SplitError('validation_size must be in 0..%d (the training file holds %d examples), '
                     'got %d' % (num_train_file_examples - 1, num_train_file_examples,
                                 validation_size))
  return num_train_file_examples - validation_size, validation_size


def read_data_sets(data_dir, one_hot=False, validation_size=DEFAULT_VALIDATION_SIZE,
                   seed=None, num_classes=None, source_url=DEFAULT_SOURCE_URL):
  """Reads the four IDX files into train/validation/test `DataSet`s.

  The first `validation_size` training examples form the validation set, as in the
  original. With MNIST and the defaults: 55,000 / 5,000 / 10,000.

  Args:
    data_dir: directory of the IDX files; missing files are downloaded when online.
    one_hot: labels as one-hot float32 rows instead of int64 indices.
    validation_size: examples held out from the training file.
    seed: seed for the training set's shuffle (None: unseeded).
    num_classes: None infers it from the training labels.
    source_url: download mirror; None never downloads.

  Raises:
    FileNotFoundError, IdxFormatError, ValueError: see `load_idx_dataset` and `split_sizes`.
  """
  return data_sets_from_raw(load_idx_dataset_cached(data_dir, num_classes, source_url),
                            one_hot, validation_size, seed)


def data_sets_from_raw(raw, one_hot=False, validation_size=DEFAULT_VALIDATION_SIZE, seed=None):
  """RawData -> train/validation/test `DataSet`s (the first validation_size training examples
  are the validation set)."""
  split_sizes(raw.num_train, validation_size)

  def make(images, labels, split_seed):
    return _make_dataset(images, labels, one_hot, raw.num_classes, split_seed, raw.image_shape)

  return DataSets(
      train=make(raw.train_images[validation_size:], raw.train_labels[validation_size:], seed),
      validation=make(raw.train_images[:validation_size], raw.train_labels[:validation_size],
                      None),
      test=make(raw.test_images, raw.test_labels, None))


def synthetic_data_sets(num_train=1024, num_test=256, one_hot=False, seed=0,
                        height=MNIST_HEIGHT, width=MNIST_WIDTH, num_classes=MNIST_NUM_CLASSES):
  """`synthetic_raw_data` as DataSets (no validation split)."""
  raw = synthetic_raw_data(num_train, num_test, seed, height, width, num_classes)
  return data_sets_from_raw(raw, one_hot, validation_size=0, seed=seed)


# --------------------------------------------------------------------------------------------
# tf.data input functions for Estimators


def _chunks(images, labels, chunk_size=2048):
  """Yields the arrays in chunks, so tf.data pulls a few large blocks instead of rows."""
  def generate():
    for start in range(0, len(images), chunk_size):
      yield images[start:start + chunk_size], labels[start:start + chunk_size]
  return generate


def augment(image, shift_pixels=0, flip=False):
  """Training augmentation of one float image [rows, cols, channels]: a random shift of up to
  shift_pixels in each direction (zero padding, then a random crop of the original size: the
  CIFAR recipe's "pad 4, random crop" with 4) and, with flip, a random left-right mirror (right
  for photographs, wrong for digits and letters)."""
  rows, cols, channels = image.shape
  if shift_pixels:
    image = tf.image.pad_to_bounding_box(image, shift_pixels, shift_pixels,
                                         rows + 2 * shift_pixels, cols + 2 * shift_pixels)
    image = tf.image.random_crop(image, [rows, cols, channels])
  if flip:
    image = tf.image.random_flip_left_right(image)
  return image


def parse_record(record, is_training, dtype=tf.float32, shift_pixels=0, flip=False):
  """(uint8 image [rows, cols] or [rows, cols, channels], label) -> (image [rows, cols,
  channels] in [0, 1] as dtype, int32), augmented in training (see `augment`)."""
  image, label = record
  image = tf.cast(image, tf.float32) * (1.0 / 255.0)
  if image.shape.ndims == 2:
    image = tf.expand_dims(image, -1)
  if is_training:
    image = augment(image, shift_pixels, flip)
  return tf.cast(image, dtype), tf.cast(label, tf.int32)


def arrays_input_fn(images, labels, is_training, batch_size, num_epochs=1, dtype=tf.float32,
                    seed=None, shift_pixels=0, datasets_num_private_threads=None,
                    drop_remainder=False, flip=False):
  """Builds the tf.data pipeline over in-memory uint8 arrays.

  The arrays enter the graph through a generator (not as constants, which would be copied
  into every checkpoint's meta graph) and are cached; `process_record_dataset` then shuffles
  before repeat, parses and batches with `map_and_batch`, and prefetches.

  Returns:
    tf.data.Dataset of (images [B, rows, cols, channels] dtype, labels [B] int32).
  """
  dataset = tf.data.Dataset.from_generator(
      _chunks(images, labels),
      output_signature=(tf.TensorSpec((None,) + images.shape[1:], tf.uint8),
                        tf.TensorSpec([None], labels.dtype)))
  dataset = dataset.unbatch().cache()
  return record_pipeline.process_record_dataset(
      dataset, is_training, batch_size, shuffle_buffer=len(images),
      parse_record_fn=functools.partial(parse_record, shift_pixels=shift_pixels, flip=flip),
      num_epochs=num_epochs, dtype=dtype,
      datasets_num_private_threads=datasets_num_private_threads,
      drop_remainder=drop_remainder, seed=seed)


def input_fn(is_training, data_dir, batch_size, num_epochs=1, dtype=tf.float32, seed=None,
             validation_size=0, shift_pixels=0, datasets_num_private_threads=None,
             drop_remainder=False):
  """Estimator input function over the IDX files in data_dir (see raw_input_fn)."""
  return raw_input_fn(load_idx_dataset_cached(data_dir), is_training, batch_size, num_epochs,
                      dtype=dtype, seed=seed, validation_size=validation_size,
                      shift_pixels=shift_pixels,
                      datasets_num_private_threads=datasets_num_private_threads,
                      drop_remainder=drop_remainder)


def raw_input_fn(raw, is_training, batch_size, num_epochs=1, dtype=tf.float32, seed=None,
                 validation_size=0, shift_pixels=0, datasets_num_private_threads=None,
                 drop_remainder=False, flip=False):
  """Estimator input function over RawData already in memory.

  Training reads the training arrays less their first `validation_size` examples; evaluation
  reads the test arrays, in order.

  Returns:
    tf.data.Dataset of (images [B, rows, cols, channels] dtype, labels [B] int32).
  """
  if is_training:
    split_sizes(raw.num_train, validation_size)
    images, labels = raw.train_images[validation_size:], raw.train_labels[validation_size:]
  else:
    images, labels = raw.test_images, raw.test_labels
  return arrays_input_fn(images, labels, is_training, batch_size, num_epochs, dtype=dtype,
                         seed=seed, shift_pixels=shift_pixels,
                         datasets_num_private_threads=datasets_num_private_threads,
                         drop_remainder=drop_remainder, flip=flip)
