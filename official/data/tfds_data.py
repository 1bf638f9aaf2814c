"""Image-classification datasets of tensorflow-datasets, as RawData.

`--dataset=tfds:<name>` (`tfds:fashion_mnist`, `tfds:cifar10`, `tfds:emnist/letters`...)
loads the dataset's supervised (image, label) pairs with `--data_dir` as the TFDS data
directory: prepared data there is used as it is; otherwise it is downloaded and prepared (when
online), and offline that is one line naming the dataset and the directory. The images must
be of one fixed size and uint8 (the models take the size and channels from them); they are
held in memory, as the IDX and CIFAR-10 sources hold theirs.

The test split is `test`, else `validation`; a dataset with a training split only holds out
its last TEST_FRACTION_PERCENT percent as the test set. tensorflow_datasets is imported only
when a tfds: dataset is asked for (it adds ~2 s to a process's start).
"""

import socket

import numpy as np

from official.data import raw_data

PREFIX = 'tfds:'
# Where TFDS downloads most datasets from. Offline, its downloader retries each file ten times
# with backoff (3.5 minutes for MNIST here) and leaves .tmp files behind, so a machine that
# cannot open a connection to this host within PROBE_TIMEOUT_S is told it is offline at once.
PROBE_HOST = ('storage.googleapis.com', 443)
PROBE_TIMEOUT_S = 5
TEST_SPLITS = ('test', 'validation')
TEST_FRACTION_PERCENT = 10


class TfdsDatasetError(ValueError):
  """A tfds: dataset that cannot be trained on here; the message names it."""


def _first_line(error):
  """An exception's message as one line (TFDS's span several), or its type's name."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _builder(name, data_dir):
  tfds = _tfds()
  try:
    return tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError, bad config names, registry errors
    raise TfdsDatasetError('%s%s: not a dataset of tensorflow-datasets %s (%s)' %
                           (PREFIX, name, tfds.__version__, _first_line(e))) from None


def describe(name, builder):
  """(image key, label key, image shape (h, w, c), class count) of an image-classification
  builder; TfdsDatasetError for anything else."""
  info = builder.info
  keys = info.supervised_keys
  if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
    raise TfdsDatasetError('%s%s: has no (image, label) supervised keys; only image '
                           'classification datasets train here' % (PREFIX, name))
  image_key, label_key = keys
  image, label = info.features[image_key], info.features[label_key]
  shape = tuple(getattr(image, 'shape', ()))
  if len(shape) != 3 or None in shape:
    raise TfdsDatasetError('%s%s: %r images have shape %s; only datasets of one fixed image '
                           'size (height, width, channels) train here' %
                           (PREFIX, name, image_key, shape))
  if np.dtype(getattr(image, 'np_dtype', np.uint8)) != np.uint8:
    raise TfdsDatasetError('%s%s: %r images are %s, not uint8' %
                           (PREFIX, name, image_key, image.np_dtype))
  num_classes = getattr(label, 'num_classes', None)
  if not num_classes:
    raise TfdsDatasetError('%s%s: %r is not a class label' % (PREFIX, name, label_key))
  return image_key, label_key, shape, int(num_classes)


def _online(address=PROBE_HOST, timeout=PROBE_TIMEOUT_S):
  try:
    socket.create_connection(address, timeout=timeout).close()
  except OSError:
    return False
  return True


def _prepare(name, builder, data_dir):
  if builder.is_prepared():
    return
  try:
    if not _online():
      raise OSError('no connection to %s:%d' % PROBE_HOST)
    builder.download_and_prepare()
  except Exception as e:  # offline: download errors of every kind the backends raise
    raise TfdsDatasetError(
        '%s%s: not prepared in %s and could not be downloaded (%s). Fix: prepare it there '
        'on a machine online (tfds build %s --data_dir=%s) and copy the directory over.' %
        (PREFIX, name, data_dir, _first_line(e)[:200], name, data_dir)) from None


def splits(builder):
  """(train split, test split) names; a builder whose splits are not known (mock data) is read
  as train and test."""
  names = set(builder.info.splits) or {'train', 'test'}
  if 'train' not in names:
    raise TfdsDatasetError('%s%s: has no train split (has %s)' %
                           (PREFIX, builder.name, ', '.join(sorted(names))))
  for test in TEST_SPLITS:
    if test in names:
      return 'train', test
  held_out = 100 - TEST_FRACTION_PERCENT
  return 'train[:%d%%]' % held_out, 'train[%d%%:]' % held_out


def _arrays(builder, split, keys, shape, block=4096):
  dataset = builder.as_dataset(split=split).batch(block)
  images, labels = [], []
  for batch in _tfds().as_numpy(dataset):
    images.append(np.asarray(batch[keys[0]], dtype=np.uint8).reshape((-1,) + shape))
    labels.append(np.asarray(batch[keys[1]]).astype(np.int64))
  if not images:
    return np.zeros((0,) + shape, np.uint8), np.zeros([0], np.int64)
  return np.concatenate(images), np.concatenate(labels)


def load(name, data_dir):
  """The dataset's train and test splits as RawData (images [N, h, w, c] uint8)."""
  builder = _builder(name, data_dir)
  image_key, label_key, shape, num_classes = describe(name, builder)
  _prepare(name, builder, data_dir)
  train_split, test_split = splits(builder)
  train = _arrays(builder, train_split, (image_key, label_key), shape)
  test = _arrays(builder, test_split, (image_key, label_key), shape)
  for (_, labels), split in ((train, train_split), (test, test_split)):
    if not len(labels):
      raise TfdsDatasetError('%s%s: split %s is empty' % (PREFIX, name, split))
    if labels.min() < 0 or labels.max() >= num_classes:
      raise TfdsDatasetError('%s%s: split %s has labels outside 0..%d' %
                             (PREFIX, name, split, num_classes - 1))
  return raw_data.RawData(train[0], train[1], test[0], test[1], num_classes)


def synthetic(name, data_dir, seed=0):
  """Random data of the dataset's image shape and class count (from its metadata, which needs
  no download) for --use_synthetic_data."""
  _, _, (height, width, channels), num_classes = describe(name, _builder(name, data_dir))
  return raw_data.synthetic_raw_data(seed=seed, height=height, width=width,
                                       num_classes=num_classes, channels=channels)
