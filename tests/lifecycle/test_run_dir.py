"""Training over damaged or unusable directories: never a silent restart, nothing lost.

Before this, a garbage `checkpoint` state file or a deleted newest `.index` made both mains
retrain from step 0 and exit 0; kill -9 left stale checkpoints, temporaries and export staging
forever, and an epoch's checkpoint could exist without its metrics line; unwritable
directories gave tracebacks, the export one only after training.
"""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from mnist_cnn import alexnet_main
from mnist_cnn import resnet_main
from official.utils import run_dir
from official.utils.logs import run_record
from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)
ALEXNET = ['--batch_size=100', '--validation_size=0', '--optimizer=adam',
           '--learning_rate=0.001']


def _alexnet(data_dir, model_dir, *extra):
  return alexnet_main.run_alexnet(conftest.parse_flags(
      alexnet_main.define_alexnet_flags,
      ['--data_dir=' + data_dir, '--model_dir=' + model_dir] + ALEXNET + list(extra)))


def _resnet(model_dir, *extra):
  """The last evaluation of a tiny synthetic ResNet run."""
  return resnet_main.run_resnet(conftest.parse_flags(resnet_main.define_mnist_flags, [
      '--use_synthetic_data', '--model_dir=' + model_dir, '--num_filters=4', '--batch_size=8',
      '--save_checkpoints_secs=1'] + list(extra)))['eval_results']


def _steps(model_dir):
  return sorted(int(p.rsplit('-', 1)[1][:-len('.index')])
                for p in glob.glob(os.path.join(model_dir, '*.index')))


def _main(module, *argv, timeout=300):
  return subprocess.run([sys.executable, '-m', module] + list(argv), capture_output=True,
                        text=True, timeout=timeout, env=ENV, cwd=REPO)


def _whole_split(module):
  # AlexNet checks its data (200 examples here: too few for the default 5,000-image validation
  # split) before --model_dir; these tests are about the directories.
  return ['--validation_size=0'] if module == 'mnist_cnn.alexnet_main' else []


@pytest.fixture
def data_dir(tmp_path):
  directory = str(tmp_path / 'data')
  conftest.write_idx_dir(directory, num_train=200, num_test=50, learnable=True)
  return directory


################################################################################
# Damaged checkpoints
################################################################################


