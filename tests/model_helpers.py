"""Estimator params of a small ResNet, for tests that call resnet_model_fn themselves."""

import tensorflow as tf

from mnist_cnn import resnet_main


def resnet_params(**overrides):
  """resnet_model_fn params of a 4-filter ResNet-18 for 10 classes, in fp32."""
  params = {
      'model': lambda dtype, batch_norm_decay=0.997: resnet_main.MnistModel(
          18, 10, num_filters=4, data_format='channels_last', dtype=dtype,
          batch_norm_decay=batch_norm_decay),
      'num_classes': 10, 'weight_decay': 1e-4, 'momentum': 0.9, 'dtype': 'fp32',
      'learning_rate_fn': lambda step: tf.constant(0.1), 'loss_scale': None,
      'fine_tune': False, 'label_smoothing': 0.0}
  params.update(overrides)
  return params
