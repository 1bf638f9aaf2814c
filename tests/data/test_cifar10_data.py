"""The CIFAR-10 binary reader on hand-made files: record layout, validation, download and
atomic unpacking, and the training augmentation."""

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from official.data import array_input
from official.data import cifar10 as cifar10_data
from official.data import datasets
from tests.conftest import cifar10_records
from tests.conftest import write_cifar10_dir


def test_records_are_a_label_byte_then_red_green_blue_planes_row_major(tmp_path):
  # Each pixel byte encodes where it sits in the file: plane, row and column.
  record = bytearray([7])
  for plane in range(3):
    for row in range(32):
      for col in range(32):
        record.append((plane * 80 + row * 2 + col % 2) % 256)
  path = str(tmp_path / 'one.bin')
  with open(path, 'wb') as f:
    f.write(bytes(record) * 2)
  images, labels = cifar10_data.read_files([path])
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
  assert labels.tolist() == [7, 7]
  for row, col, channel in [(0, 0, 0), (5, 3, 1), (31, 30, 2), (17, 9, 0)]:
    assert images[1, row, col, channel] == (channel * 80 + row * 2 + col % 2) % 256


def test_a_directory_reads_in_file_order(tmp_path):
  directory = str(tmp_path / 'cifar-10-batches-bin')
  train_images, train_labels, test_images, test_labels = write_cifar10_dir(directory)
  for data_dir in (directory, str(tmp_path)):  # the batches directory or the one above it
    raw = cifar10_data.load(data_dir, source_url=None)
    np.testing.assert_array_equal(raw.train_images, train_images)
    np.testing.assert_array_equal(raw.train_labels, train_labels)
    np.testing.assert_array_equal(raw.test_images, test_images)
    np.testing.assert_array_equal(raw.test_labels, test_labels)
    assert raw.image_shape == (32, 32, 3) and raw.num_classes == 10
  images, labels = raw.test_set()
  assert images.shape == (20, 32, 32, 3) and 0 <= images.min() and images.max() <= 1
  np.testing.assert_allclose(images * 255, test_images, atol=1e-3)


@pytest.mark.parametrize('damage,message', [
    (lambda data: data[:-100], r'test_batch.bin: 61360 bytes is not a whole number of '
                               r'3073-byte records \(19 records and 2973 bytes over\)'),
    (lambda data: data + b'\0', r'test_batch.bin: 61461 bytes is not a whole number'),
    (lambda data: b'', r'test_batch.bin: file is empty'),
    (lambda data: data[:3073 * 4] + bytes([10]) + data[3073 * 4 + 1:],
     r'test_batch.bin: label 10 in record 4 is outside the range 0..9'),
])
def test_damaged_files_are_one_line_errors_naming_the_file(cifar10_dir, damage, message):
  path = os.path.join(cifar10_dir, 'test_batch.bin')
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(damage(data))
  with pytest.raises(cifar10_data.RecordFormatError, match=message) as error:
    cifar10_data.load(cifar10_dir, source_url=None)
  assert '\n' not in str(error.value)


def test_a_bad_label_in_a_later_training_file_names_that_file(cifar10_dir):
  path = os.path.join(cifar10_dir, 'data_batch_3.bin')
  with open(path, 'r+b') as f:
    f.seek(3073 * 2)
    f.write(bytes([255]))
  with pytest.raises(cifar10_data.RecordFormatError,
                     match=r'data_batch_3.bin: label 255 in record 2 is outside'):
    cifar10_data.load(cifar10_dir, source_url=None)


def test_missing_files_offline_are_one_line_naming_directory_and_files(cifar10_dir, tmp_path):
  os.remove(os.path.join(cifar10_dir, 'data_batch_2.bin'))
  with pytest.raises(FileNotFoundError, match=r'CIFAR-10 data not found in .*cifar-10-batches-'
                     r'bin: missing data_batch_2.bin \(the other files are there\)'):
    cifar10_data.load(cifar10_dir)
  empty = str(tmp_path / 'nothing')
  with pytest.raises(FileNotFoundError, match=r'missing data_batch_1.bin, .* test_batch.bin '
                     r'\(download from file:.* failed'):
    cifar10_data.load(empty, source_url='file://%s/absent.tar.gz' % tmp_path)
  assert not os.path.exists(empty)  # a failed first download leaves no directory behind


