"""Batch-norm statistics recomputed from a checkpoint's weights (precise BN)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import resnet_main
from official.utils import batch_norm_statistics
from official.utils import run_dir
from tests import model_helpers

BATCH = 8
NUM_BATCHES = 3
FIRST_NORM = 'resnet_model/block_layer1/batch_normalization/moving_'  # on the stem's output


def _batches():
  rng = np.random.RandomState(1)
  images = rng.rand(NUM_BATCHES * BATCH, 28, 28, 1).astype(np.float32)
  labels = (np.arange(NUM_BATCHES * BATCH) % 10).astype(np.int32)
  return images, labels


def _input_fn():
  return tf.data.Dataset.from_tensor_slices(_batches()).batch(BATCH)


def _checkpoint(model_dir):
  """A checkpoint a few momentum steps in, moving averages with the slow ImageNet decay."""
  with tf.Graph().as_default():
    features, labels = tf.compat.v1.data.make_one_shot_iterator(
        _input_fn().repeat()).get_next()
    spec = model_helpers.model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                  model_helpers.resnet_params())
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      for _ in range(3):
        sess.run(spec.train_op)
      return saver.save(sess, os.path.join(model_dir, 'model.ckpt'), global_step=3)


def _expected_first_statistics(checkpoint):
  """Per-channel mean and (Bessel-corrected) variance of the first batch-norm input, averaged
  over the batches, computed here from the stem's output with numpy."""
  with tf.Graph().as_default() as graph:
    images = tf.compat.v1.placeholder(tf.float32, [None, 28, 28, 1])
    resnet_main.MnistModel(18, 'channels_last', num_filters=4)(images, True)
    stem = graph.get_tensor_by_name('resnet_model/initial_max_pool:0')
    saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
    with tf.compat.v1.Session() as sess:
      saver.restore(sess, checkpoint)
      all_images, _ = _batches()
      outputs = [sess.run(stem, {images: all_images[i:i + BATCH]})
                 for i in range(0, len(all_images), BATCH)]
  means = [o.mean(axis=(0, 1, 2)) for o in outputs]
  count = outputs[0][..., 0].size
  variances = [o.var(axis=(0, 1, 2)) * count / (count - 1) for o in outputs]
  return np.mean(means, axis=0), np.mean(variances, axis=0)


def test_statistics_are_the_mean_of_batch_statistics_and_nothing_else_changes(tmp_path):
  checkpoint = _checkpoint(str(tmp_path))
  before = {name: tf.train.load_variable(checkpoint, name)
            for name, _ in tf.train.list_variables(checkpoint)}
  state = (tmp_path / 'checkpoint').read_text()
  count = batch_norm_statistics.recompute(model_helpers.model_fn,
                                          model_helpers.resnet_params(), _input_fn, checkpoint,
                                          NUM_BATCHES)
  after = {name: tf.train.load_variable(checkpoint, name) for name in before}
  statistics = [name for name in before if name.endswith(batch_norm_statistics.STATISTICS)]
  assert count == len(statistics) == 2 * 17  # 16 in the blocks, 1 after the last
  mean, variance = _expected_first_statistics(checkpoint)
  np.testing.assert_allclose(after[FIRST_NORM + 'mean'], mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(after[FIRST_NORM + 'variance'], variance, rtol=1e-4, atol=1e-6)
  # With 3 steps at decay 0.997 the stored averages were still near their initial 0 and 1.
  assert not np.allclose(before[FIRST_NORM + 'mean'], after[FIRST_NORM + 'mean'], atol=1e-3)
  for name in set(before) - set(statistics):  # weights, global step, momentum slots
    np.testing.assert_array_equal(before[name], after[name], err_msg=name)
  assert (tmp_path / 'checkpoint').read_text() == state
  assert not [f for f in os.listdir(str(tmp_path)) if 'tmp' in f]


def test_a_checkpoint_of_another_model_is_refused_and_left_alone(tmp_path):
  checkpoint = _checkpoint(str(tmp_path))
  files = {f: (tmp_path / f).read_bytes() for f in os.listdir(str(tmp_path))}

  def without_optimizer(features, labels, mode, params):  # its graph lacks the momentum slots
    del mode
    return model_helpers.model_fn(features, labels, tf.estimator.ModeKeys.EVAL, params)

  with pytest.raises(batch_norm_statistics.StatisticsError, match='variables differ'):
    batch_norm_statistics.recompute(without_optimizer, model_helpers.resnet_params(), _input_fn,
                                    checkpoint, NUM_BATCHES)
  assert {f: (tmp_path / f).read_bytes() for f in os.listdir(str(tmp_path))} == files


def test_files_a_killed_recomputation_left_are_removed_at_the_next_start(tmp_path):
  checkpoint = _checkpoint(str(tmp_path))
  temporary = batch_norm_statistics.temporary_prefix(checkpoint)
  assert os.path.dirname(temporary) == str(tmp_path)
  left = [temporary + '.index', temporary + '.data-00000-of-00001']
  for path in left:
    with open(path, 'wb') as f:
      f.write(b'half')
  checkpoint_files = sorted(f for f in os.listdir(str(tmp_path)) if f.startswith('model.ckpt'))
  run_dir.remove_temporaries(str(tmp_path))
  assert not any(os.path.exists(path) for path in left)
  assert sorted(f for f in os.listdir(str(tmp_path))
                if f.startswith('model.ckpt')) == checkpoint_files


def test_a_model_fn_that_keeps_its_own_decay_is_refused_and_the_checkpoint_left_alone(
    tmp_path):
  checkpoint = _checkpoint(str(tmp_path))
  files = {f: (tmp_path / f).read_bytes() for f in os.listdir(str(tmp_path))}

  def ignores_the_decay(features, labels, mode, params):
    return model_helpers.model_fn(features, labels, mode, dict(params, batch_norm_decay=0.997))

  with pytest.raises(batch_norm_statistics.StatisticsError,
                     match=r"did not build .* with params\['batch_norm_decay'\].*"
                           r"--batch_norm_batches=0"):
    batch_norm_statistics.recompute(ignores_the_decay, model_helpers.resnet_params(), _input_fn,
                                    checkpoint, NUM_BATCHES)
  assert {f: (tmp_path / f).read_bytes() for f in os.listdir(str(tmp_path))} == files
