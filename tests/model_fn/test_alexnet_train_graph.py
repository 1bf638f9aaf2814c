"""AlexNet's training graph: loss, optimizers, gradients, named tensors, inputs."""

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import alexnet_model
from official.utils.logs import hooks_helper


def _tiny_batch(num_classes=10, count=40, seed=0):
  rng = np.random.RandomState(seed)
  images = rng.rand(count, 784).astype(np.float32)
  labels = np.eye(num_classes, dtype=np.float32)[np.arange(count) % num_classes]
  return images, labels


def test_a_few_adadelta_steps_lower_the_loss():
  images, labels = _tiny_batch()
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 1.0, optimizer='adadelta')
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      feed = {graph.x: images, graph.y: labels}
      before = sess.run(graph.cross_entropy, feed)
      for _ in range(15):
        sess.run(graph.train_op, {graph.x: images, graph.y: labels, graph.keep_prob: 1.0})
      after = sess.run(graph.cross_entropy, feed)
  assert np.isfinite(after) and after < 0.8 * before


@pytest.mark.parametrize('optimizer', alexnet_model.OPTIMIZERS)
def test_every_trainable_variable_gets_a_finite_nonzero_gradient(optimizer):
  images, labels = _tiny_batch()
  with tf.Graph().as_default():
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 0.01, optimizer=optimizer)
    variables = tf.compat.v1.trainable_variables()
    gradients = tf.gradients(graph.cross_entropy, variables)
    assert all(g is not None for g in gradients)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(gradients, {graph.x: images, graph.y: labels})
  for variable, value in zip(variables, values):
    assert np.all(np.isfinite(value)), variable.name
    assert np.abs(value).max() > 0, variable.name


def test_logged_tensors_exist_in_the_graph():
  with tf.Graph().as_default() as graph:
    alexnet_model.build_train_graph((28, 28, 1), 10, 0.02)
    for name in hooks_helper.TENSORS_TO_LOG.values():
      assert graph.get_tensor_by_name(name + ':0') is not None


def test_train_graph_can_take_its_inputs_from_tensors():
  images, labels = _tiny_batch(count=8)
  with tf.Graph().as_default():
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 0.02,
                                            inputs=(tf.constant(images), tf.constant(labels)))
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      from_tensors = sess.run(graph.logits)
      fed = sess.run(graph.logits, {graph.x: images[:3]})
  assert from_tensors.shape == (8, 10) and fed.shape == (3, 10)
  np.testing.assert_allclose(fed, from_tensors[:3], rtol=1e-5, atol=1e-5)


def test_cosine_schedule_falls_from_the_rate_to_zero_at_the_last_step():
  with tf.Graph().as_default():
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 0.002, optimizer='adam',
                                            cosine_decay_steps=100)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      rates = {}
      for step in (0, 50, 100, 150):
        graph.global_step.load(step, sess)
        rates[step] = sess.run(graph.learning_rate)
  assert rates[0] == pytest.approx(0.002) and rates[50] == pytest.approx(0.001)
  assert rates[100] == pytest.approx(0.0, abs=1e-9) and rates[150] == pytest.approx(0.0, abs=1e-9)


def test_label_smoothing_trains_against_softened_targets():
  images, labels = _tiny_batch(count=8)
  smoothing = 0.2
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 0.01, optimizer='adam',
                                            label_smoothing=smoothing)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      logits, loss = sess.run([graph.logits, graph.cross_entropy],
                              {graph.x: images, graph.y: labels})
  log_probabilities = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
      1, keepdims=True)) - logits.max(1, keepdims=True)
  targets = labels * (1 - smoothing) + smoothing / 10
  assert loss == pytest.approx(-(targets * log_probabilities).sum(1).mean(), rel=1e-4)
