"""AlexNet for MNIST, in the TF1 placeholder style of the report.

After Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks" (NIPS 2012). The original takes 224x224x3 images through five convolutions
(11x11/4 first), overlapping 3x3/2 max-pools and local response normalisation, split across two
GPUs, then three dense layers of 4096, 4096 and 1000 units. For 28x28x1 digits the classic
TensorFlow-tutorial adaptation that the report used keeps the ingredients and shrinks the
sizes: three stages of 3x3 convolution (64, 128, 256 filters, stride 1) -> 2x2/2 max-pool ->
LRN, then two dense layers of 1024 with dropout and a linear output layer. One device, no
grouping.

Initialisation (why the report trained badly): the report drew every weight from
`tf.random_normal` with stddev 1, unseeded. With fan-ins of 576 to 4096 that makes each layer's
activations tens of times larger than its input; the logits are in the thousands, the
softmax saturates, the summed loss starts in the hundreds of thousands and gradients are mostly
zero. We draw weights from a seeded truncated normal with stddev sqrt(2 / fan_in) (He et al.
2015, matched to ReLU) and start biases at zero, which keeps activations at unit scale. The
report's scheme stays available as `init='report'` to reproduce its runs.
"""

import collections
import math

import tensorflow as tf

LRN_ALPHA = 0.001 / 9.0
LRN_BETA = 0.75
LRN_BIAS = 1.0
CONV_FILTERS = (64, 128, 256)
KERNEL_SIZE = 3
POOL_SIZE = 2
DENSE_UNITS = 1024
# The report's input: flat 28x28 grey images ([None, 784]) of 10 classes.
MNIST_IMAGE_SHAPE = (28, 28, 1)
MNIST_NUM_CLASSES = 10
INITIALIZERS = ('he', 'report')
OPTIMIZERS = ('adadelta', 'momentum', 'adam')
MOMENTUM = 0.9


def Convolution(name, inputs, weights, bias):  # pylint: disable=invalid-name
  """3x3 convolution, stride 1, SAME padding, plus bias and ReLU (the report's helper).

  Args:
    name: op name.
    inputs: [batch, height, width, in_channels].
    weights: [k, k, in_channels, out_channels].
    bias: [out_channels].

  Returns:
    [batch, height, width, out_channels].
  """
  conv = tf.nn.conv2d(inputs, weights, strides=[1, 1, 1, 1], padding='SAME')
  return tf.nn.relu(tf.nn.bias_add(conv, bias), name=name)


def Pool(name, inputs, k):  # pylint: disable=invalid-name
  """k x k max-pool with stride k and SAME padding: [b, h, w, c] -> [b, ceil(h/k), ceil(w/k), c]."""
  return tf.nn.max_pool2d(inputs, ksize=[1, k, k, 1], strides=[1, k, k, 1], padding='SAME',
                          name=name)


def Normalize(name, inputs, lsize=4):  # pylint: disable=invalid-name
  """Local response normalisation with the report's constants (bias 1, alpha 0.001/9, beta 0.75)."""
  return tf.nn.lrn(inputs, lsize, bias=LRN_BIAS, alpha=LRN_ALPHA, beta=LRN_BETA, name=name)


def _feature_size(height, width):
  """Flattened size after the three SAME-padded pools."""
  for _ in CONV_FILTERS:
    height, width = math.ceil(height / POOL_SIZE), math.ceil(width / POOL_SIZE)
  return height * width * CONV_FILTERS[-1]


def weight_shapes(image_shape, num_classes):
  """Returns {name: shape} for the weights dict (biases have the last dimension of each)."""
  height, width, channels = image_shape
  shapes = collections.OrderedDict()
  in_channels = channels
  for index, filters in enumerate(CONV_FILTERS, 1):
    shapes['wc%d' % index] = [KERNEL_SIZE, KERNEL_SIZE, in_channels, filters]
    in_channels = filters
  shapes['wd1'] = [_feature_size(height, width), DENSE_UNITS]
  shapes['wd2'] = [DENSE_UNITS, DENSE_UNITS]
  shapes['out'] = [DENSE_UNITS, num_classes]
  return shapes


