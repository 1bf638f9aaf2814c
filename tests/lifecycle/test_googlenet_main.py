"""googlenet_main through the shared Estimator run loop: flags, records, auxiliary heads in the
checkpoint but not the export, and an export loaded in a fresh process."""

import json
import os
import subprocess
import sys

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import googlenet_main
from official.utils.logs import run_record
from tests import model_helpers
from tests.conftest import parse_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)
SMALL = ['--width_multiplier=0.125', '--batch_size=50', '--warmup_epochs=0',
         '--batch_norm_batches=2']


def make_flags(argv=()):
  return parse_flags(googlenet_main.define_googlenet_flags, argv, 'googlenet_main')


def _run_main(tmp_path, data_dir, extra=(), name='model'):
  argv = ['--data_dir=%s' % data_dir, '--model_dir=%s' % (tmp_path / name)] + SMALL
  return googlenet_main.run_googlenet(make_flags(argv + list(extra)))


@pytest.mark.parametrize('argv,message', [
    (['--stem=alexnet'], 'value should be one of <mnist|cifar|imagenet>'),
    (['--width_multiplier=0'], '--width_multiplier must be in'),
    (['--aux_loss_weight=-0.3'], '--aux_loss_weight must be zero or more'),
    (['--dropout_rate=1'], '--dropout_rate must be in'),
    (['--aux_dropout_rate=-0.1'], '--aux_dropout_rate must be in'),
    (['--normalization=group'], 'value should be one of <lrn|batch_norm>'),
    (['--resnet_size=18'], 'Unknown command line flag'),
])
def test_bad_flags_fail_with_a_clear_message(argv, message):
  error = flags.UnrecognizedFlagError if 'Unknown' in message else flags.IllegalFlagValueError
  with pytest.raises(error, match=message.replace('|', r'\|')):
    make_flags(argv)


def test_defaults_are_the_paper_s_network_with_the_measured_recipe():
  f = make_flags()
  assert (f.stem, f.width_multiplier, f.aux_loss_weight, f.dropout_rate,
          f.aux_dropout_rate) == ('mnist', 1.0, 0.3, 0.4, 0.7)
  assert f.lr_schedule == 'cosine' and f.train_epochs <= 10


@pytest.mark.slow
def test_end_to_end_on_tiny_idx_data_with_export_loaded_in_a_fresh_process(
    tmp_path, learnable_idx_dir):
  export_dir = str(tmp_path / 'export')
  results = _run_main(tmp_path, learnable_idx_dir, [
      '--train_epochs=2', '--epochs_between_evals=2', '--export_dir=%s' % export_dir,
      '--seed=3'])
  assert results['eval_results']['global_step'] == 2 * 8  # 400 images / 50
  model_dir = str(tmp_path / 'model')
  assert [r.get('epoch', r.get('event')) for r in run_record.read_metrics(model_dir)] == [
      2, 'finished']
  with open(os.path.join(model_dir, 'flags.json')) as f:
    recorded = json.load(f)
  assert recorded['model'] == 'googlenet' and recorded['stem'] == 'mnist'
  assert recorded['width_multiplier'] == 0.125 and recorded['aux_loss_weight'] == 0.3
  # The auxiliary heads train (they are in the checkpoint); the export leaves them out.
  stored = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(model_dir))]
  assert any(name.startswith('googlenet/AuxLogits_4d/') for name in stored)
  images = np.random.RandomState(1).rand(4, 28, 28, 1).astype(np.float32)
  exported, names = model_helpers.exported_probabilities(results['export_path'], images,
                                                         tmp_path)
  assert exported.shape == (4, 10)
  assert names and not [name for name in names if 'Aux' in name]
  predicted = model_helpers.estimator_probabilities(
      model_dir, {'width_multiplier': 0.125}, images, googlenet_main.googlenet_model_fn)
  np.testing.assert_allclose(exported, predicted, atol=1e-5)


@pytest.mark.slow
def test_without_aux_loss_weight_no_auxiliary_heads_are_built(tmp_path, learnable_idx_dir):
  results = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=1', '--aux_loss_weight=0',
                                                    '--stem=imagenet', '--max_train_steps=2',
                                                    '--batch_norm_batches=0'])
  results = results['eval_results']
  assert results['global_step'] == 2 and 0 <= results['accuracy'] <= 1
  checkpoint = tf.train.latest_checkpoint(str(tmp_path / 'model'))
  stored = [name for name, _ in tf.train.list_variables(checkpoint)]
  assert not [name for name in stored if 'Aux' in name]
  assert 'googlenet/Mixed_5b/Branch_2_5x5/kernel' in stored


@pytest.mark.slow
def test_resume_in_bf16_under_the_mirrored_strategy(tmp_path, learnable_idx_dir):
  extra = ['--dtype=bf16', '--distribution_strategy=mirrored', '--num_gpus=0',
           '--batch_norm_batches=0']
  first = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=1'] + extra)
  assert first['eval_results']['global_step'] == 8  # 400 images / 50
  second = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=2'] + extra)
  assert second['eval_results']['global_step'] == 16
  model_dir = str(tmp_path / 'model')
  # The rerun keeps epoch 1's record (trained and recorded), then trains epoch 2.
  records = [r for r in run_record.read_metrics(model_dir) if 'epoch' in r]
  assert [r['epoch'] for r in records] == [1, 2] and records[1]['global_step'] == 16
  with open(os.path.join(model_dir, 'flags.json')) as f:
    recorded = json.load(f)
  # One replica per logical CPU device: this process has one (tests/cluster splits a
  # process's CPU in two for a two-replica run).
  assert recorded['replicas'] == 1 and recorded['distribution_strategy'] == 'mirrored'
  assert recorded['dtype'] == 'bf16'


def test_broken_data_file_exits_with_one_line(tmp_path, learnable_idx_dir):
  with open(os.path.join(learnable_idx_dir, 't10k-labels-idx1-ubyte.gz'), 'wb') as f:
    f.write(b'\x1f\x8b garbage')
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.googlenet_main', '--data_dir=%s' % learnable_idx_dir,
       '--model_dir=%s' % (tmp_path / 'm')], capture_output=True, text=True, timeout=120,
      env=ENV, cwd=REPO)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: t10k-labels-idx1-ubyte.gz: corrupt gzip stream')
  assert not os.path.exists(str(tmp_path / 'm' / 'flags.json'))
