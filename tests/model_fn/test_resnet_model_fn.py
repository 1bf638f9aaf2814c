"""resnet_model_fn in its three modes, weight decay, fine-tuning, and the learning rate."""

import numpy as np
import pytest
import tensorflow as tf

from official.utils import batch_norm_statistics
from official.utils import learning_rate
from official.utils.logs import hooks_helper
from tests import model_helpers


def _features_and_labels(batch=6):
  rng = np.random.RandomState(0)
  return (tf.constant(rng.rand(batch, 28, 28, 1).astype(np.float32)),
          tf.constant(np.arange(batch) % 10, dtype=tf.int32))


def test_model_fn_predict_mode_gives_classes_and_probabilities():
  with tf.Graph().as_default():
    features, _ = _features_and_labels()
    spec = model_helpers.model_fn(features, None, tf.estimator.ModeKeys.PREDICT,
                                  model_helpers.resnet_params())
    assert spec.predictions['classes'].dtype == tf.int64
    assert spec.predictions['probabilities'].shape.as_list() == [6, 10]
    assert 'predict' in spec.export_outputs


def test_model_fn_eval_mode_gives_loss_and_accuracy_metrics():
  with tf.Graph().as_default():
    features, labels = _features_and_labels()
    spec = model_helpers.model_fn(features, labels, tf.estimator.ModeKeys.EVAL,
                                           model_helpers.resnet_params())
    assert set(spec.eval_metric_ops) == {'accuracy', 'accuracy_top_5', 'cross_entropy'}
    assert spec.train_op is None
    with tf.compat.v1.Session() as sess:
      sess.run([tf.compat.v1.global_variables_initializer(),
                tf.compat.v1.local_variables_initializer()])
      assert np.isfinite(sess.run(spec.loss))


@pytest.mark.parametrize('dtype', ['fp32', 'fp16', 'bf16'])
def test_model_fn_train_mode_trains_every_variable_with_a_finite_loss(dtype):
  with tf.Graph().as_default() as graph:
    features, labels = _features_and_labels()
    spec = model_helpers.model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                           model_helpers.resnet_params(dtype=dtype))
    assert spec.loss.dtype == tf.float32
    for name in hooks_helper.TENSORS_TO_LOG.values():
      assert graph.get_tensor_by_name(name + ':0') is not None
    variables = tf.compat.v1.trainable_variables()
    gradients = tf.gradients(spec.loss, variables)
    assert all(g is not None for g in gradients)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      before = sess.run(variables)
      loss = sess.run(spec.loss)
      sess.run(spec.train_op)
      after = sess.run(variables)
  assert np.isfinite(loss)
  assert all(not np.array_equal(b, a) for b, a in zip(before, after))


def test_batch_norm_updates_moving_averages_during_training():
  with tf.Graph().as_default():
    features, labels = _features_and_labels()
    spec = model_helpers.model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                           model_helpers.resnet_params())
    moving = [v for v in tf.compat.v1.global_variables() if 'moving_mean' in v.name]
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      sess.run(spec.train_op)
      assert any(np.abs(value).max() > 0 for value in sess.run(moving))


def test_weight_decay_excludes_batch_norm_variables():
  with tf.Graph().as_default() as graph:
    features, labels = _features_and_labels()
    model_helpers.model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                    model_helpers.resnet_params(weight_decay=0.01))
    variables = tf.compat.v1.trainable_variables()
    l2_loss = graph.get_tensor_by_name('l2_loss:0')
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values, l2_value = sess.run([variables, l2_loss])
  batch_norm = [v for v in variables if 'batch_normalization' in v.name]
  assert batch_norm  # gamma and beta exist and are trainable ...
  expected = 0.01 * sum(float(np.sum(value.astype(np.float64) ** 2)) / 2
                        for variable, value in zip(variables, values)
                        if 'batch_normalization' not in variable.name)
  assert l2_value == pytest.approx(expected, rel=1e-4)  # ... but carry no decay


