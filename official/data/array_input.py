"""Estimator input functions over images held in memory (RawData), with augmentation.

`ArrayInput` is an input function in the Model Garden's shape,
`input_fn(is_training, data_dir, batch_size, num_epochs=1, dtype=..., ...)`, that also says
what resnet_run_loop.resnet_main needs to know of its data (the number of training images,
the classes, the image shape and the test set an export is checked on). Every Estimator main
passes one to resnet_main; `get_synth_input_fn` is the Model Garden's synthetic input function,
over random images of a given shape.
"""

import dataclasses
import functools

import tensorflow as tf

from official.data import raw_data
from official.data import record_pipeline


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
  before repeat, parses and batches, and prefetches.

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
    raw_data.split_sizes(raw.num_train, validation_size)
    images, labels = raw.train_images[validation_size:], raw.train_labels[validation_size:]
  else:
    images, labels = raw.test_images, raw.test_labels
  return arrays_input_fn(images, labels, is_training, batch_size, num_epochs, dtype=dtype,
                         seed=seed, shift_pixels=shift_pixels,
                         datasets_num_private_threads=datasets_num_private_threads,
                         drop_remainder=drop_remainder, flip=flip)


@dataclasses.dataclass(frozen=True)
class ArrayInput(object):
  """An input function over RawData, and the facts of that data resnet_main records and uses.

  Called as the Model Garden's input functions are; data_dir is ignored (the data was read,
  validated, once), and each call's `seed` shuffles (and augments) differently.
  """
  raw: raw_data.RawData
  shift_pixels: int = 0
  flip: bool = False

  def __call__(self, is_training, data_dir, batch_size, num_epochs=1, dtype=tf.float32,
               datasets_num_private_threads=None, input_context=None, seed=None,
               drop_remainder=False):
    del data_dir, input_context  # read once already; each worker shuffles with its own seed
    return raw_input_fn(self.raw, is_training, batch_size, num_epochs, dtype=dtype, seed=seed,
                        shift_pixels=self.shift_pixels, flip=self.flip,
                        datasets_num_private_threads=datasets_num_private_threads,
                        drop_remainder=drop_remainder)

  @property
  def num_train(self):
    return self.raw.num_train

  @property
  def num_classes(self):
    return self.raw.num_classes

  @property
  def image_shape(self):
    return self.raw.image_shape

  def test_set(self):
    return self.raw.test_set()

  def describe(self):
    """The facts flags.json records: the data's, and the training augmentation."""
    return dict(self.raw.describe(), augmentation={'shift_pixels': self.shift_pixels,
                                                   'flip': self.flip})


def get_synth_input_fn(height, width, num_channels, num_classes, dtype=tf.float32):
  """The Model Garden's synthetic input function: random images of this shape.

  Returns input_fn(is_training, data_dir, batch_size, *args, **kwargs) over
  raw_data.synthetic_raw_data (1,024 training and 256 evaluation images in [0, 1], labels
  cycling over every class), unaugmented. The Model Garden's repeated one random batch forever,
  in [0, 255], with labels that never reached the last class; this one ends after num_epochs as
  a real dataset does, so the run loop's epochs mean the same on both.
  """
  raw = raw_data.synthetic_raw_data(height=height, width=width, num_classes=num_classes,
                                    channels=num_channels)

  def input_fn(is_training, data_dir, batch_size, *args, **kwargs):
    del data_dir
    num_epochs = args[0] if args else kwargs.get('num_epochs', 1)
    return raw_input_fn(raw, is_training, batch_size, num_epochs,
                        dtype=kwargs.get('dtype', dtype), seed=kwargs.get('seed'),
                        drop_remainder=kwargs.get('drop_remainder', False))

  return input_fn
