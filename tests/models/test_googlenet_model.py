"""GoogLeNet's graph: the paper's parameter counts derived from Table 1, shapes at any size,
auxiliary heads in training only, gradients everywhere, the auxiliary loss's weight."""

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import googlenet_model
from official.utils import classifier_model_fn

# Table 1 of the paper, written out here independently of the model file:
# (input channels, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
TABLE_1 = {
    '3a': (192, 64, 96, 128, 16, 32, 32),
    '3b': (256, 128, 128, 192, 32, 96, 64),
    '4a': (480, 192, 96, 208, 16, 48, 64),
    '4b': (512, 160, 112, 224, 24, 64, 64),
    '4c': (512, 128, 128, 256, 24, 64, 64),
    '4d': (512, 112, 144, 288, 32, 64, 64),
    '4e': (528, 256, 160, 320, 32, 128, 128),
    '5a': (832, 256, 160, 320, 32, 128, 128),
    '5b': (832, 384, 192, 384, 48, 128, 128),
}


def conv_params(kernel, in_channels, filters):
  return kernel * kernel * in_channels * filters + filters  # weights + biases


def module_params(inputs, n1x1, n3r, n3, n5r, n5, proj):
  return (conv_params(1, inputs, n1x1) + conv_params(1, inputs, n3r) + conv_params(3, n3r, n3) +
          conv_params(1, inputs, n5r) + conv_params(5, n5r, n5) + conv_params(1, inputs, proj))


def paper_parameters(num_classes=1000):
  stem = conv_params(7, 3, 64) + conv_params(1, 64, 64) + conv_params(3, 64, 192)
  modules = sum(module_params(*row) for row in TABLE_1.values())
  classifier = 1024 * num_classes + num_classes
  return stem + modules + classifier


def aux_head_parameters(in_channels, num_classes=1000):
  # 5x5/3 average pool of a 14x14 map -> 4x4; 1x1 conv of 128; FC 1024; linear.
  return (conv_params(1, in_channels, 128) + (4 * 4 * 128) * 1024 + 1024 +
          1024 * num_classes + num_classes)


def count_parameters(training, shape=(224, 224, 3), num_classes=1000, **config):
  with tf.Graph().as_default():
    model = googlenet_model.GoogLeNet(num_classes, **config)
    images = tf.compat.v1.placeholder(tf.float32, (None,) + shape)
    logits, end_points = model(images, training)
    count = sum(int(np.prod(v.shape)) for v in tf.compat.v1.trainable_variables())
    return count, logits, end_points


def test_the_module_table_is_the_paper_s():
  outputs = {name: sum(row[1:]) - row[2] - row[4] for name, row in TABLE_1.items()}
  assert [name for name, _ in googlenet_model.INCEPTION_MODULES] == list(TABLE_1)
  assert [f for _, f in googlenet_model.INCEPTION_MODULES] == [r[1:] for r in TABLE_1.values()]
  assert outputs == {'3a': 256, '3b': 480, '4a': 512, '4b': 512, '4c': 512, '4d': 528,
                     '4e': 832, '5a': 832, '5b': 1024}


def test_imagenet_configuration_has_the_paper_s_parameter_count():
  assert paper_parameters() == 6998552
  count, logits, end_points = count_parameters(False, stem='imagenet', normalization='lrn')
  assert count == paper_parameters()
  assert logits.shape.as_list() == [None, 1000]
  assert end_points['Mixed_3a'].shape.as_list() == [None, 28, 28, 256]
  assert end_points['Mixed_4e'].shape.as_list() == [None, 14, 14, 832]
  assert end_points['Mixed_5b'].shape.as_list() == [None, 7, 7, 1024]


def test_auxiliary_heads_add_the_count_the_paper_s_design_gives():
  with_aux = paper_parameters() + aux_head_parameters(512) + aux_head_parameters(528)
  assert with_aux == 13378280
  count, _, end_points = count_parameters(True, stem='imagenet', normalization='lrn')
  assert count == with_aux
  assert end_points['AuxLogits_4a'].shape.as_list() == [None, 1000]
  # In evaluation the heads are not built at all.
  count, _, end_points = count_parameters(False, stem='imagenet', normalization='lrn')
  assert count == paper_parameters()
  assert googlenet_model.aux_logits(end_points) == []
  assert not [name for name in end_points if name.startswith('Aux')]


def test_batch_norm_variant_drops_the_biases():
  count, _, _ = count_parameters(False, stem='imagenet', normalization='batch_norm')
  biases = 64 + 64 + 192 + sum(sum(row[1:]) for row in TABLE_1.values())
  assert count == paper_parameters() - biases + 2 * biases  # BN gamma and beta per channel


