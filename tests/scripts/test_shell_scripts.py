"""run_resnet.sh and run_googlenet.sh end to end (run_alexnet.sh is in test_report.py, which
its page ends)."""

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
             REPORT_EPOCHS='1', DEFAULT_EPOCHS='1')
  # One evaluation per run (each is an Estimator restart): the page needs only the last.
  result = subprocess.run(['bash', os.path.join(REPO, 'run_resnet.sh'), '--num_filters=4',
                           '--batch_size=50', '--epochs_between_evals=8'], capture_output=True,
                          text=True, timeout=600, env=env, cwd=REPO)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = [[cell.strip() for cell in line.split('|')[1:-1]]
          for line in result.stdout.splitlines() if line.startswith('| runs/resnet/')]
  assert [row[0] for row in rows] == ['runs/resnet/report_1ep', 'runs/resnet/resnet18_1ep',
                                       'runs/resnet/resnet18_fast']
  assert [row[3] for row in rows] == ['1', '1', '8']  # epochs
  assert [row[-1] for row in rows] == ['ok', 'ok', 'ok']
  recorded = {}
  for name in ('report_1ep', 'resnet18_1ep', 'resnet18_fast'):
    with open(os.path.join(runs, 'resnet', name, 'flags.json')) as f:
      recorded[name] = json.load(f)
  # The report's runs: the Model Garden-era step schedule and batch-norm moving averages.
  report = recorded['report_1ep']
  assert (report['lr_schedule'], report['batch_norm_batches'], report['batch_norm_decay']) == (
      'step', 0, 0.997)
  assert recorded['resnet18_1ep']['lr_schedule'] == 'cosine'
  # The fast run has the time-to-accuracy flags; the script's extra flags still come last.
  fast = recorded['resnet18_fast']
  assert (fast['dtype'], fast['train_epochs'], fast['num_filters'], fast['lr_schedule']) == (
      'bf16', 8, 4, 'cosine')
  assert '| seed report | ResNet | report settings | 1 | 0.8677 |' in result.stdout
  assert os.path.exists(os.path.join(runs, 'report', 'report.md'))
  assert 'step ' not in result.stdout or 'examples/s' in result.stdout


@pytest.mark.parametrize('script', ['run_alexnet.sh', 'run_resnet.sh', 'run_googlenet.sh'])
def test_scripts_run_the_checkout_s_venv_python_unless_told_otherwise(tmp_path, script):
  # No runs: each script then only writes the (empty) page, with the Python it chose.
  env = {k: v for k, v in ENV.items() if k != 'PYTHON'}
  env.update(RUNS_DIR=str(tmp_path / 'runs'), FAST='0', REPORT_EPOCHS='', DEFAULT_EPOCHS='',
             EPOCHS='', TUNED_EPOCHS='')
  venv = os.path.join(REPO, '.venv', 'bin', 'python')
  expected = venv if os.access(venv, os.X_OK) else 'python3'
  result = subprocess.run(['bash', os.path.join(REPO, script)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=str(tmp_path))
  assert result.stdout.splitlines()[0] == 'Python: %s' % expected, result.stdout
@pytest.mark.slow
def test_run_googlenet_script_end_to_end_on_tiny_data(tmp_path, learnable_idx_dir):
  runs = str(tmp_path / 'runs')
  env = dict(ENV, DATA_DIR=learnable_idx_dir, RUNS_DIR=runs, PYTHON=sys.executable, EPOCHS='1')
  result = subprocess.run(['bash', os.path.join(REPO, 'run_googlenet.sh'),
                           '--width_multiplier=0.125', '--batch_size=50',
                           '--batch_norm_batches=2', '--epochs_between_evals=20'],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = [[cell.strip() for cell in line.split('|')[1:-1]]
          for line in result.stdout.splitlines() if line.startswith('| runs/googlenet/')]
  assert [row[0] for row in rows] == ['runs/googlenet/googlenet_1ep',
                                       'runs/googlenet/googlenet_fast']
  assert [row[1] for row in rows] == ['GoogLeNet', 'GoogLeNet']
  assert [row[-1] for row in rows] == ['ok', 'ok']
  with open(os.path.join(runs, 'googlenet', 'googlenet_fast', 'flags.json')) as f:
    fast = json.load(f)
  with open(os.path.join(REPO, 'mnist_cnn', 'configs', 'googlenet_fast.flags')) as f:
    epochs = [int(line.split('=')[1]) for line in f if line.startswith('--train_epochs=')]
  assert fast['train_epochs'] == epochs[0] and fast['width_multiplier'] == 0.125
  assert rows[1][3] == str(epochs[0])
  assert os.path.exists(os.path.join(runs, 'report', 'report.md'))