def _archive(tmp_path, members):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  path = str(tmp_path / 'cifar-10-binary.tar.gz')
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())
  return 'file://' + path, hashlib.md5(buffer.getvalue()).hexdigest()


def _batch_files(tmp_path):
  source = str(tmp_path / 'source')
  arrays = write_cifar10_dir(source)
  members = {}
  for name in sorted(os.listdir(source)):
    with open(os.path.join(source, name), 'rb') as f:
      members['cifar-10-batches-bin/' + name] = f.read()
  members['cifar-10-batches-bin/batches.meta.txt'] = b'airplane\n'
  return members, arrays


def test_download_checks_the_md5_and_unpacks_into_place(tmp_path):
  members, arrays = _batch_files(tmp_path)
  url, md5 = _archive(tmp_path, members)
  data_dir = str(tmp_path / 'data')
  with pytest.raises(cifar10_data.RecordFormatError, match='md5 .* is not the expected 0+'):
    cifar10_data.maybe_download(data_dir, url, md5='0' * 32)
  assert os.listdir(data_dir) == []  # neither the archive nor half the files
  directory = cifar10_data.maybe_download(data_dir, url, md5=md5)
  assert directory == os.path.join(data_dir, 'cifar-10-batches-bin')
  assert sorted(os.listdir(data_dir)) == ['cifar-10-batches-bin']
  raw = cifar10_data.load(data_dir, source_url=None)
  np.testing.assert_array_equal(raw.train_images, arrays[0])


def test_an_archive_with_unexpected_members_is_refused_and_leaves_nothing(tmp_path):
  members, _ = _batch_files(tmp_path)
  members['../escape.bin'] = b'x'
  url, md5 = _archive(tmp_path, members)
  data_dir = str(tmp_path / 'data')
  with pytest.raises(cifar10_data.RecordFormatError, match=r"unexpected archive member "
                                                           r"'../escape.bin'"):
    cifar10_data.maybe_download(data_dir, url, md5=md5)
  assert os.listdir(data_dir) == [] and not os.path.exists(str(tmp_path / 'escape.bin'))


def test_synthetic_and_loaded_data_share_one_shape():
  raw = datasets.load('cifar10', '/nonexistent', use_synthetic_data=True, seed=2)
  assert raw.image_shape == (32, 32, 3) and raw.num_classes == 10
  assert raw.train_images.shape[1:] == (32, 32, 3)


def _augmented(image, shift, flip, draws):
  with tf.Graph().as_default():
    out = array_input.augment(tf.constant(image), shift, flip)
    with tf.compat.v1.Session() as sess:
      return [sess.run(out) for _ in range(draws)]


def test_cifar_augmentation_crops_a_padded_window_and_mirrors_it():
  image = np.random.RandomState(0).rand(32, 32, 3).astype(np.float32)
  padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
  windows = {(dy, dx): padded[dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)}
  seen_offsets, mirrored = set(), 0
  for out in _augmented(image, 4, True, 40):
    assert out.shape == (32, 32, 3) and 0 <= out.min() and out.max() <= 1
    matches = [key for key, window in windows.items()
               if np.array_equal(out, window) or np.array_equal(out[:, ::-1], window)]
    assert len(matches) >= 1
    seen_offsets.add(matches[0])
    mirrored += not any(np.array_equal(out, windows[key]) for key in matches)
  assert len(seen_offsets) > 5 and 0 < mirrored < 40


def test_digits_are_shifted_but_never_mirrored():
  image = np.random.RandomState(1).rand(28, 28, 1).astype(np.float32)
  for out in _augmented(image, 0, False, 5):
    np.testing.assert_array_equal(out, image)
  assert datasets.augmentation('mnist') == (2, False)
  assert datasets.augmentation('cifar10') == (4, True)
  assert datasets.augmentation('tfds:cifar100') == (4, True)
  assert datasets.augmentation('tfds:emnist/letters') == (2, False)
  assert datasets.augmentation('cifar10', shift_pixels=0, flip=False) == (0, False)


def test_records_helper_round_trips(tmp_path):
  images = np.random.RandomState(3).randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  path = str(tmp_path / 'x.bin')
  with open(path, 'wb') as f:
    f.write(cifar10_records(images, [0, 9, 4]))
  read, labels = cifar10_data.read_files([path])
  np.testing.assert_array_equal(read, images)
  assert labels.tolist() == [0, 9, 4]
