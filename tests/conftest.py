"""Shared test helpers: small IDX files written by the tests themselves (no downloads)."""

import fcntl
import gzip
import json
import os
import struct

import numpy as np
import pytest

from official.data import idx
from tests import server_helpers


def idx_bytes(array, magic):
  """Encodes a uint8 array as IDX bytes with the given magic number."""
  array = np.asarray(array, dtype=np.uint8)
  header = struct.pack('>I', magic) + b''.join(struct.pack('>I', d) for d in array.shape)
  return header + array.tobytes()


def write_idx_dir(directory, num_train=60, num_test=20, num_classes=10, height=28, width=28,
                  compress=True, seed=0, learnable=False):
  """Writes the four IDX files of a tiny dataset to directory; returns the arrays.

  With learnable=True each class gets a bright horizontal band at its own rows, so a few
  training steps can learn it.
  """
  rng = np.random.RandomState(seed)
  os.makedirs(directory, exist_ok=True)

  def make(count):
    labels = (np.arange(count) % num_classes).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.randint(0, 60, size=(count, height, width)).astype(np.uint8)
    if learnable:
      band = max(1, height // num_classes)
      for i, label in enumerate(labels):
        images[i, label * band % height:(label * band % height) + band, :] = 255
    return images, labels

  train_images, train_labels = make(num_train)
  test_images, test_labels = make(num_test)
  contents = {
      idx.TRAIN_IMAGES: idx_bytes(train_images, idx.IMAGES_MAGIC),
      idx.TRAIN_LABELS: idx_bytes(train_labels, idx.LABELS_MAGIC),
      idx.TEST_IMAGES: idx_bytes(test_images, idx.IMAGES_MAGIC),
      idx.TEST_LABELS: idx_bytes(test_labels, idx.LABELS_MAGIC),
  }
  for name, data in contents.items():
    if compress:
      with gzip.open(os.path.join(directory, name), 'wb') as f:
        f.write(data)
    else:
      with open(os.path.join(directory, name[:-len('.gz')]), 'wb') as f:
        f.write(data)
  return train_images, train_labels, test_images, test_labels


def cifar10_records(images, labels):
  """CIFAR-10 binary records of uint8 images [N, 32, 32, 3] and labels [N]: the label byte,
  then the red, green and blue planes."""
  planes = np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
  labels = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
  return np.concatenate([labels, planes], axis=1).tobytes()


def write_cifar10_dir(directory, per_file=8, num_test=20, seed=0):
  """Writes the six CIFAR-10 binary files of a tiny dataset (5 x per_file training records)
  into directory; returns (train images, train labels, test images, test labels). Each class
  has its own bright row band, so a few steps can learn it."""
  rng = np.random.RandomState(seed)
  os.makedirs(directory, exist_ok=True)

  def make(count):
    labels = (np.arange(count) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.randint(0, 60, size=(count, 32, 32, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
      images[i, 3 * label:3 * label + 3, :, label % 3] = 255
    return images, labels

  train = make(5 * per_file)
  test = make(num_test)
  for index in range(5):
    part = slice(index * per_file, (index + 1) * per_file)
    with open(os.path.join(directory, 'data_batch_%d.bin' % (index + 1)), 'wb') as f:
      f.write(cifar10_records(train[0][part], train[1][part]))
  with open(os.path.join(directory, 'test_batch.bin'), 'wb') as f:
    f.write(cifar10_records(*test))
  return train + test


def parse_flags(define, argv=(), program='main'):
  """Defines a main's flags on a fresh FlagValues (no global state) and parses argv."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  define(flag_values)
  flag_values([program] + list(argv))
  return flag_values


@pytest.fixture
def idx_dir(tmp_path):
  """A directory holding a tiny valid gzip IDX dataset (60 train, 20 test, 10 classes)."""
  directory = str(tmp_path / 'data')
  write_idx_dir(directory)
  return directory


@pytest.fixture
def learnable_idx_dir(tmp_path):
  """A tiny dataset whose classes a few training steps can tell apart."""
  directory = str(tmp_path / 'learnable')
  write_idx_dir(directory, num_train=400, num_test=100, learnable=True)
  return directory


@pytest.fixture
def cifar10_dir(tmp_path):
  """A directory holding a tiny CIFAR-10 binary dataset (40 train, 20 test)."""
  directory = str(tmp_path / 'cifar-10-batches-bin')
  write_cifar10_dir(directory)
  return directory


@pytest.fixture(scope='session')
def exports(tmp_path_factory):
  """The session's exports by name ('alexnet', 'alexnet_2': another AlexNet, 'resnet',
  'googlenet'), each built once per test session by the first pytest-xdist worker that asks for
  it, under a lock of its own (so two workers build two at once), and read by the others from
  what it wrote. Tests only read and copy them."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent  # the session's directory, above every worker's own
  root = base / 'shared_exports'
  root.mkdir(exist_ok=True)
  return _Exports(root)


class _Exports(object):
  """exports[name]: the version directory of one of the session's exports (see `exports`)."""

  def __init__(self, root):
    self.root = root

  def __getitem__(self, name):
    index = self.root / (name + '.json')
    with open(str(self.root / (name + '.lock')), 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not index.exists():
        path = _BUILDERS[name](self.root / name)
        index.with_suffix('.tmp').write_text(json.dumps(path))
        os.replace(str(index.with_suffix('.tmp')), str(index))
      return json.loads(index.read_text())


def _alexnet_export(root, seed):
  from mnist_cnn import alexnet_main  # pylint: disable=g-import-not-at-top
  data_dir = str(root / 'data')
  write_idx_dir(data_dir, num_train=200, num_test=50, learnable=True)
  return alexnet_main.run_alexnet(parse_flags(alexnet_main.define_alexnet_flags, [
      '--data_dir=' + data_dir, '--model_dir=%s' % (root / 'model'), '--train_epochs=1',
      '--batch_size=50', '--validation_size=0', '--optimizer=adam', '--learning_rate=0.001',
      '--seed=%d' % seed, '--export_dir=%s' % (root / 'export')]))['export_path']


def _resnet_export(root):
  from mnist_cnn import resnet_main  # pylint: disable=g-import-not-at-top
  return resnet_main.run_resnet(parse_flags(resnet_main.define_mnist_flags, [
      '--use_synthetic_data', '--model_dir=%s' % (root / 'model'), '--num_filters=4',
      '--batch_size=8', '--max_train_steps=2', '--batch_norm_batches=2',
      '--export_dir=%s' % (root / 'export')]))['export_path']


def _googlenet_export(root):
  # With its auxiliary heads, which the export leaves out; the statistics' recomputation is
  # tested on its own (10 s for GoogLeNet's graph).
  from mnist_cnn import googlenet_main  # pylint: disable=g-import-not-at-top
  return googlenet_main.run_googlenet(parse_flags(googlenet_main.define_googlenet_flags, [
      '--use_synthetic_data', '--model_dir=%s' % (root / 'model'),
      '--width_multiplier=0.125', '--batch_size=8', '--max_train_steps=2',
      '--batch_norm_batches=0', '--export_dir=%s' % (root / 'export')]))['export_path']


_BUILDERS = {
    'alexnet': lambda root: _alexnet_export(root, 0),
    'alexnet_2': lambda root: _alexnet_export(root, 1),
    'resnet': _resnet_export,
    'googlenet': _googlenet_export,
}


@pytest.fixture
def serve_dir(tmp_path):
  """A model base path holding the AlexNet export as version 1, plus a non-version dir."""
  base = tmp_path / 'models'
  base.mkdir()
  (base / 'not-a-version').mkdir()
  return base


@pytest.fixture
def alexnet_server(exports, serve_dir):
  server_helpers.publish(exports['alexnet'], serve_dir, 1)
  server = server_helpers.Server(serve_dir)
  yield server
  server.stop()
