"""MNIST-style IDX files: the format, validation, locating or downloading them, loading them.

Nothing assumes MNIST beyond the IDX format: the image size comes from the file headers and
the class count from the training labels, so Fashion-MNIST, KMNIST or any other set of four
IDX files trains through the same code. Every file is validated (gzip stream, magic number,
dimensions, payload length, image/label count agreement, label range); each defect raises
`IdxFormatError` naming the file.
"""

import functools
import gzip
import os
import urllib.error
import zlib

import numpy as np

from official.data import downloads
from official.data import raw_data

TRAIN_IMAGES = 'train-images-idx3-ubyte.gz'
TRAIN_LABELS = 'train-labels-idx1-ubyte.gz'
TEST_IMAGES = 't10k-images-idx3-ubyte.gz'
TEST_LABELS = 't10k-labels-idx1-ubyte.gz'
FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
_HEADER_BYTES = {IMAGES_MAGIC: 16, LABELS_MAGIC: 8}

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


# What a bad --data_dir can raise; the mains turn these into one line and a non-zero exit.
DATA_ERRORS = (IdxFormatError, raw_data.SplitError, FileNotFoundError, NotADirectoryError)


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


def _find_file(data_dir, gz_name):
  """Returns the path of `gz_name` or its uncompressed twin in data_dir, else None."""
  for candidate in (gz_name, gz_name[:-len('.gz')]):
    path = os.path.join(data_dir, candidate)
    if os.path.isfile(path):
      return path
  return None


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
      downloads.download_file(source_url.rstrip('/') + '/' + name, dest, checksums.get(name),
                              timeout, error=IdxFormatError)
      paths[name] = dest
  except (urllib.error.URLError, OSError) as e:
    if created and not os.listdir(data_dir):
      os.rmdir(data_dir)  # leave no empty directory behind a failed first download
    raise _missing_files_error(data_dir, [n for n in missing if paths[n] is None],
                               'download from %s failed: %s' % (source_url, e)) from None
  return paths


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
    NotADirectoryError: data_dir is a file.
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
  return raw_data.RawData(train_images, train_labels, test_images, test_labels, num_classes)


def load_idx_dataset_cached(data_dir, num_classes=None, source_url=DEFAULT_SOURCE_URL):
  """`load_idx_dataset`, remembering the last two loads (keyed on the absolute directory, so
  every way of calling it finds the same entry).

  The arrays are shared: do not modify them.
  """
  return _load_cached(os.path.abspath(data_dir), num_classes, source_url)


@functools.lru_cache(maxsize=2)
def _load_cached(data_dir, num_classes, source_url):
  return load_idx_dataset(data_dir, num_classes, source_url)
