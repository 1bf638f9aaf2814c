"""The Estimator run loop through the run lifecycle: train, resume, stop, evaluate, warm start, export, flags."""

import json
import os
import subprocess
import sys

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import resnet_main
from official.utils import session_config
from official.utils.logs import run_record
from tests import model_helpers
from tests.conftest import parse_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)


def make_flags(argv=()):
  return parse_flags(resnet_main.define_mnist_flags, argv, 'resnet_main')


def test_thread_pool_settings_are_computed_from_values(monkeypatch):
  monkeypatch.delenv('TF_GPU_THREAD_MODE', raising=False)
  monkeypatch.delenv('TF_GPU_THREAD_COUNT', raising=False)
  values = session_config.gpu_thread_settings(0, None, 'gpu_private', 3, num_gpus=2)
  assert os.environ['TF_GPU_THREAD_MODE'] == 'gpu_private'
  assert os.environ['TF_GPU_THREAD_COUNT'] == '3'
  assert values['inter_op_parallelism_threads'] == 4  # two per GPU
  assert values['datasets_num_private_threads'] >= 1
  plain = session_config.gpu_thread_settings(0, 2, None, 0)
  assert plain == {'inter_op_parallelism_threads': 0, 'datasets_num_private_threads': 2}


@pytest.mark.parametrize('argv,message', [
    (['--resnet_size=19'], 'value should be one of <18|34|50|101|152|200>'),
    (['--resnet_version=3'], 'value should be one of <1|2>'),
    (['--hooks=LoggingTensorHook,badhook'], '--hooks takes only these names'),
    (['--dtype=fp64'], 'value should be one of <fp32|fp16|bf16>'),
    (['--label_smoothing=1.5'], '--label_smoothing must be in'),
    (['--weight_decay=-1'], '--weight_decay must be zero or more'),
])
def test_bad_flags_fail_with_a_clear_message(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message.replace('|', r'\|')):
    make_flags(argv)


def _run_main(tmp_path, data_dir, extra=(), name='model'):
  argv = ['--data_dir=%s' % data_dir, '--model_dir=%s' % (tmp_path / name),
          '--num_filters=4', '--batch_size=50', '--warmup_epochs=0'] + list(extra)
  return resnet_main.run_resnet(make_flags(argv))


@pytest.mark.slow
def test_end_to_end_on_tiny_idx_data_with_export_loaded_in_a_fresh_process(
    tmp_path, learnable_idx_dir):
  export_dir = str(tmp_path / 'export')
  stats = _run_main(tmp_path, learnable_idx_dir, [
      '--train_epochs=2', '--export_dir=%s' % export_dir, '--shift_pixels=0',
      '--hooks=LoggingTensorHook,ExamplesPerSecondHook'])
  results = stats['eval_results']
  assert results['global_step'] == 2 * 8  # 400 images / 50
  assert 0 <= results['accuracy'] <= 1 and 'accuracy_top_5' in results
  assert len(stats['train_hooks']) == 2
  model_dir = str(tmp_path / 'model')
  records = run_record.read_metrics(model_dir)
  assert [r.get('epoch', r.get('event')) for r in records] == [1, 2, 'finished']
  with open(os.path.join(model_dir, 'flags.json')) as f:
    recorded = json.load(f)
  assert recorded['resnet_size'] == '18' and recorded['model'] == 'resnet'
  version = os.path.basename(stats['export_path'])
  assert version.isdigit() and os.listdir(export_dir) == [version]

  images = np.random.RandomState(1).rand(4, 28, 28, 1).astype(np.float32)
  exported, _ = model_helpers.exported_probabilities(stats['export_path'], images, tmp_path)
  assert exported.shape == (4, 10)

  # The Estimator's own predictions from the checkpoint agree with the export.
  predicted = model_helpers.estimator_probabilities(model_dir, model_helpers.resnet_params(),
                                                    images)
  np.testing.assert_allclose(exported, predicted, atol=1e-5)


@pytest.mark.slow
def test_resume_continues_to_the_target_and_does_not_retrain(tmp_path, learnable_idx_dir):
  first = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=1'])
  assert first['eval_results']['global_step'] == 8
  second = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=2'])
  assert second['eval_results']['global_step'] == 16
  again = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=2'])
  assert again['eval_results']['global_step'] == 16
  # A rerun keeps the records of the epochs it finds trained and recorded (evaluating them
  # again would record the newest checkpoint under an old epoch); with nothing left to train
  # it evaluates the last checkpoint once.
  records = run_record.read_metrics(str(tmp_path / 'model'))
  assert [r.get('epoch', r.get('event')) for r in records] == [
      1, 'finished', 2, 'finished', 'eval_only', 'finished']
  assert [r['global_step'] for r in records if 'accuracy' in r] == [8, 16, 16]
  assert records[-2]['accuracy'] == again['eval_results']['accuracy']


