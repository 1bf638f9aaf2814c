"""Residual networks (ResNet) v1.5 and v2, built from tf.nn and tf.compat.v1 ops.

Residual networks: He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition"
(CVPR 2016), https://arxiv.org/abs/1512.03385. Pre-activation (v2): He, Zhang, Ren and Sun,
"Identity Mappings in Deep Residual Networks" (ECCV 2016), https://arxiv.org/abs/1603.05027.

Version 1 here is "v1.5": the downsampling stride sits on the 3x3 convolution of a bottleneck
block rather than the first 1x1, as in the TensorFlow Model Garden's legacy `official` ResNet.

The graph is written with variables from `tf.compat.v1.get_variable` and `tf.nn` ops (no Keras
layers). A model module only builds graphs: it reads no flags and opens no sessions. For MNIST the
same class is configured with a small stem (see mnist_cnn/resnet_main.py); configured for
224x224x3 ImageNet inputs it has exactly the standard parameter counts.

Batch norm evaluates with moving averages of the training batches' statistics. Their ImageNet
decay (0.997, ~330 steps of memory) lags the weights on short runs at a high learning rate: the
6-epoch MNIST run evaluated 0.9489, 0.5212, 0.8351 after epochs 1-3 although it trained well
throughout. The decay is therefore a constructor value (the MNIST main ties it to the run's
length), and the run loop recomputes the statistics from the trained weights before every
evaluation (official/utils/batch_norm_statistics.py): with them (and the cosine schedule that
replaced the step one) the 6-epoch run evaluates 0.9865, 0.9926, 0.9922 after epochs 1-3.
"""

import tensorflow as tf

BATCH_NORM_DECAY = 0.997
BATCH_NORM_EPSILON = 1e-5
DEFAULT_VERSION = 2
DEFAULT_DTYPE = tf.float32
CASTABLE_TYPES = (tf.float16, tf.bfloat16)
ALLOWED_TYPES = (DEFAULT_DTYPE,) + CASTABLE_TYPES
RESNET_VERSIONS = (1, 2)

# resnet_size -> (block sizes, bottleneck), the ImageNet family.
RESNET_SIZES = {
    18: ([2, 2, 2, 2], False),
    34: ([3, 4, 6, 3], False),
    50: ([3, 4, 6, 3], True),
    101: ([3, 4, 23, 3], True),
    152: ([3, 8, 36, 3], True),
    200: ([3, 24, 36, 3], True),
}


def get_block_sizes(resnet_size):
  """Returns (block_sizes, bottleneck) for resnet_size.

  Raises:
    ValueError: resnet_size is not one of RESNET_SIZES; the message lists the valid ones.
  """
  try:
    block_sizes, bottleneck = RESNET_SIZES[resnet_size]
  except KeyError:
    raise ValueError('Could not find layers for resnet_size %s; choose one of %s.' %
                     (resnet_size, ', '.join(str(size) for size in sorted(RESNET_SIZES))))
  return list(block_sizes), bottleneck


def default_data_format():
  """channels_first (NCHW) when a GPU is visible, else channels_last (NHWC, fastest on CPU)."""
  return 'channels_first' if tf.config.list_physical_devices('GPU') else 'channels_last'


################################################################################
# Layers
################################################################################