def test_fine_tune_trains_only_the_dense_layer():
  with tf.Graph().as_default():
    features, labels = _features_and_labels()
    spec = model_helpers.model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                           model_helpers.resnet_params(fine_tune=True))
    variables = tf.compat.v1.trainable_variables()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      before = sess.run(variables)
      sess.run(spec.train_op)
      after = sess.run(variables)
  changed = {v.name for v, b, a in zip(variables, before, after) if not np.array_equal(b, a)}
  assert changed == {'resnet_model/dense/kernel:0', 'resnet_model/dense/bias:0'}


def _rates(rate_fn, steps):
  """{step: the learning rate rate_fn gives at that global step}."""
  with tf.Graph().as_default():
    step = tf.compat.v1.placeholder(tf.int64, [])
    rate = rate_fn(step)
    with tf.compat.v1.Session() as sess:
      return {s: sess.run(rate, {step: s}) for s in steps}


def test_learning_rate_values_at_and_around_boundaries():
  rate_fn = learning_rate.learning_rate_with_decay(
      batch_size=128, batch_denom=256, num_images=1280, boundary_epochs=[2, 4],
      decay_rates=[1, 0.1, 0.01], base_lr=0.2)  # 10 steps per epoch, base 0.1
  values = _rates(rate_fn, (0, 19, 20, 21, 39, 40, 41, 1000))
  assert values[0] == pytest.approx(0.1) and values[19] == pytest.approx(0.1)
  assert values[20] == pytest.approx(0.1) and values[21] == pytest.approx(0.01)
  assert values[40] == pytest.approx(0.01) and values[41] == pytest.approx(0.001)
  assert values[1000] == pytest.approx(0.001)


def test_learning_rate_warms_up_linearly():
  rate_fn = learning_rate.learning_rate_with_decay(
      batch_size=256, batch_denom=256, num_images=2560, boundary_epochs=[5],
      decay_rates=[1, 0.1], base_lr=0.1, warmup_epochs=1)  # warm-up over 10 steps
  values = _rates(rate_fn, (0, 5, 10))
  assert values[0] == pytest.approx(0.0) and values[5] == pytest.approx(0.05)
  assert values[10] == pytest.approx(0.1)
  with pytest.raises(ValueError, match='one more decay rate than boundaries'):
    learning_rate.learning_rate_with_decay(128, 256, 100, [1, 2], [1, 0.1])


def test_cosine_learning_rate_warms_up_then_follows_a_half_cosine_to_zero():
  rate_fn = learning_rate.learning_rate_cosine(
      batch_size=128, batch_denom=256, num_images=1280, train_epochs=5, base_lr=0.2,
      warmup_epochs=1)  # 10 steps per epoch, base 0.1, warm-up over 10 of the 50 steps
  values = _rates(rate_fn, (0, 5, 10, 20, 30, 40, 50, 60))
  assert values[0] == pytest.approx(0.0) and values[5] == pytest.approx(0.05)
  assert values[10] == pytest.approx(0.1)  # the top, where the cosine starts
  assert values[20] == pytest.approx(0.1 * (1 + np.cos(np.pi / 4)) / 2, rel=1e-5)
  assert values[30] == pytest.approx(0.05, rel=1e-5)  # halfway through the cosine
  assert values[40] == pytest.approx(0.1 * (1 + np.cos(3 * np.pi / 4)) / 2, rel=1e-4)
  assert values[50] == pytest.approx(0.0, abs=1e-9) and values[60] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize('total_steps, memory', [
    (100, 10),  # at least 10 batches
    (2814, 28.14),  # a 6-epoch MNIST run at batch 128: 1% of its steps
    (10 ** 6, 1 / (1 - 0.997)),  # long runs keep the ImageNet decay
])
def test_batch_norm_decay_remembers_about_one_percent_of_the_run(total_steps, memory):
  decay = batch_norm_statistics.batch_norm_decay_for(total_steps)
  assert 1 / (1 - decay) == pytest.approx(memory)
