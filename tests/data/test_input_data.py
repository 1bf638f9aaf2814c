"""IDX reading, validation, splits, batching, downloads and tf.data input functions."""

import functools
import gzip
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import input_data
from official.data import array_input
from official.data import idx
from official.data import raw_data
from tests import conftest


def _rewrite(directory, name, data):
  with open(os.path.join(directory, name), 'wb') as f:
    f.write(data)


def _gzip_rewrite(directory, name, data):
  _rewrite(directory, name, gzip.compress(data))


def _raw(directory, name):
  with gzip.open(os.path.join(directory, name)) as f:
    return f.read()


def _load_error(directory):
  with pytest.raises(idx.IdxFormatError) as info:
    idx.load_idx_dataset(directory, source_url=None)
  return str(info.value)


def test_gzip_and_plain_files_load_the_same_arrays(tmp_path):
  gz_dir, plain_dir = str(tmp_path / 'gz'), str(tmp_path / 'plain')
  expected = conftest.write_idx_dir(gz_dir, seed=3)
  conftest.write_idx_dir(plain_dir, seed=3, compress=False)
  for directory in (gz_dir, plain_dir):
    raw = idx.load_idx_dataset(directory, source_url=None)
    np.testing.assert_array_equal(raw.train_images, expected[0])
    np.testing.assert_array_equal(raw.train_labels, expected[1])
    np.testing.assert_array_equal(raw.test_images, expected[2])
    np.testing.assert_array_equal(raw.test_labels, expected[3])
    assert raw.num_classes == 10


def test_read_data_sets_splits_scales_and_one_hot_encodes(idx_dir):
  train_images = conftest.write_idx_dir(idx_dir)[0]
  data = input_data.read_data_sets(idx_dir, one_hot=True, validation_size=10)
  assert (data.train.num_examples, data.validation.num_examples, data.test.num_examples) == (
      50, 10, 20)
  assert data.train.images.shape == (50, 784) and data.train.images.dtype == np.float32
  assert data.train.labels.shape == (50, 10)
  np.testing.assert_array_equal(data.train.labels.sum(axis=1), np.ones(50))
  # The validation set is the head of the training file, as in the original.
  np.testing.assert_allclose(data.validation.images[0], train_images[0].reshape(-1) / 255.0,
                             rtol=1e-6)
  assert 0.0 <= data.train.images.min() and data.train.images.max() <= 1.0
  assert data.image_shape == (28, 28, 1) and data.num_classes == 10
  int_labels = input_data.read_data_sets(idx_dir, one_hot=False, validation_size=10)
  np.testing.assert_array_equal(int_labels.train.labels, data.train.labels.argmax(1))


def test_other_image_sizes_and_class_counts_load_through_the_same_code(tmp_path):
  directory = str(tmp_path / 'other')
  conftest.write_idx_dir(directory, num_train=30, num_test=9, num_classes=3, height=20, width=12)
  data = input_data.read_data_sets(directory, one_hot=True, validation_size=0)
  assert data.image_shape == (20, 12, 1)
  assert data.num_classes == 3
  assert data.train.images.shape == (30, 240) and data.train.labels.shape == (30, 3)
  assert data.validation.num_examples == 0


def test_validation_size_larger_than_the_training_file_is_rejected(idx_dir):
  with pytest.raises(ValueError, match='validation_size must be in 0..59'):
    input_data.read_data_sets(idx_dir, validation_size=60)


def test_bad_magic_number_names_file_and_magic(idx_dir):
  data = bytearray(_raw(idx_dir, idx.TRAIN_LABELS))
  data[3] = 0x03  # 2051: an images magic in a labels file
  _gzip_rewrite(idx_dir, idx.TRAIN_LABELS, bytes(data))
  message = _load_error(idx_dir)
  assert message.startswith('train-labels-idx1-ubyte.gz: bad magic number 2051, expected 2049')


def test_truncated_image_file_names_file_and_expected_size(idx_dir):
  data = _raw(idx_dir, idx.TEST_IMAGES)
  _gzip_rewrite(idx_dir, idx.TEST_IMAGES, data[:16 + 4096])
  message = _load_error(idx_dir)
  assert message.startswith('t10k-images-idx3-ubyte.gz: header says 20 images of 28x28 but '
                            'the file holds 4096 bytes of pixels (expected 15680)')
  assert 'truncated' in message