@pytest.mark.slow
@pytest.mark.parametrize('damage', ['garbage_state_file', 'newest_index_deleted'])
def test_alexnet_resumes_from_the_newest_intact_checkpoint(tmp_path, data_dir, capsys, damage):
  model_dir = str(tmp_path / 'model')
  _alexnet(data_dir, model_dir, '--train_epochs=3')
  assert _steps(model_dir) == [2, 4, 6]
  if damage == 'garbage_state_file':
    with open(os.path.join(model_dir, 'checkpoint'), 'w') as f:
      f.write('\x00 not a checkpoint state ][')
    resumed_at = 6
  else:
    os.remove(os.path.join(model_dir, 'model.ckpt-6.index'))
    resumed_at = 4
  capsys.readouterr()
  result = _alexnet(data_dir, model_dir, '--train_epochs=4')
  out = capsys.readouterr().out
  assert 'Resuming from %s' % os.path.join(model_dir, 'model.ckpt-%d' % resumed_at) in out
  if damage == 'newest_index_deleted':
    assert 'skipping checkpoint model.ckpt-6 (its .index file is missing)' in out
  else:
    assert 'state file does not parse' in out
  assert result['global_step'] == resumed_at + 2 * (4 - resumed_at // 2)
  assert tf.train.latest_checkpoint(model_dir).endswith('model.ckpt-%d' % result['global_step'])


@pytest.mark.slow
def test_resnet_resumes_from_the_newest_intact_checkpoint(tmp_path, capsys):
  model_dir = str(tmp_path / 'model')
  _resnet(model_dir, '--max_train_steps=3', '--train_epochs=1')
  first = _steps(model_dir)
  assert first[-1] == 3
  with open(os.path.join(model_dir, 'checkpoint'), 'w') as f:
    f.write('garbage')
  capsys.readouterr()
  result = _resnet(model_dir, '--max_train_steps=5', '--train_epochs=1')
  out = capsys.readouterr().out
  assert 'state file does not parse' in out
  assert result['global_step'] == 5
  assert '(steps 3 to 5)' in out  # steps 1-3 were not trained again


@pytest.mark.parametrize('module', ['mnist_cnn.alexnet_main', 'mnist_cnn.resnet_main'])
def test_no_intact_checkpoint_exits_1_and_touches_nothing(tmp_path, data_dir, module):
  model_dir = str(tmp_path / 'model')
  _alexnet(data_dir, model_dir, '--train_epochs=2')
  for index in glob.glob(os.path.join(model_dir, '*.index')):
    os.remove(index)
  checkpoint_files = lambda: {p: os.path.getmtime(p) for p in glob.glob(
      os.path.join(model_dir, 'model.ckpt-*')) + [os.path.join(model_dir, 'checkpoint')]}
  before = checkpoint_files()
  result = _main(module, '--data_dir=' + data_dir, '--model_dir=' + model_dir,
                 *_whole_split(module))
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('error: --model_dir %s holds checkpoints but none reads back' %
                              model_dir), result.stderr
  assert 'model.ckpt-4 (its .index file is missing)' in lines[-1]
  assert '--clean' in lines[-1] and 'Traceback' not in result.stderr
  assert checkpoint_files() == before
  assert run_record.read_metrics(model_dir)[-1]['event'] == 'failed'


def test_corrupt_data_file_is_skipped_naming_why(tmp_path, data_dir, capsys):
  model_dir = str(tmp_path / 'model')
  _alexnet(data_dir, model_dir, '--train_epochs=2')
  data = glob.glob(os.path.join(model_dir, 'model.ckpt-4.data-*'))[0]
  with open(data, 'r+b') as f:
    f.seek(1000)
    f.write(b'\xff' * 64)
  capsys.readouterr()
  assert run_dir.recover_checkpoints(model_dir, 3).endswith('model.ckpt-2')
  assert 'skipping checkpoint model.ckpt-4' in capsys.readouterr().out


################################################################################
# What kill -9 leaves behind
################################################################################


@pytest.mark.slow
def test_kill_9_leftovers_are_recovered_on_the_next_start(tmp_path, data_dir):
  model_dir, export_dir = str(tmp_path / 'model'), str(tmp_path / 'export')
  process = subprocess.Popen(
      [sys.executable, '-m', 'mnist_cnn.alexnet_main', '--data_dir=' + data_dir,
       '--model_dir=' + model_dir, '--train_epochs=10000'] + ALEXNET,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO)
  deadline = time.time() + 300
  while time.time() < deadline and len(run_record.read_metrics(model_dir)) < 4:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=60)
  assert len(run_record.read_metrics(model_dir)) >= 4
  # Leftovers of runs killed at other moments: an older run's checkpoints the new Saver does
  # not know, a checkpoint write and a state file caught before their renames, an export's
  # staging directory whose process is gone.
  newest = _steps(model_dir)[-1]
  for step in (1, 3):
    for path in glob.glob(os.path.join(model_dir, 'model.ckpt-%d.*' % newest)):
      shutil.copy(path, path.replace('-%d.' % newest, '-%d.' % step))
  open(os.path.join(model_dir, 'model.ckpt-99.data-00000-of-00001.tempstate123'), 'w').close()
  open(os.path.join(model_dir, 'checkpoint.tmp' + 'ab12' * 8), 'w').close()
  open(os.path.join(model_dir, '.tmp-789'), 'w').close()
  os.makedirs(os.path.join(export_dir, '.tmp-export-999999999-abc', 'model'))
  os.makedirs(os.path.join(export_dir, 'temp-1700000000'))
  os.makedirs(os.path.join(export_dir, '1'))
  epochs_before = len(run_record.read_metrics(model_dir))

  result = _main('mnist_cnn.alexnet_main', '--data_dir=' + data_dir, '--model_dir=' + model_dir,
                 '--train_epochs=%d' % (epochs_before + 2), '--export_dir=' + export_dir,
                 *ALEXNET)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'removed model.ckpt-99.data-00000-of-00001.tempstate123' in result.stdout
  steps = _steps(model_dir)
  assert len(steps) == 3 and steps[-1] == 2 * (epochs_before + 2)
  names = os.listdir(model_dir)
  assert not [n for n in names if 'tempstate' in n or n.startswith('.tmp-')]
  assert sorted(os.listdir(export_dir))[0] == '1' and len(os.listdir(export_dir)) == 2
  records = [r for r in run_record.read_metrics(model_dir) if 'epoch' in r]
  recorded_steps = {r['global_step'] for r in records}
  assert set(steps) <= recorded_steps  # every checkpoint has its epoch's record


