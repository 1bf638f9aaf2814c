"""run_resnet.sh end to end (run_alexnet.sh is in test_report.py, which its page ends)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)


@pytest.mark.slow
def test_run_resnet_script_end_to_end_on_tiny_data(tmp_path, learnable_idx_dir):
  runs = str(tmp_path / 'runs')
  env = dict(ENV, DATA_DIR=learnable_idx_dir, RUNS_DIR=runs, PYTHON=sys.executable,
             EPOCHS='1 2')
  # One evaluation per run (each is an Estimator restart): the page needs only the last.
  result = subprocess.run(['bash', os.path.join(REPO, 'run_resnet.sh'), '--num_filters=4',
                           '--batch_size=50', '--epochs_between_evals=8'], capture_output=True,
                          text=True, timeout=600, env=env, cwd=REPO)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = [[cell.strip() for cell in line.split('|')[1:-1]]
          for line in result.stdout.splitlines() if line.startswith('| runs/resnet/')]
  assert [row[0] for row in rows] == ['runs/resnet/resnet18_1ep', 'runs/resnet/resnet18_2ep',
                                       'runs/resnet/resnet18_fast']
  assert [row[3] for row in rows] == ['1', '2', '8']  # epochs
  assert [row[-1] for row in rows] == ['ok', 'ok', 'ok']
  # The fast run has the time-to-accuracy flags; the script's extra flags still come last.
  with open(os.path.join(runs, 'resnet', 'resnet18_fast', 'flags.json')) as f:
    fast = json.load(f)
  assert (fast['dtype'], fast['train_epochs'], fast['num_filters'], fast['lr_schedule']) == (
      'bf16', 8, 4, 'cosine')
  assert '| seed report | ResNet | report settings | 1 | 0.8677 |' in result.stdout
  assert os.path.exists(os.path.join(runs, 'report', 'report.md'))
  assert 'step ' not in result.stdout or 'examples/s' in result.stdout