def batch_norm(inputs, training, data_format, decay=BATCH_NORM_DECAY):
  """Fused batch normalisation with moving averages updated through UPDATE_OPS.

  Args:
    inputs: [N, C, H, W] or [N, H, W, C] tensor.
    training: Python bool; True normalises by batch statistics and adds the moving-average
      updates to tf.compat.v1.GraphKeys.UPDATE_OPS.
    data_format: 'channels_first' or 'channels_last'.
    decay: of the moving averages (a memory of about 1 / (1 - decay) steps); see
      Model.__init__ on choosing it.

  Returns:
    A tensor of the shape and dtype of inputs.
  """
  axis = 1 if data_format == 'channels_first' else 3
  channels = int(inputs.shape[axis])
  fused_format = 'NCHW' if data_format == 'channels_first' else 'NHWC'
  with tf.compat.v1.variable_scope(None, default_name='batch_normalization'):
    gamma = tf.compat.v1.get_variable('gamma', [channels], tf.float32,
                                      tf.compat.v1.ones_initializer())
    beta = tf.compat.v1.get_variable('beta', [channels], tf.float32,
                                     tf.compat.v1.zeros_initializer())
    moving_mean = tf.compat.v1.get_variable(
        'moving_mean', [channels], tf.float32, tf.compat.v1.zeros_initializer(),
        trainable=False)
    moving_variance = tf.compat.v1.get_variable(
        'moving_variance', [channels], tf.float32, tf.compat.v1.ones_initializer(),
        trainable=False)
    # Scale and offset stay float32 even for float16 inputs, as the fused kernel requires.
    gamma, beta = tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)
    if training:
      # The kernel itself blends batch statistics into the moving averages
      # (exponential_avg_factor); the assigns only store what it returns.
      outputs, new_mean, new_variance = tf.compat.v1.nn.fused_batch_norm(
          inputs, gamma, beta, mean=tf.cast(moving_mean, tf.float32),
          variance=tf.cast(moving_variance, tf.float32), epsilon=BATCH_NORM_EPSILON,
          data_format=fused_format, is_training=True,
          exponential_avg_factor=1.0 - decay)
      for variable, value in ((moving_mean, new_mean), (moving_variance, new_variance)):
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS,
                                       tf.compat.v1.assign(variable, value))
    else:
      outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
          inputs, gamma, beta, mean=tf.cast(moving_mean, tf.float32),
          variance=tf.cast(moving_variance, tf.float32), epsilon=BATCH_NORM_EPSILON,
          data_format=fused_format, is_training=False)
  return outputs


def fixed_padding(inputs, kernel_size, data_format):
  """Pads the spatial dimensions by kernel_size - 1 independently of the input size.

  Args:
    inputs: [N, C, H, W] or [N, H, W, C].
    kernel_size: the kernel size a following strided convolution uses.

  Returns:
    The padded tensor (VALID convolution then gives the same output size for any input).
  """
  pad_total = kernel_size - 1
  pad_beg = pad_total // 2
  pad_end = pad_total - pad_beg
  if data_format == 'channels_first':
    paddings = [[0, 0], [0, 0], [pad_beg, pad_end], [pad_beg, pad_end]]
  else:
    paddings = [[0, 0], [pad_beg, pad_end], [pad_beg, pad_end], [0, 0]]
  return tf.pad(inputs, paddings)


def conv2d_fixed_padding(inputs, filters, kernel_size, strides, data_format):
  """Convolution without bias; strided ones use explicit fixed padding and VALID."""
  if strides > 1 and kernel_size > 1:  # a 1x1 kernel needs no padding
    inputs = fixed_padding(inputs, kernel_size, data_format)
  channels_first = data_format == 'channels_first'
  in_channels = int(inputs.shape[1 if channels_first else 3])
  with tf.compat.v1.variable_scope(None, default_name='conv2d'):
    kernel = tf.compat.v1.get_variable(
        'kernel', [kernel_size, kernel_size, in_channels, filters], tf.float32,
        tf.compat.v1.variance_scaling_initializer(scale=2.0, mode='fan_in',
                                                  distribution='truncated_normal'))
    stride_spec = [1, 1, strides, strides] if channels_first else [1, strides, strides, 1]
    return tf.nn.conv2d(inputs, tf.cast(kernel, inputs.dtype), stride_spec,
                        padding='SAME' if strides == 1 else 'VALID',
                        data_format='NCHW' if channels_first else 'NHWC')


def dense(inputs, units):
  """Fully connected layer with bias, variables under 'dense' (fine-tuning trains only these)."""
  in_units = int(inputs.shape[-1])
  with tf.compat.v1.variable_scope('dense'):
    kernel = tf.compat.v1.get_variable('kernel', [in_units, units], tf.float32,
                                       tf.compat.v1.glorot_uniform_initializer())
    bias = tf.compat.v1.get_variable('bias', [units], tf.float32,
                                     tf.compat.v1.zeros_initializer())
    return tf.nn.bias_add(tf.matmul(inputs, tf.cast(kernel, inputs.dtype)),
                          tf.cast(bias, inputs.dtype))