def test_epoch_record_reaches_metrics_even_when_killed_after_the_checkpoint(tmp_path):
  model_dir = str(tmp_path / 'model')
  script = '\n'.join([
      'import os, signal, sys',
      'from official.utils.logs import run_record',
      'def save():',
      '  open(os.path.join(sys.argv[1], "model.ckpt-7.index"), "w").close()',
      '  os.kill(os.getpid(), signal.SIGKILL)  # after the checkpoint, before metrics.json',
      'os.makedirs(sys.argv[1])',
      'run_record.commit_epoch(sys.argv[1], {"epoch": 3, "global_step": 7}, save)'])
  result = subprocess.run([sys.executable, '-c', script, model_dir], env=ENV, cwd=REPO,
                          timeout=120)
  assert result.returncode == -signal.SIGKILL
  assert run_record.read_metrics(model_dir) == []
  added = run_record.settle_pending(model_dir, 7)
  assert added['epoch'] == 3
  assert [r['epoch'] for r in run_record.read_metrics(model_dir)] == [3]
  assert run_record.settle_pending(model_dir, 7) is None  # settled once
  # A record whose checkpoint never landed goes with its epoch, which reruns.
  run_record.write_json_atomic(os.path.join(model_dir, run_record.PENDING_FILE),
                               {'epoch': 4, 'global_step': 9})
  assert run_record.settle_pending(model_dir, 7) is None
  assert len(run_record.read_metrics(model_dir)) == 1


@pytest.mark.slow
def test_resnet_prunes_checkpoints_beyond_its_limit_on_start(tmp_path):
  model_dir = str(tmp_path / 'model')
  _resnet(model_dir, '--max_train_steps=2', '--train_epochs=1')
  # The Estimator saves at its start and end (and, on a loaded machine, at step 1 too: its
  # --save_checkpoints_secs=1 timer may fire between the two steps).
  saved = _steps(model_dir)
  assert saved[0] == 0 and saved[-1] == 2
  for step in range(101, 109):  # as if five earlier runs had each left theirs
    for path in glob.glob(os.path.join(model_dir, 'model.ckpt-2.*')):
      shutil.copy(path, path.replace('-2.', '-%d.' % step))
  assert len(_steps(model_dir)) == len(saved) + 8
  run_dir.recover_checkpoints(model_dir, 5)
  assert _steps(model_dir) == [104, 105, 106, 107, 108]
  assert tf.train.latest_checkpoint(model_dir).endswith('model.ckpt-108')


################################################################################
# Directories that cannot be written
################################################################################


@pytest.mark.parametrize('module', ['mnist_cnn.alexnet_main', 'mnist_cnn.resnet_main'])
@pytest.mark.parametrize('which', ['model_dir_is_a_file', 'model_dir_under_proc',
                                   'export_dir_under_a_file', 'export_dir_is_a_file'])
def test_unusable_dirs_fail_before_training_with_one_line(tmp_path, data_dir, module, which):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  model_dir, export_dir = str(tmp_path / 'model'), str(tmp_path / 'export')
  expected = {
      'model_dir_is_a_file': ('model_dir', str(a_file), 'names a file'),
      'model_dir_under_proc': ('model_dir', '/proc/mnist_cnn_run', 'cannot be created'),
      'export_dir_under_a_file': ('export_dir', str(a_file / 'export'), 'cannot be created'),
      'export_dir_is_a_file': ('export_dir', str(a_file), 'names a file'),
  }[which]
  if expected[0] == 'model_dir':
    model_dir = expected[1]
  else:
    export_dir = expected[1]
  result = _main(module, '--data_dir=' + data_dir, '--model_dir=' + model_dir,
                 '--export_dir=' + export_dir, '--train_epochs=1', *_whole_split(module))
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  if which.endswith('is_a_file'):  # refused by the flag's validator, at parse time
    assert 'flag --%s=%s: --%s names a file' % (expected[0], expected[1], expected[0]) in \
        lines[-2], lines
  else:
    assert lines[-1].startswith('error: --%s %s ' % expected[:2]) and expected[2] in lines[-1]
  assert 'Traceback' not in result.stderr
  if which.startswith('export'):  # refused before the first step: nothing trained
    assert _steps(model_dir) == [] and not os.path.exists(
        os.path.join(model_dir, run_record.METRICS_FILE))


def test_write_check_finds_a_read_only_filesystem(tmp_path):
  # As root, permission bits do not stop a write; a read-only mount does.
  read_only = '/proc/self'
  with pytest.raises(run_dir.RunDirError, match='is not writable'):
    run_dir.check_dirs(str(tmp_path / 'model'), read_only + '/export')
  with pytest.raises(run_dir.RunDirError, match='--model_dir'):
    run_dir.check_dirs('/proc/self/fd/model', None)
  run_dir.check_dirs(str(tmp_path / 'ok'), str(tmp_path / 'x' / 'y'))
  assert os.path.isdir(str(tmp_path / 'ok')) and not os.path.exists(str(tmp_path / 'x'))