def make_variables(image_shape=MNIST_IMAGE_SHAPE, num_classes=MNIST_NUM_CLASSES, init='he',
                   seed=0):
  """Creates the weights and biases dicts (the report's `weights` and `bias`).

  Args:
    image_shape: (height, width, channels) of one image; MNIST's by default.
    num_classes: size of the output layer; MNIST's 10 by default.
    init: 'he' (seeded truncated normal, stddev sqrt(2/fan_in), zero biases) or 'report'
      (normal with stddev 1 for weights and biases, as the report did, but seeded).
    seed: op-level seed base; each variable gets seed + its index.

  Returns:
    (weights, biases): dicts of tf.Variable keyed 'wc1'.. 'out' and 'bc1'.. 'out'.

  Raises:
    ValueError: unknown init.
  """
  if init not in INITIALIZERS:
    raise ValueError('unknown init %r; choose one of %s' % (init, ', '.join(INITIALIZERS)))
  weights, biases = {}, {}
  for index, (name, shape) in enumerate(weight_shapes(image_shape, num_classes).items()):
    fan_in = int(math.prod(shape[:-1]))
    bias_name = 'out' if name == 'out' else 'b' + name[1:]
    if init == 'he':
      weight_value = tf.random.truncated_normal(shape, stddev=math.sqrt(2.0 / fan_in),
                                                seed=seed + 2 * index)
      bias_value = tf.zeros([shape[-1]])
    else:
      weight_value = tf.random.normal(shape, seed=seed + 2 * index)
      bias_value = tf.random.normal([shape[-1]], seed=seed + 2 * index + 1)
    with tf.compat.v1.variable_scope('weights'):
      weights[name] = tf.compat.v1.Variable(weight_value, name=name)
    with tf.compat.v1.variable_scope('biases'):
      biases[bias_name] = tf.compat.v1.Variable(bias_value, name=bias_name)
  return weights, biases


def image_shape_of(x, weights):
  """The (height, width, channels) a forward pass reshapes x to: x's own when it is
  [batch, h, w, c]; for flat rows [batch, h * w * c], square images with the channels of
  weights['wc1'] whose three pools give weights['wd1']'s input size (the report's [None, 784]
  and MNIST's weights: 28x28x1).

  Raises:
    ValueError: the shape cannot be told from x and the weights (pass image_shape).
  """
  if x.shape.ndims == 4 and x.shape[1:].is_fully_defined():
    return tuple(int(d) for d in x.shape[1:])
  channels = int(weights['wc1'].shape[2])
  size = x.shape[-1] if x.shape.ndims == 2 else None
  side = round(math.sqrt(size / channels)) if size else 0
  if side and side * side * channels == size and (
      _feature_size(side, side) == int(weights['wd1'].shape[0])):
    return (side, side, channels)
  raise ValueError('cannot tell the image shape of x %s from the weights; pass '
                   'image_shape=(height, width, channels)' % (x.shape,))


def alexnet(x, weights, biases, keep_prob, image_shape=None):
  """The AlexNet-for-MNIST forward pass, called as the report did:
  `pred = alexnet(x, weights, bias, keep_prob)` with x a [None, 784] placeholder.

  Args:
    x: float images, [batch, height * width * channels] (or already [batch, h, w, c]).
    weights, biases: dicts from `make_variables`.
    keep_prob: scalar dropout keep probability (1.0 for evaluation).
    image_shape: (height, width, channels); default: what x and the weights imply
      (image_shape_of).

  Returns:
    logits [batch, num_classes].

  Raises:
    ValueError: image_shape is not given and cannot be told.
  """
  image_shape = image_shape or image_shape_of(x, weights)
  net = tf.reshape(x, [-1] + list(image_shape))
  for index in range(1, len(CONV_FILTERS) + 1):
    net = Convolution('conv%d' % index, net, weights['wc%d' % index], biases['bc%d' % index])
    net = Pool('pool%d' % index, net, k=POOL_SIZE)
    net = Normalize('norm%d' % index, net, lsize=4)
  net = tf.reshape(net, [-1, weights['wd1'].shape[0]])
  for name in ('d1', 'd2'):
    net = tf.nn.relu(tf.matmul(net, weights['w' + name]) + biases['b' + name], name='fc' + name[1])
    net = tf.nn.dropout(net, rate=1.0 - keep_prob)
  return tf.add(tf.matmul(net, weights['out']), biases['out'], name='logits')


def make_optimizer(name, learning_rate):
  """Returns the tf.compat.v1 optimizer called `name` (adadelta, momentum or adam).

  Raises:
    ValueError: unknown name.
  """
  if name == 'adadelta':
    return tf.compat.v1.train.AdadeltaOptimizer(learning_rate)
  if name == 'momentum':
    return tf.compat.v1.train.MomentumOptimizer(learning_rate, MOMENTUM, use_nesterov=True)
  if name == 'adam':
    return tf.compat.v1.train.AdamOptimizer(learning_rate)
  raise ValueError('unknown optimizer %r; choose one of %s' % (name, ', '.join(OPTIMIZERS)))


def count_correct(logits, y, name='num_correct'):
  """How many rows of logits pick the class of their one-hot row of y (int64 scalar)."""
  return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), tf.argmax(y, 1)), tf.int64),
                       name=name)


