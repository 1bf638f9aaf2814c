"""What `--dataset` names: where a run's images come from, and how they are augmented.

- `mnist` (the default): the four IDX files in --data_dir (official/data/idx.py); any
  dataset in that format trains, Fashion-MNIST or KMNIST as well as MNIST.
- `cifar10`: the CIFAR-10 binary version (official/data/cifar10.py).
- `tfds:<name>`: an image-classification dataset of tensorflow-datasets
  (official/data/tfds_data.py), with --data_dir as its data directory.

Every source gives RawData (uint8 images, labels, class count; official/data/raw_data.py), so
the models take image size, channels and classes from the data and every run loop trains on
any of them; `input_function` wraps it for the Estimator mains.
"""

import collections
import functools
import os

from official.data import array_input
from official.data import cifar10
from official.data import idx
from official.data import raw_data
from official.data import tfds_data

MNIST = 'mnist'
CIFAR10 = 'cifar10'
NAMES = (MNIST, CIFAR10)
TFDS_PREFIX = tfds_data.PREFIX

# What a bad --data_dir or --dataset can raise; the mains turn these into one line and a
# non-zero exit.
DATA_ERRORS = idx.DATA_ERRORS + (cifar10.RecordFormatError, tfds_data.TfdsDatasetError)

# The standard training augmentation of each kind of image, used where --shift_pixels and
# --random_flip are left unset. Digits and letters: +-2-pixel shifts, no mirror (a mirrored
# digit is another symbol or none). Photographs (CIFAR): the Model Garden's pad 4 and random
# 32x32 crop, and left-right flips.
Augmentation = collections.namedtuple('Augmentation', ['shift_pixels', 'flip'])
DIGITS = Augmentation(2, False)
PHOTOS = Augmentation(4, True)
AUGMENTATION = {MNIST: DIGITS, CIFAR10: PHOTOS}
# tensorflow-datasets sets of fixed-size photographs of objects, which a mirror leaves what they
# were; every other tfds: dataset (digits, letters, house numbers, unknown kinds) gets the
# digits' augmentation: shifts only.
TFDS_PHOTOS = ('cifar10', 'cifar100', 'cifar10_1', 'cifar10_corrupted', 'stl10',
               'imagenet_resized', 'horses_or_humans', 'rock_paper_scissors')


def tfds_name(dataset):
  return dataset[len(TFDS_PREFIX):] if dataset.startswith(TFDS_PREFIX) else None


def augmentation(dataset, shift_pixels=None, flip=None):
  """The training augmentation: the dataset's standard one where a value is None."""
  name = tfds_name(dataset)
  if name is not None:
    default = PHOTOS if name.split('/')[0] in TFDS_PHOTOS else DIGITS
  else:
    default = AUGMENTATION[dataset]
  return Augmentation(default.shift_pixels if shift_pixels is None else shift_pixels,
                      default.flip if flip is None else flip)


def load(dataset, data_dir, use_synthetic_data=False, seed=0):
  """What a run trains on: the dataset's RawData, read and validated once per process, or
  random data of its shape with use_synthetic_data.

  Raises:
    One of DATA_ERRORS, with a one-line message naming the file, directory or dataset.
  """
  name = tfds_name(dataset)
  if name is not None:
    if use_synthetic_data:
      return tfds_data.synthetic(name, data_dir, seed)
    return tfds_data.load(name, data_dir)
  if dataset == CIFAR10:
    if use_synthetic_data:
      return cifar10.synthetic(seed)
    return _load_cifar10(os.path.abspath(data_dir))
  if dataset != MNIST:
    raise ValueError('unknown dataset %r; choose mnist, cifar10 or tfds:<name>' % (dataset,))
  if use_synthetic_data:
    return raw_data.synthetic_raw_data(seed=seed)
  return idx.load_idx_dataset_cached(data_dir)


@functools.lru_cache(maxsize=1)
def _load_cifar10(data_dir):
  """cifar10.load, once per process and directory (the arrays are shared: do not modify
  them)."""
  return cifar10.load(data_dir, source_url=cifar10.SOURCE_URL)


def input_function(dataset, data_dir, use_synthetic_data=False, seed=0, shift_pixels=None,
                   flip=None):
  """The Estimator input function of a run: load() wrapped as array_input.ArrayInput, with
  the dataset's standard augmentation where shift_pixels or flip is None."""
  chosen = augmentation(dataset, shift_pixels, flip)
  return array_input.ArrayInput(load(dataset, data_dir, use_synthetic_data, seed),
                                chosen.shift_pixels, chosen.flip)


def display_name(dataset, use_synthetic_data=False):
  """What flags.json and the comparison page call the run's data ('-synthetic' added for
  random data of its shape, as the Model Garden named such runs)."""
  name = {MNIST: 'MNIST', CIFAR10: 'CIFAR-10'}.get(dataset, dataset)
  return name + '-synthetic' if use_synthetic_data else name