def test_trailing_bytes_are_reported(idx_dir):
  data = _raw(idx_dir, idx.TRAIN_LABELS)
  _gzip_rewrite(idx_dir, idx.TRAIN_LABELS, data + b'\x00\x01')
  assert 'train-labels-idx1-ubyte.gz: header says 60 labels but the file holds 62' in (
      _load_error(idx_dir))


def test_truncated_header_is_reported(idx_dir):
  _gzip_rewrite(idx_dir, idx.TEST_IMAGES, _raw(idx_dir, idx.TEST_IMAGES)[:10])
  assert _load_error(idx_dir).startswith('t10k-images-idx3-ubyte.gz: header is truncated')


def test_image_and_label_count_mismatch_names_both_files(idx_dir):
  labels = _raw(idx_dir, idx.TEST_LABELS)
  fewer = labels[:4] + (19).to_bytes(4, 'big') + labels[8:8 + 19]
  _gzip_rewrite(idx_dir, idx.TEST_LABELS, fewer)
  assert _load_error(idx_dir) == (
      't10k-labels-idx1-ubyte.gz: holds 19 labels but t10k-images-idx3-ubyte.gz holds 20 images')


def test_label_out_of_range_names_file_index_and_range(idx_dir):
  labels = bytearray(_raw(idx_dir, idx.TEST_LABELS))
  labels[8 + 5] = 12
  _gzip_rewrite(idx_dir, idx.TEST_LABELS, bytes(labels))
  message = _load_error(idx_dir)
  assert message.startswith('t10k-labels-idx1-ubyte.gz: label 12 at index 5 is outside the '
                            'range 0..9')


def test_label_out_of_explicit_class_count(idx_dir):
  with pytest.raises(idx.IdxFormatError, match=r'train-labels-idx1-ubyte.gz: label \d+ '
                     r'at index \d+ is outside the range 0..4 \(num_classes=5\)'):
    idx.load_idx_dataset(idx_dir, num_classes=5, source_url=None)


