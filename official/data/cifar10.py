"""CIFAR-10, binary version: locating, downloading, validating and reading the record files.

The format the Model Garden's cifar10_main read: `cifar-10-batches-bin/` holds
`data_batch_1.bin` .. `data_batch_5.bin` (50,000 training images) and `test_batch.bin`
(10,000), each a run of 3,073-byte records: one label byte (0-9), then 3,072 pixel bytes, the
red, green and blue 32x32 planes one after another, rows first. Records are read with
`tf.data.FixedLengthRecordDataset` and kept in memory as uint8 [N, 32, 32, 3] (150 MB for the
whole set), so every model and every run loop trains on them as they do on IDX files
(official/data/raw_data.py).

Every file is checked before it is read (present, a whole number of records, not empty) and
its labels after (0-9); each defect raises `RecordFormatError` naming the file. Missing files
are downloaded when online: the official archive, checked against its published md5 and
unpacked into a hidden directory that is renamed into place only when whole.
"""

import os
import shutil
import tarfile
import tempfile
import urllib.error

import numpy as np
import tensorflow as tf

from official.data import downloads
from official.data import raw_data

HEIGHT = 32
WIDTH = 32
NUM_CHANNELS = 3
NUM_CLASSES = 10
LABEL_BYTES = 1
IMAGE_BYTES = HEIGHT * WIDTH * NUM_CHANNELS
RECORD_BYTES = LABEL_BYTES + IMAGE_BYTES  # 3,073
NUM_TRAIN_FILES = 5
TRAIN_FILES = tuple('data_batch_%d.bin' % i for i in range(1, NUM_TRAIN_FILES + 1))
TEST_FILES = ('test_batch.bin',)
BATCHES_DIR = 'cifar-10-batches-bin'
NUM_IMAGES = {'train': 50000, 'test': 10000}

# The archive the dataset's authors publish, and its md5 from their page.
DEFAULT_SOURCE_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
# Where the mains download from (read when they load; tests point it at a local file).
SOURCE_URL = DEFAULT_SOURCE_URL
ARCHIVE_MD5 = 'c32a1d4ab5d03f1284b67883e8d87530'
STAGING_PREFIX = '.cifar10-unpack-'


class RecordFormatError(ValueError):
  """A CIFAR-10 file is not whole records of valid labels; the message names the file."""


def batches_dir(data_dir):
  """The directory holding the .bin files: data_dir itself when they are there (the Model
  Garden's --data_dir), else data_dir/cifar-10-batches-bin (where the archive unpacks)."""
  if os.path.isfile(os.path.join(data_dir, TEST_FILES[0])):
    return data_dir
  return os.path.join(data_dir, BATCHES_DIR)


def missing_files_error(data_dir, missing, reason):
  return FileNotFoundError(
      'CIFAR-10 data not found in %s: missing %s (%s). Fix: unpack cifar-10-binary.tar.gz '
      '(%s) there and pass the directory as --data_dir, or run with --use_synthetic_data.' %
      (os.path.abspath(data_dir), ', '.join(missing), reason, DEFAULT_SOURCE_URL))


def _safe_members(archive, name):
  """The archive's regular files under cifar-10-batches-bin/; refuses links, absolute paths
  and '..' (a checksum-matching archive has none, but the check costs nothing)."""
  members = []
  for member in archive.getmembers():
    parts = member.name.split('/')
    if member.isdir() and parts[0] == BATCHES_DIR and '..' not in parts:
      continue
    if not member.isfile() or parts[0] != BATCHES_DIR or '..' in parts or len(parts) != 2:
      raise RecordFormatError('%s: unexpected archive member %r' % (name, member.name))
    members.append(member)
  return members


def _unpack(archive_path, data_dir, name):
  """Unpacks the archive into a hidden directory in data_dir, then renames its
  cifar-10-batches-bin into place: a reader never sees half the files."""
  staging = tempfile.mkdtemp(dir=data_dir, prefix=STAGING_PREFIX)
  try:
    with tarfile.open(archive_path, 'r:gz') as archive:
      for member in _safe_members(archive, name):
        with archive.extractfile(member) as source, open(
            os.path.join(staging, os.path.basename(member.name)), 'wb') as dest:
          shutil.copyfileobj(source, dest)
    os.rename(staging, os.path.join(data_dir, BATCHES_DIR))
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def download(data_dir, source_url=DEFAULT_SOURCE_URL, md5=ARCHIVE_MD5, timeout=20):
  """Downloads the archive into data_dir, checks its md5 and unpacks it atomically."""
  name = os.path.basename(source_url)
  os.makedirs(data_dir, exist_ok=True)
  archive_path = os.path.join(data_dir, name)
  downloads.download_file(source_url, archive_path, md5, timeout, error=RecordFormatError)
  try:
    _unpack(archive_path, data_dir, name)
  except (tarfile.TarError, EOFError, OSError) as e:
    raise RecordFormatError('%s: cannot unpack (%s)' % (name, e)) from None
  finally:
    os.remove(archive_path)