@pytest.mark.parametrize('stem', sorted(googlenet_model.STEMS))
@pytest.mark.parametrize('shape,num_classes', [((28, 28, 1), 10), ((33, 45, 3), 7),
                                               ((9, 13, 2), 3)])
def test_any_size_and_class_count_runs(stem, shape, num_classes):
  with tf.Graph().as_default():
    model = googlenet_model.GoogLeNet(num_classes, stem=stem, width_multiplier=0.125)
    images = tf.compat.v1.placeholder(tf.float32, (None,) + shape)
    logits, end_points = model(images, True)
    aux = googlenet_model.aux_logits(end_points)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run([logits] + aux, {images: np.random.rand(3, *shape)})
  assert [v.shape for v in values] == [(3, num_classes)] * 3
  assert all(np.isfinite(v).all() for v in values)


def test_channels_first_builds_the_same_shapes():
  with tf.Graph().as_default():
    model = googlenet_model.GoogLeNet(10, width_multiplier=0.25, data_format='channels_first')
    logits, end_points = model(tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1]), True)
    assert logits.shape.as_list() == [None, 10]
    assert end_points['Mixed_3b'].shape.as_list() == [None, 120, 7, 7]


def test_width_multiplier_scales_every_layer():
  with tf.Graph().as_default():
    model = googlenet_model.GoogLeNet(10, width_multiplier=0.5, normalization='lrn')
    _, end_points = model(tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1]), False)
    assert end_points['Mixed_5b'].shape.as_list()[-1] == 512
    assert end_points['Conv2d_5'].shape.as_list() == [None, 14, 14, 96]


@pytest.mark.parametrize('kwargs,message', [
    ({'stem': 'alexnet'}, 'unknown stem'), ({'normalization': 'none'}, 'unknown normalization'),
    ({'width_multiplier': 0}, 'width_multiplier must be positive'),
    ({'dropout_rate': 1.0}, 'dropout_rate must be in'), ({'data_format': 'NHWC'}, 'data_format'),
])
def test_bad_configurations_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    googlenet_model.GoogLeNet(10, **kwargs)


class Recording(object):
  """A GoogLeNet that keeps what the network returned, for checking the loss."""

  def __init__(self, **config):
    self.model = googlenet_model.GoogLeNet(10, batch_norm_decay=0.9, **config)
    self.outputs = None

  def __call__(self, inputs, training):
    self.outputs = self.model(inputs, training)
    return self.outputs


def train_spec(recording, aux_loss_weight, batch=8):
  rng = np.random.RandomState(0)
  images = tf.constant(rng.rand(batch, 28, 28, 1).astype(np.float32))
  labels = tf.constant(rng.randint(0, 10, batch).astype(np.int32))
  return classifier_model_fn.estimator_spec(
      images, labels, tf.estimator.ModeKeys.TRAIN, recording, weight_decay=1e-4,
      learning_rate_fn=lambda step: tf.constant(0.01), momentum=0.9,
      aux_loss_weight=aux_loss_weight), labels


def softmax_cross_entropy(logits, labels):
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return -log_probs[np.arange(len(labels)), labels].mean()


def test_the_auxiliary_loss_enters_the_total_with_its_weight():
  with tf.Graph().as_default() as graph:
    tf.compat.v1.set_random_seed(0)
    recording = Recording(width_multiplier=0.25)
    spec, labels = train_spec(recording, aux_loss_weight=0.3)
    logits, end_points = recording.outputs
    aux = googlenet_model.aux_logits(end_points)
    assert len(aux) == 2
    l2_loss = graph.get_tensor_by_name('l2_loss:0')
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      loss, main, heads, l2, y = sess.run([spec.loss, logits, aux, l2_loss, labels])
  expected = (softmax_cross_entropy(main, y) + 0.3 * sum(
      softmax_cross_entropy(head, y) for head in heads) + l2)
  assert loss == pytest.approx(expected, rel=1e-5)
  assert 0.3 * sum(softmax_cross_entropy(h, y) for h in heads) > 1e-2 * loss  # not negligible


def test_every_variable_gets_a_nonzero_gradient():
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)
    spec, _ = train_spec(Recording(width_multiplier=0.25, normalization='lrn'), 0.3, batch=16)
    variables = tf.compat.v1.trainable_variables()
    gradients = tf.gradients(spec.loss, variables)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      norms = sess.run([tf.norm(g) for g in gradients])
  assert len(variables) == 3 * 2 + 9 * 6 * 2 + 2 + 2 * (2 + 2 + 2)
  assert [v.op.name for v, n in zip(variables, norms) if not n > 0] == []