################################################################################
# Blocks
################################################################################


def _building_block_v1(inputs, filters, training, projection_shortcut, strides, data_format,
                       bn_decay):
  """Two 3x3 convolutions, batch norm after each, ReLU after the addition (v1)."""
  shortcut = inputs
  if projection_shortcut is not None:
    shortcut = batch_norm(projection_shortcut(inputs), training, data_format, bn_decay)
  inputs = conv2d_fixed_padding(inputs, filters, 3, strides, data_format)
  inputs = tf.nn.relu(batch_norm(inputs, training, data_format, bn_decay))
  inputs = conv2d_fixed_padding(inputs, filters, 3, 1, data_format)
  inputs = batch_norm(inputs, training, data_format, bn_decay)
  return tf.nn.relu(inputs + shortcut)


def _building_block_v2(inputs, filters, training, projection_shortcut, strides, data_format,
                       bn_decay):
  """Two 3x3 convolutions with batch norm and ReLU before each (pre-activation, v2)."""
  shortcut = inputs
  inputs = tf.nn.relu(batch_norm(inputs, training, data_format, bn_decay))
  if projection_shortcut is not None:
    shortcut = projection_shortcut(inputs)
  inputs = conv2d_fixed_padding(inputs, filters, 3, strides, data_format)
  inputs = tf.nn.relu(batch_norm(inputs, training, data_format, bn_decay))
  inputs = conv2d_fixed_padding(inputs, filters, 3, 1, data_format)
  return inputs + shortcut


def _bottleneck_block_v1(inputs, filters, training, projection_shortcut, strides, data_format,
                         bn_decay):
  """1x1 reduce, 3x3 (strided: v1.5), 1x1 expand to 4 * filters; batch norm after each."""
  shortcut = inputs
  if projection_shortcut is not None:
    shortcut = batch_norm(projection_shortcut(inputs), training, data_format, bn_decay)
  inputs = conv2d_fixed_padding(inputs, filters, 1, 1, data_format)
  inputs = tf.nn.relu(batch_norm(inputs, training, data_format, bn_decay))
  inputs = conv2d_fixed_padding(inputs, filters, 3, strides, data_format)
  inputs = tf.nn.relu(batch_norm(inputs, training, data_format, bn_decay))
  inputs = conv2d_fixed_padding(inputs, 4 * filters, 1, 1, data_format)
  inputs = batch_norm(inputs, training, data_format, bn_decay)
  return tf.nn.relu(inputs + shortcut)


def _bottleneck_block_v2(inputs, filters, training, projection_shortcut, strides, data_format,
                         bn_decay):
  """The bottleneck block with pre-activation (v2)."""
  shortcut = inputs
  inputs = tf.nn.relu(batch_norm(inputs, training, data_format, bn_decay))
  if projection_shortcut is not None:
    shortcut = projection_shortcut(inputs)
  inputs = conv2d_fixed_padding(inputs, filters, 1, 1, data_format)
  inputs = tf.nn.relu(batch_norm(inputs, training, data_format, bn_decay))
  inputs = conv2d_fixed_padding(inputs, filters, 3, strides, data_format)
  inputs = tf.nn.relu(batch_norm(inputs, training, data_format, bn_decay))
  inputs = conv2d_fixed_padding(inputs, 4 * filters, 1, 1, data_format)
  return inputs + shortcut


_BLOCK_FNS = {
    (False, 1): _building_block_v1,
    (False, 2): _building_block_v2,
    (True, 1): _bottleneck_block_v1,
    (True, 2): _bottleneck_block_v2,
}


