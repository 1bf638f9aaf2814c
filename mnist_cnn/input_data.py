"""The report's `input_data`: `read_data_sets` and the `DataSet` batches its AlexNet fed.

A port of `tensorflow.examples.tutorials.mnist.input_data` (removed from TensorFlow long ago),
keeping its API: `read_data_sets(data_dir, one_hot=False, validation_size=5000)` returns
`.train`, `.validation` and `.test` sets with `.images`, `.labels`, `.num_examples`,
`.epochs_completed` and `next_batch`. The report's call passed `one_hot=True`; the default
stays the tutorial's `False` (int64 class indices).

The files are read and validated by official/data/idx.py, every dataset's in-memory form is
official/data/raw_data.py, and Estimators read through official/data/array_input.py. The names
this module had before those moved (`load_idx_dataset`, `IdxFormatError`, `RawData`,
`synthetic_raw_data`, `load_data`, `input_fn`...) are kept here as they were.
"""

import collections

import numpy as np
import tensorflow as tf

from official.data import array_input
from official.data import idx
from official.data import raw_data

# The names of the data layer this module held before it was split (official/data/).
TRAIN_IMAGES = idx.TRAIN_IMAGES
TRAIN_LABELS = idx.TRAIN_LABELS
TEST_IMAGES = idx.TEST_IMAGES
TEST_LABELS = idx.TEST_LABELS
FILE_NAMES = idx.FILE_NAMES
IMAGES_MAGIC = idx.IMAGES_MAGIC
LABELS_MAGIC = idx.LABELS_MAGIC
DEFAULT_SOURCE_URL = idx.DEFAULT_SOURCE_URL
IdxFormatError = idx.IdxFormatError
SplitError = raw_data.SplitError
DATA_ERRORS = idx.DATA_ERRORS
RawData = raw_data.RawData
parse_idx = idx.parse_idx
read_idx_file = idx.read_idx_file
maybe_download = idx.maybe_download
load_idx_dataset = idx.load_idx_dataset
load_idx_dataset_cached = idx.load_idx_dataset_cached
synthetic_raw_data = raw_data.synthetic_raw_data
split_sizes = raw_data.split_sizes
raw_input_fn = array_input.raw_input_fn

MNIST_HEIGHT = raw_data.MNIST_HEIGHT
MNIST_WIDTH = raw_data.MNIST_WIDTH
NUM_CHANNELS = raw_data.GREY_CHANNELS
MNIST_NUM_CLASSES = raw_data.MNIST_NUM_CLASSES
DEFAULT_VALIDATION_SIZE = 5000


def load_data(data_dir, use_synthetic_data=False, seed=0):
  """What a run trains on: the IDX files in data_dir, read and validated once per process, or
  synthetic_raw_data(seed=seed)."""
  if use_synthetic_data:
    return raw_data.synthetic_raw_data(seed=seed)
  return idx.load_idx_dataset_cached(data_dir)


def input_fn(is_training, data_dir, batch_size, num_epochs=1, dtype=tf.float32, seed=None,
             validation_size=0, shift_pixels=0, datasets_num_private_threads=None,
             drop_remainder=False):
  """Estimator input function over the IDX files in data_dir (array_input.raw_input_fn)."""
  return array_input.raw_input_fn(
      idx.load_idx_dataset_cached(data_dir), is_training, batch_size, num_epochs, dtype=dtype,
      seed=seed, validation_size=validation_size, shift_pixels=shift_pixels,
      datasets_num_private_threads=datasets_num_private_threads,
      drop_remainder=drop_remainder)


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


def _make_dataset(images, labels, one_hot, num_classes, seed, image_shape):
  return DataSet(raw_data.to_float_images(images),
                 dense_to_one_hot(labels, num_classes) if one_hot else labels.astype(np.int64),
                 seed=seed, image_shape=image_shape, num_classes=num_classes)


def read_data_sets(data_dir, one_hot=False, validation_size=DEFAULT_VALIDATION_SIZE,
                   seed=None, num_classes=None, source_url=idx.DEFAULT_SOURCE_URL):
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
  return data_sets_from_raw(idx.load_idx_dataset_cached(data_dir, num_classes, source_url),
                            one_hot, validation_size, seed)


def data_sets_from_raw(raw, one_hot=False, validation_size=DEFAULT_VALIDATION_SIZE, seed=None):
  """RawData -> train/validation/test `DataSet`s (the first validation_size training examples
  are the validation set)."""
  raw_data.split_sizes(raw.num_train, validation_size)

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
  raw = raw_data.synthetic_raw_data(num_train, num_test, seed, height, width, num_classes)
  return data_sets_from_raw(raw, one_hot, validation_size=0, seed=seed)
