"""RawData: the one in-memory form of every dataset, and the one synthetic source.

Every source (IDX files, CIFAR-10 records, tensorflow-datasets) returns validated uint8 arrays
as RawData, so the models take image size, channels and classes from the data and every run
loop trains on any of them unchanged.
"""

import collections

import numpy as np

GREY_CHANNELS = 1
# MNIST's facts, the defaults of the synthetic source.
MNIST_HEIGHT = 28
MNIST_WIDTH = 28
MNIST_NUM_CLASSES = 10
SYNTHETIC_TRAIN = 1024
SYNTHETIC_TEST = 256


class SplitError(ValueError):
  """A validation split the training data cannot give."""


class RawData(collections.namedtuple(
    'RawData', ['train_images', 'train_labels', 'test_images', 'test_labels', 'num_classes'])):
  """The four arrays of a dataset (uint8 images [N, rows, cols] as IDX files hold them, or
  [N, rows, cols, channels] from the other sources; labels [N]) and what a model needs to know
  of them: the image shape, the class count and the split sizes."""

  @property
  def image_shape(self):
    shape = tuple(int(d) for d in self.train_images.shape[1:])
    return shape if len(shape) == 3 else shape + (GREY_CHANNELS,)

  @property
  def num_train(self):
    return len(self.train_images)

  @property
  def num_test(self):
    return len(self.test_images)

  def test_set(self):
    """(float32 images [N, rows, cols, channels] in [0, 1], int labels [N]): the test split as
    an export is checked on."""
    images = to_float_images(self.test_images).reshape((-1,) + tuple(self.image_shape))
    return images, self.test_labels.astype(np.int64)

  def describe(self):
    """The facts a run records in flags.json."""
    return {'image_shape': list(self.image_shape), 'num_classes': self.num_classes,
            'train_examples': self.num_train, 'test_examples': self.num_test}


def to_float_images(images):
  """uint8 [N, ...] -> float32 [N, prod(...)] in [0, 1], in one vectorised pass."""
  flat = images.reshape(len(images), int(np.prod(images.shape[1:])))
  return np.multiply(flat, np.float32(1.0 / 255.0), dtype=np.float32)


def split_sizes(num_train_file_examples, validation_size):
  """Returns (train, validation) counts; raises SplitError when validation_size is off."""
  if not 0 <= validation_size < num_train_file_examples:
    raise SplitError('validation_size must be in 0..%d (the training file holds %d examples), '
                     'got %d' % (num_train_file_examples - 1, num_train_file_examples,
                                 validation_size))
  return num_train_file_examples - validation_size, validation_size


def synthetic_raw_data(num_train=SYNTHETIC_TRAIN, num_test=SYNTHETIC_TEST, seed=0,
                       height=MNIST_HEIGHT, width=MNIST_WIDTH, num_classes=MNIST_NUM_CLASSES,
                       channels=None):
  """Random uint8 images with labels cycling over every class: the one synthetic source that
  every model trains on with --use_synthetic_data (timing and smoke runs without data).
  Images are [N, height, width] as IDX files hold them, or [N, height, width, channels]."""
  rng = np.random.RandomState(seed)
  shape = (height, width) if channels is None else (height, width, channels)

  def make(count):
    images = rng.randint(0, 256, size=(count,) + shape).astype(np.uint8)
    return images, (np.arange(count) % num_classes).astype(np.uint8)

  return RawData(*make(num_train), *make(num_test), num_classes)