def test_corrupt_gzip_stream_is_reported_not_a_zlib_traceback(idx_dir):
  path = os.path.join(idx_dir, idx.TRAIN_IMAGES)
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  data[len(data) // 2:len(data) // 2 + 20] = b'\xff' * 20
  _rewrite(idx_dir, idx.TRAIN_IMAGES, bytes(data))
  assert _load_error(idx_dir).startswith('train-images-idx3-ubyte.gz: corrupt gzip stream')


def test_cut_gzip_stream_is_reported(idx_dir):
  path = os.path.join(idx_dir, idx.TRAIN_IMAGES)
  with open(path, 'rb') as f:
    data = f.read()
  _rewrite(idx_dir, idx.TRAIN_IMAGES, data[:len(data) // 2])
  assert _load_error(idx_dir).startswith('train-images-idx3-ubyte.gz: corrupt gzip stream')


def test_missing_files_offline_name_directory_files_and_both_fixes(tmp_path):
  directory = str(tmp_path / 'empty')
  os.makedirs(directory)
  conftest.write_idx_dir(directory)
  os.remove(os.path.join(directory, idx.TEST_LABELS))
  with pytest.raises(FileNotFoundError) as info:
    idx.load_idx_dataset(directory, source_url=None)
  message = str(info.value)
  assert directory in message
  assert 't10k-labels-idx1-ubyte.gz' in message and 'train-images' not in message
  assert '--data_dir' in message and '--use_synthetic_data' in message


def test_unreachable_mirror_gives_the_same_clear_error(tmp_path):
  with socket.socket() as probe:  # a loopback port with nothing listening
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  with pytest.raises(FileNotFoundError, match='download from http://127.0.0.1:%d/ failed' % port):
    idx.maybe_download(str(tmp_path / 'd'), source_url='http://127.0.0.1:%d/' % port,
                              timeout=5)
  assert not os.path.exists(tmp_path / 'd')


@pytest.fixture
def mirror(tmp_path):
  """Serves a tiny IDX dataset over HTTP on 127.0.0.1; yields (url, md5 sums)."""
  served = str(tmp_path / 'served')
  conftest.write_idx_dir(served)
  sums = {}
  for name in idx.FILE_NAMES:
    with open(os.path.join(served, name), 'rb') as f:
      sums[name] = hashlib.md5(f.read()).hexdigest()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield 'http://127.0.0.1:%d/' % server.server_address[1], sums
  server.shutdown()
  server.server_close()


def test_missing_files_are_downloaded_and_verified(tmp_path, mirror):
  url, sums = mirror
  target = str(tmp_path / 'target')
  paths = idx.maybe_download(target, source_url=url, checksums=sums)
  assert sorted(os.listdir(target)) == sorted(idx.FILE_NAMES)
  assert idx.read_idx_file(paths[idx.TRAIN_IMAGES],
                                  idx.IMAGES_MAGIC).shape == (60, 28, 28)


def test_download_with_wrong_checksum_leaves_no_file(tmp_path, mirror):
  url, sums = mirror
  target = str(tmp_path / 'target')
  bad = dict(sums, **{idx.TRAIN_IMAGES: '0' * 32})
  with pytest.raises(idx.IdxFormatError, match='train-images-idx3-ubyte.gz: downloaded '
                     'from .* but its md5 .* is not the expected 0000'):
    idx.maybe_download(target, source_url=url, checksums=bad)
  assert idx.TRAIN_IMAGES not in os.listdir(target)
  assert not [n for n in os.listdir(target) if n.startswith('.download-')]


def test_data_dir_that_is_a_file_is_rejected(tmp_path):
  path = tmp_path / 'file'
  path.write_text('x')
  with pytest.raises(NotADirectoryError, match='is a file'):
    idx.load_idx_dataset(str(path))


def test_next_batch_covers_every_example_once_per_epoch():
  images = np.arange(10, dtype=np.float32).reshape(10, 1)
  dataset = input_data.DataSet(images, np.arange(10), seed=1)
  seen = np.concatenate([dataset.next_batch(3)[1] for _ in range(10)])  # 30 = three epochs
  for epoch in range(3):
    assert sorted(seen[epoch * 10:(epoch + 1) * 10]) == list(range(10))
  assert dataset.epochs_completed == 3
  assert not np.array_equal(seen[:10], seen[10:20])  # reshuffled between epochs


def test_next_batch_keeps_images_and_labels_paired():
  images = np.arange(20, dtype=np.float32).reshape(20, 1)
  dataset = input_data.DataSet(images, np.arange(20) * 10, seed=0)
  batch_images, batch_labels = dataset.next_batch(7)
  np.testing.assert_array_equal(batch_images[:, 0] * 10, batch_labels)


def test_seeded_shuffles_repeat_and_differ_by_seed():
  def order(seed):
    dataset = input_data.DataSet(np.zeros((50, 1)), np.arange(50), seed=seed)
    return np.concatenate([dataset.next_batch(25)[1] for _ in range(4)])
  np.testing.assert_array_equal(order(7), order(7))
  assert not np.array_equal(order(7), order(8))


def test_restart_replays_the_same_epoch():
  dataset = input_data.DataSet(np.zeros((30, 1)), np.arange(30), seed=0)
  dataset.restart(seed=5)
  first = dataset.next_batch(10)[1]
  dataset.next_batch(7)
  dataset.restart(seed=5)
  np.testing.assert_array_equal(dataset.next_batch(10)[1], first)


def test_next_batch_without_shuffle_is_in_order():
  dataset = input_data.DataSet(np.zeros((5, 1)), np.arange(5))
  assert list(dataset.next_batch(4, shuffle=False)[1]) == [0, 1, 2, 3]


def test_next_batch_rejects_batches_larger_than_the_set():
  dataset = input_data.DataSet(np.zeros((5, 1)), np.arange(5))
  with pytest.raises(ValueError, match='batch_size must be in 1..5'):
    dataset.next_batch(6)


def _take(dataset, count):
  with tf.Graph().as_default():
    iterator = tf.compat.v1.data.make_one_shot_iterator(dataset())
    next_element = iterator.get_next()
    with tf.compat.v1.Session() as sess:
      return [sess.run(next_element) for _ in range(count)]


def test_input_fn_yields_documented_shapes_and_dtypes_in_train_mode(idx_dir):
  batches = _take(lambda: input_data.input_fn(True, idx_dir, batch_size=8, num_epochs=2,
                                              seed=1), 3)
  images, labels = batches[0]
  assert images.shape == (8, 28, 28, 1) and images.dtype == np.float32
  assert labels.shape == (8,) and labels.dtype == np.int32
  assert 0.0 <= images.min() and images.max() <= 1.0


def test_input_fn_eval_mode_reads_the_whole_test_file_in_order(idx_dir):
  expected = conftest.write_idx_dir(idx_dir)
  with tf.Graph().as_default():
    dataset = input_data.input_fn(False, idx_dir, batch_size=8)
    next_element = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    labels = []
    with tf.compat.v1.Session() as sess:
      while True:
        try:
          labels.append(sess.run(next_element)[1])
        except tf.errors.OutOfRangeError:
          break
  assert [len(l) for l in labels] == [8, 8, 4]
  np.testing.assert_array_equal(np.concatenate(labels), expected[3])


def test_input_fn_training_epoch_covers_each_example_once(idx_dir):
  labels_by_image = {}
  train_images, train_labels = conftest.write_idx_dir(idx_dir)[:2]
  with tf.Graph().as_default():
    dataset = input_data.input_fn(True, idx_dir, batch_size=60, num_epochs=1, seed=3)
    images, labels = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    with tf.compat.v1.Session() as sess:
      batch_images, batch_labels = sess.run([images, labels])
  for image, label in zip(batch_images, batch_labels):
    labels_by_image[np.round(image * 255).astype(np.uint8).tobytes()] = label
  assert len(labels_by_image) == 60
  for image, label in zip(train_images, train_labels):
    assert labels_by_image[image.tobytes()] == label


def test_synthetic_data_goes_through_the_same_pipeline_and_covers_all_classes():
  raw = input_data.load_data('/nonexistent', use_synthetic_data=True, seed=3)
  assert raw.describe() == {'image_shape': [28, 28, 1], 'num_classes': 10,
                            'train_examples': 1024, 'test_examples': 256}
  batches = _take(lambda: array_input.raw_input_fn(raw, True, batch_size=512, seed=0), 1)
  images, labels = batches[0]
  assert images.shape == (512, 28, 28, 1) and images.dtype == np.float32
  assert labels.dtype == np.int32
  assert sorted(set(labels)) == list(range(10))
  again = input_data.load_data('/nonexistent', use_synthetic_data=True, seed=3)
  np.testing.assert_array_equal(again.train_images, raw.train_images)  # seeded
  assert not np.array_equal(raw_data.synthetic_raw_data(seed=4).train_images,
                            raw.train_images)


def test_a_data_dir_is_read_once_whichever_way_it_is_named(idx_dir, monkeypatch):
  calls = []
  real = idx.load_idx_dataset
  monkeypatch.setattr(idx, 'load_idx_dataset',
                      lambda *args: calls.append(args) or real(*args))
  idx._load_cached.cache_clear()  # pylint: disable=protected-access
  first = input_data.load_data(idx_dir)
  relative = os.path.relpath(idx_dir)
  _take(lambda: input_data.input_fn(True, relative + os.sep, batch_size=8), 1)
  input_data.read_data_sets(idx_dir, validation_size=0)
  assert len(calls) == 1
  assert input_data.load_data(idx_dir) is first


def test_training_shifts_move_digits_by_at_most_the_given_pixels():
  image = np.zeros((1, 28, 28), np.uint8)
  image[0, 10:12, 10:12] = 255
  batches = _take(lambda: array_input.arrays_input_fn(
      np.repeat(image, 64, 0), np.zeros(64, np.uint8), True, 64, shift_pixels=2, seed=0), 1)
  rows, cols = np.nonzero(batches[0][0][..., 0] > 0.5)[1:]
  assert rows.min() >= 8 and rows.max() <= 13 and cols.min() >= 8 and cols.max() <= 13
  assert len({(r, c) for r, c in zip(rows, cols)}) > 4  # shifted differently across the batch


def test_synthetic_data_sets_label_every_class():
  data = input_data.synthetic_data_sets(num_train=40, num_test=20, one_hot=True)
  assert data.train.images.shape == (40, 784)
  assert data.train.labels.sum(axis=0).min() == 4


def test_data_error_exits_with_one_clear_line(idx_dir):
  """The AlexNet main turns a broken file into one stderr line and a non-zero exit."""
  _gzip_rewrite(idx_dir, idx.TRAIN_LABELS, b'\x00\x00\x08\x01\x00\x00\x00\x05ab')
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.alexnet_main', '--data_dir=%s' % idx_dir,
       '--model_dir=%s' % os.path.join(idx_dir, 'model')],
      capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: train-labels-idx1-ubyte.gz: header says 5 labels but the file holds 2 label '
      'bytes (expected 5); the file is truncated')