@pytest.mark.slow
def test_stop_threshold_stops_after_the_first_evaluation_that_reaches_it(
    tmp_path, learnable_idx_dir):
  results = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=5',
                                                    '--stop_threshold=0.01'])
  # An untrained batch norm can score 0 on the 100 test images: the first epoch that reaches
  # the threshold ends the run, whichever it is (8 steps an epoch).
  epochs = [r for r in run_record.read_metrics(str(tmp_path / 'model')) if 'epoch' in r]
  assert epochs[-1]['accuracy'] >= 0.01 and len(epochs) < 5
  assert all(r['accuracy'] < 0.01 for r in epochs[:-1])
  assert results['eval_results']['global_step'] == 8 * len(epochs)


@pytest.mark.slow
def test_each_cycle_recomputes_batch_norm_statistics_before_evaluating(
    tmp_path, learnable_idx_dir, capsys):
  _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=2', '--batch_norm_batches=3'])
  out = capsys.readouterr().out
  assert out.count('Batch-norm statistics of 17 layers recomputed over 3 training batches') == 2
  with open(str(tmp_path / 'model' / 'flags.json')) as f:
    recorded = json.load(f)
  # 16 steps in all (400 images, batch 50): the 10-step floor of the moving averages' memory
  assert recorded['batch_norm_decay_used'] == pytest.approx(0.9)
  assert recorded['lr_schedule'] == 'cosine' and recorded['batch_norm_batches'] == 3
  assert not [f for f in os.listdir(str(tmp_path / 'model')) if 'tmp' in f]
  _run_main(tmp_path, learnable_idx_dir, ['--max_train_steps=2', '--batch_norm_batches=0'],
            name='plain')
  assert 'recomputed' not in capsys.readouterr().out


@pytest.mark.slow
def test_synthetic_data_run_with_max_train_steps_and_image_bytes_export(tmp_path):
  export_dir = str(tmp_path / 'export')
  results = resnet_main.run_resnet(make_flags([
      '--use_synthetic_data', '--model_dir=%s' % (tmp_path / 'model'), '--num_filters=4',
      '--batch_size=8', '--max_train_steps=2', '--export_dir=%s' % export_dir,
      '--image_bytes_as_serving_input']))
  assert results['eval_results']['global_step'] == 2
  png = tf.io.encode_png(tf.cast(tf.random.uniform([40, 30, 3], maxval=255), tf.uint8))
  fn = tf.saved_model.load(results['export_path']).signatures['serving_default']
  out = fn(image_bytes=tf.stack([png, png]))
  assert out['probabilities'].shape == (2, 10)
  assert out['classes'].dtype == tf.int64


@pytest.mark.slow
def test_eval_only_evaluates_the_existing_checkpoint(tmp_path, learnable_idx_dir):
  _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=1'])
  results = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=3', '--eval_only'])
  assert results['eval_results']['global_step'] == 8


def test_broken_data_file_exits_with_one_line(tmp_path, learnable_idx_dir):
  with open(os.path.join(learnable_idx_dir, 't10k-images-idx3-ubyte.gz'), 'wb') as f:
    f.write(b'\x1f\x8b garbage')
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.resnet_main', '--data_dir=%s' % learnable_idx_dir,
       '--model_dir=%s' % (tmp_path / 'm')], capture_output=True, text=True, timeout=120,
      env=ENV, cwd=REPO)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: t10k-images-idx3-ubyte.gz: corrupt gzip stream')


@pytest.mark.slow
def test_warm_start_with_fine_tune_keeps_pretrained_convolutions(tmp_path, learnable_idx_dir):
  _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=1'], name='pretrained')
  pretrained = tf.train.latest_checkpoint(str(tmp_path / 'pretrained'))
  _run_main(tmp_path, learnable_idx_dir, [
      '--train_epochs=1', '--max_train_steps=2', '--fine_tune',
      '--pretrained_model_checkpoint_path=%s' % pretrained], name='tuned')
  before = tf.train.load_checkpoint(pretrained)
  after = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / 'tuned')))
  assert after.get_tensor('global_step') == 2
  kernel = 'resnet_model/conv2d/kernel'
  np.testing.assert_array_equal(after.get_tensor(kernel), before.get_tensor(kernel))
  dense = 'resnet_model/dense/kernel'
  assert not np.array_equal(after.get_tensor(dense), before.get_tensor(dense))