def maybe_download(data_dir, source_url=DEFAULT_SOURCE_URL, md5=ARCHIVE_MD5, timeout=20):
  """The directory of the six .bin files, downloading the archive when none is there.

  Raises:
    FileNotFoundError: files missing and not downloadable (offline, say); one line naming
      the directory, the files and the fix.
  """
  if os.path.isfile(data_dir):
    raise NotADirectoryError('--data_dir %s is a file; pass the directory holding %s' %
                             (data_dir, BATCHES_DIR))
  directory = batches_dir(data_dir)
  missing = [n for n in TRAIN_FILES + TEST_FILES
             if not os.path.isfile(os.path.join(directory, n))]
  if not missing:
    return directory
  if len(missing) < len(TRAIN_FILES + TEST_FILES) or not source_url:
    reason = 'the other files are there' if source_url else 'downloading is off'
    raise missing_files_error(directory, missing, reason)
  created = not os.path.isdir(data_dir)
  try:
    download(data_dir, source_url, md5, timeout)
  except (urllib.error.URLError, OSError) as e:
    if created and os.path.isdir(data_dir) and not os.listdir(data_dir):
      os.rmdir(data_dir)  # leave no empty directory behind a failed first download
    raise missing_files_error(directory, missing, 'download from %s failed: %s' %
                               (source_url, e)) from None
  return os.path.join(data_dir, BATCHES_DIR)


def check_file(path):
  """The number of records in path; RecordFormatError when its size is not a whole number of
  RECORD_BYTES records, or zero."""
  name = os.path.basename(path)
  size = os.path.getsize(path)
  if size == 0:
    raise RecordFormatError('%s: file is empty' % name)
  count, rest = divmod(size, RECORD_BYTES)
  if rest:
    raise RecordFormatError(
        '%s: %d bytes is not a whole number of %d-byte records (%d records and %d bytes '
        'over); the file is truncated or not CIFAR-10 binary' %
        (name, size, RECORD_BYTES, count, rest))
  return count


def decode_records(records):
  """Raw records (a string, or [N] strings) -> (uint8 image(s) [..., 32, 32, 3], uint8
  label(s) [...]): the label byte, then the planes transposed from [3, 32, 32] to height,
  width, channels."""
  values = tf.io.decode_raw(records, tf.uint8)
  batch_shape = tf.shape(values)[:-1]
  planes = tf.reshape(values[..., LABEL_BYTES:],
                      tf.concat([batch_shape, [NUM_CHANNELS, HEIGHT, WIDTH]], 0))
  rank = records.shape.ndims
  order = list(range(rank)) + [rank + 1, rank + 2, rank]
  return tf.transpose(planes, order), values[..., 0]


def read_files(paths, block=10000):
  """Every record of the files, in order, read with FixedLengthRecordDataset.

  Returns:
    (uint8 images [N, 32, 32, 3], uint8 labels [N]).

  Raises:
    RecordFormatError: a file is not whole records, or a label is outside 0-9.
  """
  counts = [check_file(path) for path in paths]
  with tf.Graph().as_default():
    dataset = tf.data.FixedLengthRecordDataset(list(paths), RECORD_BYTES)
    dataset = dataset.batch(block).map(decode_records)
    next_block = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    images, labels = [], []
    with tf.compat.v1.Session() as sess:
      for _ in range(-(-sum(counts) // block)):
        block_images, block_labels = sess.run(next_block)
        images.append(block_images)
        labels.append(block_labels)
  labels = np.concatenate(labels)
  _check_labels(labels, paths, counts)
  return np.concatenate(images), labels


def _check_labels(labels, paths, counts):
  bad = np.flatnonzero(labels >= NUM_CLASSES)
  if not len(bad):
    return
  index = int(bad[0])
  for path, count in zip(paths, counts):
    if index < count:
      raise RecordFormatError('%s: label %d in record %d is outside the range 0..%d' %
                              (os.path.basename(path), labels[bad[0]], index,
                               NUM_CLASSES - 1))
    index -= count


def load(data_dir, source_url=DEFAULT_SOURCE_URL):
  """The training and test records of data_dir as RawData (downloaded when missing and
  online)."""
  directory = maybe_download(data_dir, source_url)
  train_images, train_labels = read_files([os.path.join(directory, n) for n in TRAIN_FILES])
  test_images, test_labels = read_files([os.path.join(directory, n) for n in TEST_FILES])
  return raw_data.RawData(train_images, train_labels, test_images, test_labels, NUM_CLASSES)


def synthetic(seed=0):
  """Random CIFAR-shaped data (32x32x3, 10 classes) for --use_synthetic_data."""
  return raw_data.synthetic_raw_data(seed=seed, height=HEIGHT, width=WIDTH,
                                       num_classes=NUM_CLASSES, channels=NUM_CHANNELS)