def shift_images(images, max_shift, pad):
  """Moves each image of [B, h, w, c] by its own random whole-pixel offset in
  [-max_shift, max_shift] along each axis, zeros filling in (zero padding, then a random
  crop). max_shift may be a tensor (0: the images unchanged); pad is the largest it will be."""
  height, width = int(images.shape[1]), int(images.shape[2])
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  starts = pad + tf.random.uniform([tf.shape(images)[0], 2], -max_shift, max_shift + 1,
                                   dtype=tf.int32)
  rows = starts[:, :1] + tf.range(height)[tf.newaxis]
  columns = starts[:, 1:] + tf.range(width)[tf.newaxis]
  shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
  return tf.gather(shifted, columns, axis=2, batch_dims=1)


TrainGraph = collections.namedtuple('TrainGraph', [
    'x', 'y', 'keep_prob', 'logits', 'cross_entropy', 'train_accuracy', 'num_correct',
    'learning_rate', 'train_op', 'global_step', 'epoch', 'increment_epoch', 'weights', 'biases',
    'shift'])


def build_train_graph(image_shape, num_classes, learning_rate, optimizer='adadelta', init='he',
                      seed=0, learning_rate_decay_steps=None, learning_rate_decay_rate=1.0,
                      cosine_decay_steps=None, label_smoothing=0.0, inputs=None,
                      shift_pixels=0):
  """Builds the report's training graph in the default graph.

  Placeholders `x` [None, h*w*c] float, `y` one-hot [None, num_classes] and `keep_prob`
  scalar; softmax cross-entropy on the one-hot labels; the chosen optimizer; an accuracy op;
  `cross_entropy`, `learning_rate` and `train_accuracy` named for logging hooks; a global step
  and an epoch counter that the checkpoints carry, so a rerun resumes where it stopped.

  Args:
    learning_rate_decay_steps: when set, the learning rate is multiplied by
      learning_rate_decay_rate every that many steps (staircase).
    cosine_decay_steps: when set instead, the learning rate falls along a half cosine to zero
      at that step (the run's last): a short run then ends at a small rate.
    label_smoothing: the training targets are (1 - label_smoothing) * one-hot +
      label_smoothing / num_classes (Szegedy et al. 2016); `cross_entropy` is against them.
    inputs: optional (images, one-hot labels) tensors, e.g. from tf.data, used in place of
      the `x` and `y` placeholders (which are then placeholders with these as defaults).
    shift_pixels: when set, a `shift` placeholder (default 0: none) moves each image by up to
      that many pixels (shift_images); the training loop feeds it, evaluations do not.

  Returns:
    TrainGraph of the tensors and ops the run loop needs.
  """
  height, width, channels = image_shape
  if inputs is None:
    x = tf.compat.v1.placeholder(tf.float32, [None, height * width * channels], name='x')
    y = tf.compat.v1.placeholder(tf.float32, [None, num_classes], name='y')
  else:
    x = tf.compat.v1.placeholder_with_default(inputs[0], [None, height * width * channels],
                                              name='x')
    y = tf.compat.v1.placeholder_with_default(inputs[1], [None, num_classes], name='y')
  keep_prob = tf.compat.v1.placeholder_with_default(1.0, [], name='keep_prob')
  global_step = tf.compat.v1.train.get_or_create_global_step()
  epoch = tf.compat.v1.Variable(0, trainable=False, name='epoch', dtype=tf.int64)
  increment_epoch = tf.compat.v1.assign_add(epoch, 1, name='increment_epoch')

  weights, biases = make_variables(image_shape, num_classes, init=init, seed=seed)
  images, shift = x, None
  if shift_pixels:
    shift = tf.compat.v1.placeholder_with_default(0, [], name='shift')
    images = shift_images(tf.reshape(x, [-1, height, width, channels]), shift, shift_pixels)
  logits = alexnet(images, weights, biases, keep_prob, image_shape)
  targets = y * (1.0 - label_smoothing) + label_smoothing / num_classes if label_smoothing else y
  cross_entropy = tf.reduce_mean(
      tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits))
  cross_entropy = tf.identity(cross_entropy, name='cross_entropy')
  num_correct = count_correct(logits, y)
  train_accuracy = tf.identity(tf.cast(num_correct, tf.float32) / tf.cast(tf.shape(y)[0],
                                                                         tf.float32),
                               name='train_accuracy')

  rate = tf.constant(learning_rate, tf.float32)
  if cosine_decay_steps:
    rate = tf.compat.v1.train.cosine_decay(learning_rate, global_step, cosine_decay_steps)
  elif learning_rate_decay_steps:
    rate = tf.compat.v1.train.exponential_decay(
        learning_rate, global_step, learning_rate_decay_steps, learning_rate_decay_rate,
        staircase=True)
  rate = tf.identity(rate, name='learning_rate')
  train_op = make_optimizer(optimizer, rate).minimize(cross_entropy, global_step=global_step)
  return TrainGraph(x, y, keep_prob, logits, cross_entropy, train_accuracy, num_correct, rate,
                    train_op, global_step, epoch, increment_epoch, weights, biases, shift)