def block_layer(inputs, filters, bottleneck, block_fn, blocks, strides, training, name,
                data_format, bn_decay=BATCH_NORM_DECAY):
  """One stage: `blocks` blocks, the first with `strides`.

  The first block gets a 1x1 projection shortcut only when it changes the shape (a stride or
  a new channel count); an identity shortcut otherwise, as in the paper. (The Model Garden's
  version always projected, which adds 4,224 parameters to ResNet-18 and -34.)

  Returns:
    The stage's output, named `<name>/output` (via tf.identity).
  """
  filters_out = filters * 4 if bottleneck else filters
  in_channels = int(inputs.shape[1 if data_format == 'channels_first' else 3])

  def projection_shortcut(block_inputs):
    return conv2d_fixed_padding(block_inputs, filters_out, 1, strides, data_format)

  needs_projection = strides != 1 or in_channels != filters_out
  with tf.compat.v1.variable_scope(name):
    inputs = block_fn(inputs, filters, training,
                      projection_shortcut if needs_projection else None, strides, data_format,
                      bn_decay)
    for _ in range(1, blocks):
      inputs = block_fn(inputs, filters, training, None, 1, data_format, bn_decay)
    return tf.identity(inputs, 'output')


class Model(object):
  """A residual network: stem, stacked block layers, global average pool, dense layer."""

  def __init__(self, resnet_size, bottleneck, num_classes, num_filters, kernel_size,
               conv_stride, first_pool_size, first_pool_stride, block_sizes, block_strides,
               resnet_version=DEFAULT_VERSION, data_format=None, dtype=DEFAULT_DTYPE,
               batch_norm_decay=BATCH_NORM_DECAY):
    """Configures the network; the arguments are the Model Garden's, in its order.

    Args:
      resnet_size: the network's depth, recorded (block_sizes and bottleneck build it).
      bottleneck: bottleneck blocks (1x1-3x3-1x1) instead of building blocks (3x3-3x3).
      num_classes: size of the output layer.
      num_filters: filters of the first convolution and first stage; doubled each stage.
      kernel_size: kernel of the first convolution.
      conv_stride: stride of the first convolution.
      first_pool_size: max-pool size after the first convolution; None for no pool.
      first_pool_stride: stride of that pool.
      block_sizes: blocks per stage.
      block_strides: stride of each stage's first block; same length as block_sizes.
      resnet_version: 1 (v1.5) or 2 (pre-activation).
      data_format: 'channels_first', 'channels_last', or None (channels_first only when a GPU
        is visible).
      dtype: float32, or float16/bfloat16 compute with float32 variables.
      batch_norm_decay: decay of the batch-norm moving averages, in [0, 1). The ImageNet value
        (0.997, a memory of ~330 steps) suits runs of 100,000s of steps; on short runs the
        averages lag weights that a high learning rate moves quickly, and the evaluated model
        is not the trained one. mnist_cnn/resnet_main.py ties it to the run's length.

    Raises:
      TypeError: the first argument is a bool (the order before resnet_size came first).
      ValueError: unknown version, data format or dtype, or mismatched block lists.
    """
    if isinstance(resnet_size, bool):
      raise TypeError('Model takes resnet_size first, then bottleneck, as the Model Garden\'s '
                      'does; got the bool %r first' % resnet_size)
    if resnet_version not in RESNET_VERSIONS:
      raise ValueError('resnet_version must be 1 or 2 (see README), got %r' % (resnet_version,))
    data_format = data_format or default_data_format()
    if data_format not in ('channels_first', 'channels_last'):
      raise ValueError("data_format must be 'channels_first' or 'channels_last', got %r (the "
                       "model classes take (resnet_size, data_format, num_classes=...), the "
                       "Model Garden's order)" % (data_format,))
    dtype = tf.as_dtype(dtype)
    if dtype not in ALLOWED_TYPES:
      raise ValueError('dtype must be one of %s, got %s' %
                       (', '.join(t.name for t in ALLOWED_TYPES), dtype.name))
    if len(block_sizes) != len(block_strides):
      raise ValueError('block_sizes and block_strides differ in length: %s vs %s' %
                       (block_sizes, block_strides))
    if not 0 <= batch_norm_decay < 1:
      raise ValueError('batch_norm_decay must be in [0, 1), got %r' % (batch_norm_decay,))
    self.resnet_size = resnet_size
    self.batch_norm_decay = batch_norm_decay
    self.resnet_version = resnet_version
    self.bottleneck = bottleneck
    self.block_fn = _BLOCK_FNS[(bottleneck, resnet_version)]
    self.data_format = data_format
    self.num_classes = num_classes
    self.num_filters = num_filters
    self.kernel_size = kernel_size
    self.conv_stride = conv_stride
    self.first_pool_size = first_pool_size
    self.first_pool_stride = first_pool_stride
    self.block_sizes = list(block_sizes)
    self.block_strides = list(block_strides)
    self.dtype = dtype
    self.pre_activation = resnet_version == 2

  def _custom_dtype_getter(self, getter, name, shape=None, dtype=DEFAULT_DTYPE, *args,
                           **kwargs):
    """Keeps variables in float32 and hands low-precision layers a cast of them.

    Gradients then flow back through the cast to float32 variables, so the optimizer updates
    full-precision weights (mixed precision).
    """
    if dtype in CASTABLE_TYPES:
      variable = getter(name, shape, tf.float32, *args, **kwargs)
      return tf.cast(variable, dtype=dtype, name=name + '_cast')
    return getter(name, shape, dtype, *args, **kwargs)

  def _model_variable_scope(self):
    return tf.compat.v1.variable_scope('resnet_model', custom_getter=self._custom_dtype_getter)

  def __call__(self, inputs, training):
    """Adds the network to the graph.

    Args:
      inputs: [batch, height, width, channels] (NHWC) images.
      training: Python bool; batch norm uses batch statistics and updates moving averages.

    Returns:
      logits [batch, num_classes] in the model's dtype.
    """
    with self._model_variable_scope():
      inputs = tf.cast(inputs, self.dtype)
      if self.data_format == 'channels_first':
        # NCHW is faster on GPUs (cuDNN); see https://www.tensorflow.org/guide/performance
        inputs = tf.transpose(inputs, [0, 3, 1, 2])
      inputs = conv2d_fixed_padding(inputs, self.num_filters, self.kernel_size,
                                    self.conv_stride, self.data_format)
      inputs = tf.identity(inputs, 'initial_conv')
      # v2 leaves the first activation to the first block's pre-activation.
      if not self.pre_activation:
        inputs = tf.nn.relu(
            batch_norm(inputs, training, self.data_format, self.batch_norm_decay))
      if self.first_pool_size:
        channels_first = self.data_format == 'channels_first'
        size, stride = self.first_pool_size, self.first_pool_stride
        inputs = tf.nn.max_pool2d(
            inputs, [1, 1, size, size] if channels_first else [1, size, size, 1],
            [1, 1, stride, stride] if channels_first else [1, stride, stride, 1], 'SAME',
            data_format='NCHW' if channels_first else 'NHWC')
        inputs = tf.identity(inputs, 'initial_max_pool')
      for index, num_blocks in enumerate(self.block_sizes):
        inputs = block_layer(
            inputs, filters=self.num_filters * (2 ** index), bottleneck=self.bottleneck,
            block_fn=self.block_fn, blocks=num_blocks, strides=self.block_strides[index],
            training=training, name='block_layer%d' % (index + 1),
            data_format=self.data_format, bn_decay=self.batch_norm_decay)
      if self.pre_activation:
        inputs = tf.nn.relu(
            batch_norm(inputs, training, self.data_format, self.batch_norm_decay))
      # Global average pooling; reduce_mean is faster than average_pooling2d here.
      axes = [2, 3] if self.data_format == 'channels_first' else [1, 2]
      inputs = tf.reduce_mean(inputs, axes, keepdims=True)
      inputs = tf.identity(inputs, 'final_reduce_mean')
      inputs = tf.squeeze(inputs, axes)
      inputs = dense(inputs, self.num_classes)
      return tf.identity(inputs, 'final_dense')
