"""The ResNet model class: sizes, versions, layouts, stems, precisions."""

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import resnet_main
from official.resnet import resnet_model

IMAGENET_PARAMETERS = {18: 11689512, 34: 21797672, 50: 25557032, 101: 44549160,
                       152: 60192808}


def _trainable_count():
  return sum(int(np.prod(v.shape)) for v in tf.compat.v1.trainable_variables())


@pytest.mark.parametrize('size', sorted(IMAGENET_PARAMETERS))
def test_imagenet_configuration_has_the_standard_parameter_count(size):
  block_sizes, bottleneck = resnet_model.get_block_sizes(size)
  with tf.Graph().as_default():
    model = resnet_model.Model(size, bottleneck, 1000, num_filters=64, kernel_size=7,
                               conv_stride=2, first_pool_size=3, first_pool_stride=2,
                               block_sizes=block_sizes, block_strides=[1, 2, 2, 2],
                               resnet_version=1, data_format='channels_last')
    logits = model(tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3]), training=False)
    assert logits.shape.as_list() == [None, 1000]
    assert _trainable_count() == IMAGENET_PARAMETERS[size]


@pytest.mark.parametrize('size', sorted(resnet_model.RESNET_SIZES))
@pytest.mark.parametrize('version', [1, 2])
@pytest.mark.parametrize('data_format', ['channels_last', 'channels_first'])
def test_output_shape_for_every_size_version_and_format(size, version, data_format):
  with tf.Graph().as_default():
    model = resnet_main.MnistModel(size, num_classes=7, num_filters=4, resnet_version=version,
                                   data_format=data_format)
    logits = model(tf.zeros([3, 28, 28, 1]), training=True)
    assert logits.shape.as_list() == [3, 7]


@pytest.mark.parametrize('size,version', [(18, 1), (18, 2), (50, 1), (50, 2)])
def test_forward_pass_runs_on_cpu_at_odd_batch_and_class_counts(size, version):
  with tf.Graph().as_default():
    model = resnet_main.MnistModel(size, num_classes=3, num_filters=4, resnet_version=version,
                                   data_format='channels_last')
    logits = model(tf.random.uniform([5, 28, 28, 1], seed=0), training=False)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(logits)
  assert values.shape == (5, 3) and np.all(np.isfinite(values))


@pytest.mark.parametrize('stem,spatial', [('mnist', 2), ('cifar', 4), ('imagenet', 1)])
def test_stems_set_the_final_feature_map_size(stem, spatial):
  with tf.Graph().as_default() as graph:
    model = resnet_main.MnistModel(18, num_classes=10, stem=stem, num_filters=4,
                                   data_format='channels_last')
    model(tf.zeros([2, 28, 28, 1]), training=False)
    final = graph.get_tensor_by_name('resnet_model/block_layer4/output:0')
    assert final.shape.as_list() == [2, spatial, spatial, 32]


def test_bad_size_version_format_and_stem_raise_value_errors():
  with pytest.raises(ValueError, match='resnet_size 19; choose one of 18, 34, 50, 101, 152, '
                     '200'):
    resnet_model.get_block_sizes(19)
  with pytest.raises(ValueError, match='resnet_version must be 1 or 2'):
    resnet_main.MnistModel(18, num_classes=10, resnet_version=3)
  with pytest.raises(ValueError, match='data_format must be'):
    resnet_main.MnistModel(18, num_classes=10, data_format='NHWC')
  with pytest.raises(ValueError, match='unknown stem'):
    resnet_main.MnistModel(18, num_classes=10, stem='huge')


def test_the_order_before_the_model_gardens_is_refused_naming_the_order():
  # resnet_size used to come after bottleneck, and MnistModel took num_classes second.
  with pytest.raises(TypeError, match='takes resnet_size first'):
    resnet_model.Model(False, 10, 4, 3, 1, None, None, [1], [1], 2)
  with tf.Graph().as_default(), pytest.raises(
      ValueError, match=r"got 10 \(the model classes take \(resnet_size, data_format, "):
    resnet_main.MnistModel(18, 10)


@pytest.mark.parametrize('dtype', [tf.float16, tf.bfloat16])
def test_low_precision_models_keep_float32_variables(dtype):
  with tf.Graph().as_default():
    model = resnet_main.MnistModel(18, num_classes=10, num_filters=4, data_format='channels_last',
                                   dtype=dtype)
    logits = model(tf.zeros([2, 28, 28, 1]), training=True)
    assert logits.dtype == dtype
    assert {v.dtype.base_dtype for v in tf.compat.v1.global_variables()} == {tf.float32}
