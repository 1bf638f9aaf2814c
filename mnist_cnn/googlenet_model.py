"""GoogLeNet (Inception v1), built from tf.nn and tf.compat.v1 ops.

Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke and Rabinovich, "Going deeper
with convolutions" (CVPR 2015), https://arxiv.org/abs/1409.4842. The nine inception modules
take their filter counts from the paper's Table 1 (INCEPTION_MODULES); the stems and the two
normalisations are tables too. Configured for 224x224x3 ImageNet inputs (stem 'imagenet',
normalization 'lrn', no auxiliary heads) the network has exactly the paper's 6,998,552
parameters (tests/models/test_googlenet_model.py derives the figure from Table 1).

Like the other model files this one only builds graphs: it reads no flags and opens no
sessions. The network returns its logits and, as tf-slim's inception_v1 did, an `end_points`
dict of every named layer (stem layers, each module 'Mixed_3a'..'Mixed_5b', the pools, and in
training the auxiliary logits 'AuxLogits_4a', 'AuxLogits_4d'), so features can be read from any
module.
"""

import tensorflow as tf

from official.resnet import resnet_model

# Table 1: module -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj). A 3x3/2 max-pool
# precedes 4a and 5a.
INCEPTION_MODULES = (
    ('3a', (64, 96, 128, 16, 32, 32)),
    ('3b', (128, 128, 192, 32, 96, 64)),
    ('4a', (192, 96, 208, 16, 48, 64)),
    ('4b', (160, 112, 224, 24, 64, 64)),
    ('4c', (128, 128, 256, 24, 64, 64)),
    ('4d', (112, 144, 288, 32, 64, 64)),
    ('4e', (256, 160, 320, 32, 128, 128)),
    ('5a', (256, 160, 320, 32, 128, 128)),
    ('5b', (384, 192, 384, 48, 128, 128)),
)
POOL_BEFORE = ('4a', '5a')
AUX_AFTER = ('4a', '4d')
# The auxiliary classifier (section 5): 5x5/3 average pool, 1x1 conv of 128, FC 1024, dropout.
AUX_POOL = (5, 3)
AUX_CONV_FILTERS = 128
AUX_FC_UNITS = 1024
AUX_DROPOUT_RATE = 0.7
DROPOUT_RATE = 0.4

# Stems: ('conv', filters, kernel, stride), ('pool', size, stride) (3x3 max-pools, SAME) or
# ('lrn',). The paper's ImageNet stem divides the image by 8 before module 3a (224 -> 28); on
# 28x28 digits it leaves modules 4 and 5 with 2x2 and 1x1 maps. 'mnist' keeps the paper's
# layers with a 3x3/1 first convolution: 28 -> 7 before 3a, modules 4 at 4x4, 5 at 2x2.
# 'cifar' pools once: 28 -> 14 before 3a (2.8x the arithmetic of 'mnist'). README "GoogLeNet"
# results" has the measurements that chose 'mnist'.
_STEM_TAIL = (('pool', 3, 2), ('lrn',), ('conv', 64, 1, 1), ('conv', 192, 3, 1), ('lrn',))
STEMS = {
    'mnist': (('conv', 64, 3, 1),) + _STEM_TAIL + (('pool', 3, 2),),
    'cifar': (('conv', 64, 3, 1),) + _STEM_TAIL,
    'imagenet': (('conv', 64, 7, 2),) + _STEM_TAIL + (('pool', 3, 2),),
}
STEM_NAMES = {'conv': 'Conv2d_%d', 'pool': 'MaxPool_%d', 'lrn': 'LRN_%d'}

# normalization -> (convolutions have biases, batch norm after each convolution, LRN layers).
# 'lrn' is the paper's network; 'batch_norm' is Ioffe and Szegedy's change to it (2015), which
# drops LRN and the biases.
NORMALIZATIONS = {
    'lrn': (True, False, True),
    'batch_norm': (False, True, False),
}
# LRN as in the paper's Caffe model: 5 channels, alpha 1e-4 (Caffe divides it by the size), k 1.
LRN_DEPTH_RADIUS = 2
LRN_ALPHA = 1e-4 / 5
LRN_BETA = 0.75
CASTABLE_TYPES = (tf.float16, tf.bfloat16)


def scaled(filters, width_multiplier):
  """A layer's width under the multiplier, at least 1."""
  return max(1, int(round(filters * width_multiplier)))


def _cast_getter(getter, name, shape=None, dtype=tf.float32, *args, **kwargs):
  """Float32 variables, handed to float16/bfloat16 layers as casts (mixed precision)."""
  if dtype in CASTABLE_TYPES:
    return tf.cast(getter(name, shape, tf.float32, *args, **kwargs), dtype, name=name + '_cast')
  return getter(name, shape, dtype, *args, **kwargs)


