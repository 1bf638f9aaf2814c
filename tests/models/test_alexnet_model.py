"""AlexNet's graph: shapes, parameters, the report's layout and helpers, initialisation, checkpoints."""

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import alexnet_model

MNIST_PARAMETERS = (576 + 64) + (73728 + 128) + (294912 + 256) + (4096 * 1024 + 1024) + (
    1024 * 1024 + 1024) + (1024 * 10 + 10)


def _param_count(variables):
  return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize('image_shape,num_classes,batch', [((28, 28, 1), 10, 3),
                                                           ((20, 12, 1), 7, 5)])
def test_logits_shape_at_odd_batch_and_class_counts(image_shape, num_classes, batch):
  with tf.Graph().as_default():
    graph = alexnet_model.build_train_graph(image_shape, num_classes, 0.02)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      logits = sess.run(graph.logits, {graph.x: np.zeros((batch, int(np.prod(image_shape))))})
  assert logits.shape == (batch, num_classes)


def test_trainable_parameter_count_for_mnist():
  with tf.Graph().as_default():
    alexnet_model.build_train_graph((28, 28, 1), 10, 0.02)
    assert _param_count(tf.compat.v1.trainable_variables()) == MNIST_PARAMETERS == 5624842


def test_weights_and_biases_dicts_have_the_report_layout():
  with tf.Graph().as_default():
    weights, biases = alexnet_model.make_variables((28, 28, 1), 10)
  assert sorted(weights) == ['out', 'wc1', 'wc2', 'wc3', 'wd1', 'wd2']
  assert sorted(biases) == ['bc1', 'bc2', 'bc3', 'bd1', 'bd2', 'out']
  assert [weights[k].shape.as_list() for k in ('wc1', 'wc2', 'wc3', 'wd1')] == [
      [3, 3, 1, 64], [3, 3, 64, 128], [3, 3, 128, 256], [4096, 1024]]


def test_helpers_match_their_tf_nn_definitions():
  with tf.Graph().as_default():
    inputs = tf.constant(np.random.RandomState(0).rand(2, 5, 5, 6).astype(np.float32))
    pooled = alexnet_model.Pool('p', inputs, 2)
    normalised = alexnet_model.Normalize('n', inputs)
    expected_norm = tf.nn.lrn(inputs, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
    with tf.compat.v1.Session() as sess:
      pooled, normalised, expected_norm = sess.run([pooled, normalised, expected_norm])
  assert pooled.shape == (2, 3, 3, 6)
  np.testing.assert_allclose(normalised, expected_norm)


def test_he_initialisation_is_seeded_and_scaled():
  def first_weights(seed):
    with tf.Graph().as_default():
      weights, _ = alexnet_model.make_variables((28, 28, 1), 10, seed=seed)
      with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        return sess.run(weights['wd1'])
  first, again, other = first_weights(1), first_weights(1), first_weights(2)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  # Truncated normal with stddev sqrt(2/4096) has a sample stddev of about 0.88 of that.
  assert abs(first.std() / np.sqrt(2.0 / 4096) - 0.88) < 0.03


def test_unknown_init_and_optimizer_are_rejected():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match='unknown init'):
      alexnet_model.make_variables((28, 28, 1), 10, init='xavier')
    with pytest.raises(ValueError, match='unknown optimizer .* adadelta, momentum, adam'):
      alexnet_model.make_optimizer('sgd', 0.1)


def _tiny_batch(num_classes=10, count=40, seed=0):
  rng = np.random.RandomState(seed)
  images = rng.rand(count, 784).astype(np.float32)
  labels = np.eye(num_classes, dtype=np.float32)[np.arange(count) % num_classes]
  return images, labels


def test_checkpoint_save_and_restore_give_identical_predictions(tmp_path):
  images, _ = _tiny_batch()
  prefix = str(tmp_path / 'model.ckpt')
  predictions = []
  for restore in (False, True):
    with tf.Graph().as_default():
      tf.compat.v1.set_random_seed(1 if not restore else 2)  # different init when restoring
      graph = alexnet_model.build_train_graph((28, 28, 1), 10, 0.02)
      saver = tf.compat.v1.train.Saver()
      with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        if restore:
          saver.restore(sess, prefix)
        else:
          saver.save(sess, prefix)
        predictions.append(sess.run(graph.logits, {graph.x: images}))
  np.testing.assert_array_equal(predictions[0], predictions[1])


def test_shift_images_moves_each_image_by_its_own_offset_within_the_bound():
  images = np.random.RandomState(0).rand(64, 9, 7, 2).astype(np.float32) + 1  # no zeros
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(1)
    shift = tf.compat.v1.placeholder_with_default(0, [])
    shifted = alexnet_model.shift_images(tf.constant(images), shift, 3)
    with tf.compat.v1.Session() as sess:
      np.testing.assert_array_equal(sess.run(shifted), images)  # default 0: unchanged
      moved = sess.run(shifted, {shift: 2})
  seen = set()
  for image, out in zip(images, moved):
    padded = np.pad(image, [(2, 2), (2, 2), (0, 0)])
    offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
               if np.array_equal(out, padded[2 + dy:11 + dy, 2 + dx:9 + dx])]
    assert len(offsets) == 1, 'not a translation within 2 pixels'
    seen.add(offsets[0])
  assert len(seen) > 10  # each image drew its own offset
