"""The time-to-accuracy benchmark on tiny data (a real training run, a few seconds)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALEXNET_FLAGS = ['--batch_size=50', '--validation_size=0', '--optimizer=adam',
                 '--learning_rate=0.001', '--train_epochs=6']


def _run(learnable_idx_dir, target, tmp_path, extra=()):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'time_to_accuracy.py'),
       '--model=alexnet', '--target=%s' % target, '--data_dir=' + learnable_idx_dir,
       '--keep_dir=%s' % (tmp_path / 'work'), '--'] + ALEXNET_FLAGS + list(extra),
      capture_output=True, text=True, cwd=REPO, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def _row(result):
  line = [l for l in result.stdout.splitlines() if l.startswith('| alexnet ')][0]
  return [cell.strip() for cell in line.split('|')[1:-1]]


def test_reached_target_reports_minutes_and_the_epoch(learnable_idx_dir, tmp_path):
  result = _run(learnable_idx_dir, 0.5, tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  row = _row(result)
  assert row[2:4] == ['0.5000', 'yes']
  assert 0 < float(row[4]) < 10  # minutes
  assert 1 <= int(row[5]) <= 6 and float(row[6]) >= 0.5 and row[7] == 'ok'
  # stopped at the first evaluation that reached the target
  with open(str(tmp_path / 'work' / 'model' / 'metrics.json')) as f:
    epochs = [line for line in f if '"epoch"' in line]
  assert len(epochs) == int(row[5])


@pytest.mark.slow
def test_unreached_target_says_so_and_exits_1(learnable_idx_dir, tmp_path):
  # A learning rate this small leaves the model near chance (0.1) for all 2 epochs.
  result = _run(learnable_idx_dir, 0.9, tmp_path, ['--learning_rate=1e-12', '--train_epochs=2'])
  row = _row(result)
  assert result.returncode == 1, result.stderr[-2000:]
  assert row[3:6] == ['no', '-', '2'] and float(row[6]) < 0.9 and row[7] == 'ok'