class GoogLeNet(object):
  """Inception v1: a stem, nine inception modules, global average pool, dropout, linear."""

  def __init__(self, num_classes, stem='mnist', width_multiplier=1.0,
               normalization='batch_norm', aux_heads=True, dropout_rate=DROPOUT_RATE,
               aux_dropout_rate=AUX_DROPOUT_RATE, data_format='channels_last',
               dtype=tf.float32, batch_norm_decay=resnet_model.BATCH_NORM_DECAY):
    """Configures the network.

    Args:
      num_classes: size of the output layer (and of each auxiliary one).
      stem: a key of STEMS.
      width_multiplier: every layer's filters (and the auxiliary heads' widths) times this.
      normalization: a key of NORMALIZATIONS.
      aux_heads: build the auxiliary classifiers after 4a and 4d (in training only).
      dropout_rate, aux_dropout_rate: fractions dropped before the linear layers (paper: 0.4
        and 0.7).
      data_format: 'channels_last' (NHWC, fastest on CPU) or 'channels_first'.
      dtype: float32, or float16/bfloat16 compute with float32 variables.
      batch_norm_decay: of the moving averages, with normalization 'batch_norm'.

    Raises:
      ValueError: an unknown stem, normalization, data format or dtype, or a value out of range.
    """
    for name, value, table in (('stem', stem, STEMS), ('normalization', normalization,
                                                         NORMALIZATIONS)):
      if value not in table:
        raise ValueError('unknown %s %r; choose one of %s' % (name, value, ', '.join(table)))
    if data_format not in ('channels_first', 'channels_last'):
      raise ValueError("data_format must be 'channels_first' or 'channels_last', got %r" %
                       (data_format,))
    if width_multiplier <= 0:
      raise ValueError('width_multiplier must be positive, got %r' % (width_multiplier,))
    for name, rate in (('dropout_rate', dropout_rate), ('aux_dropout_rate', aux_dropout_rate)):
      if not 0 <= rate < 1:
        raise ValueError('%s must be in [0, 1), got %r' % (name, rate))
    self.dtype = tf.as_dtype(dtype)
    if self.dtype not in (tf.float32,) + CASTABLE_TYPES:
      raise ValueError('dtype must be float32, float16 or bfloat16, got %s' % self.dtype.name)
    self.num_classes = num_classes
    self.stem = stem
    self.width_multiplier = width_multiplier
    self.use_bias, self.use_batch_norm, self.use_lrn = NORMALIZATIONS[normalization]
    self.aux_heads = aux_heads
    self.dropout_rate = dropout_rate
    self.aux_dropout_rate = aux_dropout_rate
    self.data_format = data_format
    self.batch_norm_decay = batch_norm_decay
    self._channel_axis = 1 if data_format == 'channels_first' else 3

  # Layers ---------------------------------------------------------------------------------

  def _conv(self, inputs, filters, kernel, stride, training, name):
    """Convolution (SAME), then a bias or batch norm, then ReLU."""
    filters = scaled(filters, self.width_multiplier)
    in_channels = int(inputs.shape[self._channel_axis])
    channels_first = self.data_format == 'channels_first'
    with tf.compat.v1.variable_scope(name):
      kernel_var = tf.compat.v1.get_variable(
          'kernel', [kernel, kernel, in_channels, filters], self.dtype,
          tf.compat.v1.variance_scaling_initializer(scale=2.0, mode='fan_in',
                                                    distribution='truncated_normal'))
      outputs = tf.nn.conv2d(inputs, kernel_var,
                             [1, 1, stride, stride] if channels_first else [1, stride, stride, 1],
                             'SAME', data_format='NCHW' if channels_first else 'NHWC')
      if self.use_bias:
        bias = tf.compat.v1.get_variable('bias', [filters], self.dtype,
                                         tf.compat.v1.zeros_initializer())
        outputs = tf.nn.bias_add(outputs, bias,
                                 data_format='NCHW' if channels_first else 'NHWC')
      if self.use_batch_norm:
        outputs = resnet_model.batch_norm(outputs, training, self.data_format,
                                          self.batch_norm_decay)
      return tf.nn.relu(outputs)

  def _pool(self, inputs, size, stride, pooling=tf.nn.max_pool2d, padding='SAME'):
    channels_first = self.data_format == 'channels_first'
    return pooling(inputs, [1, 1, size, size] if channels_first else [1, size, size, 1],
                   [1, 1, stride, stride] if channels_first else [1, stride, stride, 1],
                   padding, data_format='NCHW' if channels_first else 'NHWC')

  def _lrn(self, inputs):
    """Local response normalisation across channels (tf.nn.lrn wants them last)."""
    if self.data_format == 'channels_first':
      inputs = tf.transpose(inputs, [0, 2, 3, 1])
    outputs = tf.nn.lrn(inputs, LRN_DEPTH_RADIUS, bias=1.0, alpha=LRN_ALPHA, beta=LRN_BETA)
    return tf.transpose(outputs, [0, 3, 1, 2]) if self.data_format == 'channels_first' else outputs

  def _dense(self, inputs, units, name):
    in_units = int(inputs.shape[-1])
    with tf.compat.v1.variable_scope(name):
      kernel = tf.compat.v1.get_variable('kernel', [in_units, units], self.dtype,
                                         tf.compat.v1.glorot_uniform_initializer())
      bias = tf.compat.v1.get_variable('bias', [units], self.dtype,
                                       tf.compat.v1.zeros_initializer())
      return tf.nn.bias_add(tf.matmul(inputs, kernel), bias)

  def _dropout(self, inputs, rate, training):
    return tf.nn.dropout(inputs, rate=rate) if training and rate else inputs

  # Blocks ---------------------------------------------------------------------------------

  def inception_module(self, inputs, filters, training, name):
    """Four branches on the same input, concatenated on channels (section 4, Figure 2b)."""
    n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj = filters
    with tf.compat.v1.variable_scope(name):
      branch_1 = self._conv(inputs, n1x1, 1, 1, training, 'Branch_0_1x1')
      branch_3 = self._conv(inputs, n3x3_reduce, 1, 1, training, 'Branch_1_3x3_reduce')
      branch_3 = self._conv(branch_3, n3x3, 3, 1, training, 'Branch_1_3x3')
      branch_5 = self._conv(inputs, n5x5_reduce, 1, 1, training, 'Branch_2_5x5_reduce')
      branch_5 = self._conv(branch_5, n5x5, 5, 1, training, 'Branch_2_5x5')
      branch_pool = self._pool(inputs, 3, 1)
      branch_pool = self._conv(branch_pool, pool_proj, 1, 1, training, 'Branch_3_pool_proj')
      return tf.concat([branch_1, branch_3, branch_5, branch_pool], self._channel_axis,
                       name='output')

  def aux_classifier(self, inputs, training, name):
    """The auxiliary head (section 5). The 5x5/3 average pool shrinks to the whole map where
    the map is smaller than 5x5, so any image size works."""
    spatial = [int(d) for d in (inputs.shape[2:] if self.data_format == 'channels_first'
                                else inputs.shape[1:3])]
    size, stride = AUX_POOL
    if min(spatial) < size:
      size, stride = min(spatial), 1
    with tf.compat.v1.variable_scope(name):
      net = self._pool(inputs, size, stride, pooling=tf.nn.avg_pool2d, padding='VALID')
      net = self._conv(net, AUX_CONV_FILTERS, 1, 1, training, 'Conv2d_1x1')
      net = tf.reshape(net, [-1, net.shape[1:].num_elements()])
      net = tf.nn.relu(self._dense(net, scaled(AUX_FC_UNITS, self.width_multiplier), 'fc'))
      net = self._dropout(net, self.aux_dropout_rate, training)
      return self._dense(net, self.num_classes, 'logits')

  # The network ----------------------------------------------------------------------------

  def _stem(self, net, training, end_points):
    for index, layer in enumerate(STEMS[self.stem], 1):
      name = STEM_NAMES[layer[0]] % index
      if layer[0] == 'conv':
        net = self._conv(net, layer[1], layer[2], layer[3], training, name)
      elif layer[0] == 'pool':
        net = self._pool(net, layer[1], layer[2])
      elif self.use_lrn:
        net = self._lrn(net)
      else:
        continue
      end_points[name] = net = tf.identity(net, name)
    return net

  def __call__(self, inputs, training):
    """Adds the network to the graph.

    Args:
      inputs: [batch, height, width, channels] (NHWC) images of any size and channel count.
      training: Python bool: dropout, batch statistics, and the auxiliary heads.

    Returns:
      (logits [batch, num_classes] in the model's dtype, end_points dict name -> tensor).
    """
    end_points = {}
    with tf.compat.v1.variable_scope('googlenet', custom_getter=_cast_getter):
      net = tf.cast(inputs, self.dtype)
      if self.data_format == 'channels_first':
        net = tf.transpose(net, [0, 3, 1, 2])
      net = self._stem(net, training, end_points)
      for name, filters in INCEPTION_MODULES:
        if name in POOL_BEFORE:
          end_points['MaxPool_%s' % name] = net = self._pool(net, 3, 2)
        end_points['Mixed_%s' % name] = net = self.inception_module(
            net, filters, training, 'Mixed_%s' % name)
        if training and self.aux_heads and name in AUX_AFTER:
          end_points['AuxLogits_%s' % name] = self.aux_classifier(
              net, training, 'AuxLogits_%s' % name)
      axes = [2, 3] if self.data_format == 'channels_first' else [1, 2]
      end_points['AvgPool'] = net = tf.reduce_mean(net, axes, name='global_pool')
      net = self._dropout(net, self.dropout_rate, training)
      end_points['Logits'] = logits = tf.identity(self._dense(net, self.num_classes, 'dense'),
                                                  'logits')
    return logits, end_points


def aux_logits(end_points):
  """The auxiliary heads' logits in end_points (empty outside training), in network order."""
  return [end_points['AuxLogits_%s' % name] for name in AUX_AFTER
          if 'AuxLogits_%s' % name in end_points]
