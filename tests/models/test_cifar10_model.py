"""Cifar10Model: the 6n+2 family's sizes, exact parameter counts, shapes and the per-image
standardisation that makes exports answer as the trained model did."""

import numpy as np
import pytest
import tensorflow as tf

from official.resnet import cifar10_main


def expected_parameters(resnet_size, channels=3, num_classes=10):
  """Trainable scalars of a v2 CIFAR ResNet, written out from the paper's description: a 3x3
  convolution of 16 filters; stages of n building blocks with 16, 32, 64 filters, each block
  batch norm (gamma, beta) + 3x3 conv + batch norm + 3x3 conv, a 1x1 projection where a
  stage changes shape; a final batch norm and the dense layer."""
  n = (resnet_size - 2) // 6
  total = 3 * 3 * channels * 16
  in_channels = 16
  for filters in (16, 32, 64):
    for block in range(n):
      block_in = in_channels if block == 0 else filters
      total += 2 * block_in + 9 * block_in * filters + 2 * filters + 9 * filters * filters
      if block == 0 and block_in != filters:
        total += block_in * filters
    in_channels = filters
  return total + 2 * 64 + 64 * num_classes + num_classes


def _count(resnet_size, image_shape=(32, 32, 3), num_classes=10):
  with tf.Graph().as_default():
    model = cifar10_main.Cifar10Model(resnet_size, data_format='channels_last',
                                      num_classes=num_classes)
    logits = model(tf.compat.v1.placeholder(tf.float32, [None] + list(image_shape)), False)
    count = sum(int(np.prod(v.shape)) for v in tf.compat.v1.trainable_variables())
    return count, logits.shape.as_list()


# The paper's figures (He et al. 2016, Table 6) count parameter-free shortcuts (its option A:
# identity with zero padding); like the Model Garden's, ours project with 1x1 convolutions
# where a stage changes shape (16 -> 32 and 32 -> 64 channels).
PROJECTIONS = 16 * 32 + 32 * 64


@pytest.mark.parametrize('resnet_size,millions', [(20, 0.27), (32, 0.46), (56, 0.85)])
def test_parameter_counts_are_the_standard_figures(resnet_size, millions):
  count, shape = _count(resnet_size)
  assert count == expected_parameters(resnet_size)
  assert round((count - PROJECTIONS) / 1e6, 2) == millions
  assert shape == [None, 10]


def test_exact_counts():
  assert [expected_parameters(size) for size in (20, 32, 56)] == [272282, 466714, 855578]


def test_other_image_shapes_and_class_counts_build():
  count, shape = _count(8, image_shape=(20, 16, 1), num_classes=36)
  assert shape == [None, 36]
  assert count == expected_parameters(8, channels=1, num_classes=36)


@pytest.mark.parametrize('size', [18, 21, 52, 2, 0])
def test_sizes_that_are_not_6n_plus_2_are_refused(size):
  with pytest.raises(ValueError, match=r'resnet_size must be 6n\+2'):
    cifar10_main.Cifar10Model(size)


def test_images_are_standardised_inside_the_model():
  """Brightness and contrast do not change the answer: each image is brought to zero mean and
  unit variance before the first convolution, in training, evaluation and exports alike."""
  images = np.random.RandomState(0).rand(3, 32, 32, 3).astype(np.float32)
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(1)
    inputs = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3])
    logits = cifar10_main.Cifar10Model(8, data_format='channels_last')(inputs, False)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      plain = sess.run(logits, {inputs: images})
      shifted = sess.run(logits, {inputs: 0.5 * images + 0.2})
      other = sess.run(logits, {inputs: images[::-1]})
  np.testing.assert_allclose(plain, shifted, atol=1e-4)
  assert not np.allclose(plain, other, atol=1e-4)
