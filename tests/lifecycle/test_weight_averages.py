"""--ema_decay through every path: training keeps averages, and evaluation, the recomputed
batch-norm statistics, resume and the export all use them (the Estimator loop and AlexNet's)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import alexnet_main
from mnist_cnn import resnet_main
from official.utils import batch_norm_statistics
from official.utils import export
from official.utils import weight_averages
from official.utils.logs import run_record
from tests import model_helpers
from tests.conftest import parse_flags

SHADOW = '/' + weight_averages.SUFFIX


def _shadows(checkpoint):
  """{variable name: its average} of a checkpoint."""
  return {name[:-len(SHADOW)]: tf.train.load_variable(checkpoint, name)
          for name, _ in tf.train.list_variables(checkpoint) if name.endswith(SHADOW)}


def _exported_variables(export_path):
  loaded = tf.saved_model.load(export_path)
  return {v.name.split(':')[0]: v.numpy() for v in loaded.variables}


def test_averages_follow_the_steps_with_num_updates_warm_up():
  with tf.Graph().as_default():
    step = tf.compat.v1.train.get_or_create_global_step()
    weight = tf.compat.v1.get_variable('w', initializer=0.0)
    train_op = tf.group(tf.compat.v1.assign_add(weight, 1.0),
                        tf.compat.v1.assign_add(step, 1))
    update, averages = weight_averages.apply_after(train_op, 0.9, step, [weight])
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      expected = 0.0
      for n in range(1, 30):
        sess.run(update)
        decay = min(0.9, (1.0 + n) / (10.0 + n))  # num_updates: the step after the update
        expected = decay * expected + (1 - decay) * n
        assert sess.run(averages.average(weight)) == pytest.approx(expected, rel=1e-5)
  assert averages.average_name(weight) == weight_averages.shadow_name('w')


def _resnet(tmp_path, data_dir, extra=(), name='model'):
  flags_obj = parse_flags(resnet_main.define_mnist_flags, [
      '--data_dir=%s' % data_dir, '--model_dir=%s' % (tmp_path / name), '--num_filters=4',
      '--batch_size=50', '--warmup_epochs=0'] + list(extra), 'resnet_main')
  return resnet_main.run_resnet(flags_obj)


@pytest.mark.slow
def test_estimator_evaluates_recomputes_statistics_and_exports_the_averages(
    tmp_path, learnable_idx_dir):
  export_dir = str(tmp_path / 'export')
  stats = _resnet(tmp_path, learnable_idx_dir, [
      '--train_epochs=2', '--ema_decay=0.8', '--batch_norm_batches=2',
      '--export_dir=%s' % export_dir])
  model_dir = str(tmp_path / 'model')
  checkpoint = tf.train.latest_checkpoint(model_dir)
  shadows = _shadows(checkpoint)
  trainable = [name for name in shadows if 'moving_' not in name]
  assert trainable and len(shadows) == len(trainable)  # averages of trainable variables only
  # The last weights stay what training left (the statistics' recomputation puts them back),
  # and differ from their averages.
  assert any(not np.allclose(tf.train.load_variable(checkpoint, name), shadows[name])
             for name in trainable)
  # The export holds the averages where the model has its variables...
  exported = _exported_variables(stats['export_path'])
  for name in trainable:
    np.testing.assert_array_equal(exported[name], shadows[name])
  # ...and the export's accuracy on the test set, measured as it was written, is the
  # evaluation's: one set of weights and batch-norm statistics.
  info = export.read_serving_info(stats['export_path'])
  assert info['test_accuracy']['fp32'] == pytest.approx(stats['eval_results']['accuracy'],
                                                        abs=1e-6)
  # Estimator.predict with the same params restores the averages too.
  images = np.random.RandomState(3).rand(5, 28, 28, 1).astype(np.float32)
  params = model_helpers.resnet_params(ema_decay=0.8, lr_schedule='cosine',
                                       batch_norm_decay=0.9)
  served, _ = model_helpers.exported_probabilities(stats['export_path'], images, tmp_path)
  np.testing.assert_allclose(model_helpers.estimator_probabilities(model_dir, params, images),
                             served, atol=1e-5)
  last = model_helpers.estimator_probabilities(model_dir, dict(params, ema_decay=0.0), images)
  assert not np.allclose(last, served, atol=1e-5)


def _with_weights_set_to_averages(params, checkpoint, target):
  """A copy of checkpoint at target whose last weights are their averages."""
  with tf.Graph().as_default():
    features = tf.zeros([2, 28, 28, 1])
    model_helpers.model_fn(features, tf.zeros([2], tf.int32), tf.estimator.ModeKeys.TRAIN,
                           params)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
      saver.restore(sess, checkpoint)
      for variable, shadow in weight_averages.pairs(tf.compat.v1.global_variables()):
        variable.load(sess.run(shadow), sess)
      saver.save(sess, target, write_meta_graph=False, write_state=False)
  return target


@pytest.mark.slow
def test_statistics_are_recomputed_with_the_averages_and_the_last_weights_kept(
    tmp_path, learnable_idx_dir):
  _resnet(tmp_path, learnable_idx_dir, ['--train_epochs=1', '--ema_decay=0.8',
                                        '--batch_norm_batches=0'])
  checkpoint = tf.train.latest_checkpoint(str(tmp_path / 'model'))
  params = model_helpers.resnet_params(ema_decay=0.8)
  averaged = _with_weights_set_to_averages(params, checkpoint, str(tmp_path / 'avg' / 'ckpt'))
  before = {name: tf.train.load_variable(checkpoint, name)
            for name, _ in tf.train.list_variables(checkpoint)}
  input_fn = lambda: tf.data.Dataset.from_tensors((
      tf.constant(np.random.RandomState(0).rand(50, 28, 28, 1), tf.float32),
      tf.constant(np.arange(50) % 10, tf.int32))).repeat()
  statistics = ('moving_mean', 'moving_variance')

  def recomputed(path):
    batch_norm_statistics.recompute(model_helpers.model_fn, params, input_fn, path, 1)
    return {name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)
            if name.endswith(statistics)}

  # The statistics are those of the averaged weights: the same as where the last weights are
  # the averages, and not those training left.
  from_averages = recomputed(checkpoint)
  for name, value in recomputed(averaged).items():
    np.testing.assert_allclose(from_averages[name], value, rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(from_averages[name], before[name]) for name in from_averages)
  # The last weights, their averages and the step stay as they were, to train on.
  for name, value in before.items():
    if not name.endswith(statistics):
      np.testing.assert_array_equal(tf.train.load_variable(checkpoint, name), value)


@pytest.mark.slow
def test_estimator_resume_keeps_averaging_and_refuses_a_changed_choice(
    tmp_path, learnable_idx_dir, capsys):
  _resnet(tmp_path, learnable_idx_dir, ['--train_epochs=1', '--ema_decay=0.8'])
  model_dir = str(tmp_path / 'model')
  first = _shadows(tf.train.latest_checkpoint(model_dir))
  stats = _resnet(tmp_path, learnable_idx_dir, ['--train_epochs=2', '--ema_decay=0.8'])
  assert stats['eval_results']['global_step'] == 16
  second = _shadows(tf.train.latest_checkpoint(model_dir))
  assert any(not np.allclose(first[n], second[n]) for n in first)

  with open(os.path.join(model_dir, 'flags.json')) as f:
    flags_before = f.read()
  checkpoints = sorted(os.listdir(model_dir))
  with pytest.raises(weight_averages.WeightAverageError, match='without --ema_decay'):
    _resnet(tmp_path, learnable_idx_dir, ['--train_epochs=3'])
  with open(os.path.join(model_dir, 'flags.json')) as f:
    assert f.read() == flags_before  # refused before anything was written
  assert [n for n in sorted(os.listdir(model_dir)) if n != 'metrics.json'] == [
      n for n in checkpoints if n != 'metrics.json']


def _alexnet(model_dir, data_dir, extra=()):
  flags_obj = parse_flags(alexnet_main.define_alexnet_flags, [
      '--data_dir=%s' % data_dir, '--model_dir=%s' % model_dir, '--batch_size=50',
      '--validation_size=0', '--optimizer=adam', '--learning_rate=0.001'] + list(extra),
      'alexnet_main')
  return alexnet_main.run_alexnet(flags_obj)


def test_alexnet_evaluates_and_exports_the_averages(tmp_path, learnable_idx_dir):
  model_dir, export_dir = str(tmp_path / 'model'), str(tmp_path / 'export')
  record = _alexnet(model_dir, learnable_idx_dir, ['--train_epochs=2', '--ema_decay=0.7',
                                                   '--export_dir=' + export_dir])
  checkpoint = tf.train.latest_checkpoint(model_dir)
  shadows = _shadows(checkpoint)
  # every weight and bias (their variables are named weights_<i>/wc1 ... biases_<i>/out)
  assert sorted(name.split('/')[-1] for name in shadows) == sorted(
      ['wc1', 'wc2', 'wc3', 'wd1', 'wd2', 'out', 'bc1', 'bc2', 'bc3', 'bd1', 'bd2', 'out'])
  exported = _exported_variables(record['export_path'])
  for name, value in shadows.items():
    np.testing.assert_array_equal(exported[name], value)
    assert not np.array_equal(tf.train.load_variable(checkpoint, name), value)
  # The record's accuracy is the averages' (the export measured the same); the last weights'
  # stands beside it.
  info = export.read_serving_info(record['export_path'])
  epochs = [r for r in run_record.read_metrics(model_dir) if 'epoch' in r]
  assert epochs[-1]['accuracy'] == info['test_accuracy']['fp32']
  assert all(0 <= r['accuracy_last_weights'] <= 1 for r in epochs)
  with open(os.path.join(model_dir, 'flags.json')) as f:
    assert json.load(f)['ema_decay'] == 0.7


def test_alexnet_resume_refuses_averages_its_checkpoint_lacks(tmp_path, learnable_idx_dir):
  model_dir = str(tmp_path / 'model')
  _alexnet(model_dir, learnable_idx_dir, ['--train_epochs=1', '--max_train_steps=2'])
  with pytest.raises(weight_averages.WeightAverageError,
                     match=r'with --ema_decay=0.9: its run kept no averages.*--clean'):
    _alexnet(model_dir, learnable_idx_dir, ['--train_epochs=2', '--ema_decay=0.9'])
  # --clean starts afresh with them
  _alexnet(model_dir, learnable_idx_dir, ['--train_epochs=1', '--max_train_steps=2',
                                          '--ema_decay=0.9', '--clean'])
  assert _shadows(tf.train.latest_checkpoint(model_dir))


def test_an_export_with_averages_needs_them_in_the_checkpoint(tmp_path, learnable_idx_dir):
  model_dir = str(tmp_path / 'model')
  _alexnet(model_dir, learnable_idx_dir, ['--train_epochs=1', '--max_train_steps=2'])
  with pytest.raises(weight_averages.WeightAverageError, match='holds no average of weights/wc1'):
    alexnet_main.export_model(tf.train.latest_checkpoint(model_dir), str(tmp_path / 'e'),
                              (28, 28, 1), 10, 'fp32', averaged=True)
  assert not os.path.exists(str(tmp_path / 'e')) or not os.listdir(str(tmp_path / 'e'))
