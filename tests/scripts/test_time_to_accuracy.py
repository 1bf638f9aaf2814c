"""The time-to-accuracy benchmark on tiny data (a real training run, a few seconds)."""

import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALEXNET_FLAGS = ['--batch_size=50', '--validation_size=0', '--optimizer=adam',
                 '--learning_rate=0.001', '--train_epochs=6']


def _run(learnable_idx_dir, target, tmp_path, extra=(), options=('--seeds=1',)):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'time_to_accuracy.py'),
       '--model=alexnet', '--target=%s' % target, '--data_dir=' + learnable_idx_dir,
       '--keep_dir=%s' % (tmp_path / 'work')] + list(options) + ['--'] + ALEXNET_FLAGS +
      list(extra),
      capture_output=True, text=True, cwd=REPO, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def _rows(result):
  lines = [l for l in result.stdout.splitlines() if l.startswith('| alexnet ')]
  # without the seed column, so the indices below read model, flags, target, ...
  return [[cell.strip() for cell in line.split('|')[1:-1]] for line in lines]


def _row(result):
  row = _rows(result)[0]
  return row[:2] + row[3:]


def _epochs(tmp_path, seed=0):
  with open(str(tmp_path / 'work' / ('seed%d' % seed) / 'model' / 'metrics.json')) as f:
    return [json.loads(line) for line in f if '"epoch"' in line]


def test_reached_target_reports_minutes_the_epoch_and_the_final_accuracy(
    learnable_idx_dir, tmp_path):
  result = _run(learnable_idx_dir, 0.5, tmp_path, ['--train_epochs=3'])
  assert result.returncode == 0, result.stderr[-2000:]
  # model, flags, target, reached, minutes, epoch reached, accuracy then, epochs run, final
  model, _, target, reached, minutes, epoch, then, run, final, status = _row(result)
  assert (model, target, reached, status) == ('alexnet', '0.5000', 'yes', 'ok')
  assert 0 < float(minutes) < 10
  # the whole schedule ran; the row names the first evaluation at the target and the last
  epochs = _epochs(tmp_path)
  assert int(run) == len(epochs) == 3
  first = [r for r in epochs if r['accuracy'] >= 0.5][0]
  assert int(epoch) == first['epoch'] and float(then) == pytest.approx(first['accuracy'],
                                                                        abs=5e-5)
  assert float(final) == pytest.approx(epochs[-1]['accuracy'], abs=5e-5)
  assert 'reached 0.5000 on 1 of 1 seeds' in result.stdout
  assert re.search(r'final accuracy: [\d.]+ \(min [\d.]+, mean [\d.]+ \+- 0\.0000, max',
                   result.stdout)


def test_stop_at_target_stops_at_the_first_evaluation_that_reached_it(
    learnable_idx_dir, tmp_path):
  result = _run(learnable_idx_dir, 0.5, tmp_path, options=['--seeds=1', '--stop_at_target'])
  assert result.returncode == 0, result.stderr[-2000:]
  row = _row(result)
  assert row[3] == 'yes' and row[5] == row[7]  # reached at the last epoch it ran
  assert len(_epochs(tmp_path)) == int(row[5]) < 6


@pytest.mark.slow
def test_unreached_target_says_so_and_exits_1(learnable_idx_dir, tmp_path):
  # A learning rate this small leaves the model near chance (0.1) for all 2 epochs.
  result = _run(learnable_idx_dir, 0.9, tmp_path, ['--learning_rate=1e-12', '--train_epochs=2'])
  row = _row(result)
  assert result.returncode == 1, result.stderr[-2000:]
  assert row[3:8] == ['no', '-', '-', '-', '2'] and float(row[8]) < 0.9 and row[9] == 'ok'
  assert 'reached 0.9000 on 0 of 1 seeds' in result.stdout


@pytest.mark.slow
def test_seeds_run_one_after_another_with_median_and_max(learnable_idx_dir, tmp_path):
  result = _run(learnable_idx_dir, 0.5, tmp_path, ['--train_epochs=3'],
                ['--seeds=2', '--first_seed=5', '--json=%s' % (tmp_path / 'runs.json')])
  assert result.returncode == 0, result.stderr[-2000:]
  rows = _rows(result)
  assert [row[2] for row in rows] == ['5', '6']
  minutes = sorted(float(row[5]) for row in rows)
  summary = [l for l in result.stdout.splitlines() if l.startswith('minutes to 0.5000')][0]
  median, maximum = re.fullmatch(
      r'minutes to 0\.5000 over 2 seed\(s\): median ([\d.]+), max ([\d.]+)', summary).groups()
  # the rows and the summary round unrounded minutes, each to 0.01
  assert float(median) == pytest.approx(sum(minutes) / 2, abs=0.011)
  assert float(maximum) == pytest.approx(minutes[1], abs=0.006)
  for seed in (5, 6):  # each run trained its own seed, recorded beside its checkpoints
    with open(str(tmp_path / 'work' / ('seed%d' % seed) / 'model' / 'flags.json')) as f:
      assert json.load(f)['seed'] == seed
  with open(str(tmp_path / 'runs.json')) as f:
    written = json.load(f)
  assert [r['seed'] for r in written['runs']] == [5, 6]
  assert written['summary'][0] == 'reached 0.5000 on 2 of 2 seeds' and summary in written[
      'summary']


@pytest.mark.slow
def test_config_reads_the_flag_file_and_later_flags_override_it(learnable_idx_dir, tmp_path):
  # alexnet_fast's schedule with this test's tiny-data flags after it
  result = _run(learnable_idx_dir, 0.5, tmp_path, ['--train_epochs=2'],
                ['--seeds=1', '--config=alexnet_fast'])
  assert result.returncode == 0, result.stderr[-2000:]
  with open(str(tmp_path / 'work' / 'seed0' / 'model' / 'flags.json')) as f:
    recorded = json.load(f)
  assert recorded['train_epochs'] == 2 and recorded['batch_size'] == 50  # this test's
  assert (recorded['dropout'], recorded['lr_schedule']) == (0.75, 'cosine')  # from the file


@pytest.mark.parametrize('options, message', [
    (['--config=no_such_config'], "no configuration 'no_such_config'"),
    (['--seeds=0'], '--seeds must be 1 or more'),
])
def test_bad_options_are_one_line_errors(learnable_idx_dir, tmp_path, options, message):
  result = _run(learnable_idx_dir, 0.5, tmp_path, options=options)
  assert result.returncode == 2 and message in result.stderr
  assert not (tmp_path / 'work').exists()


def test_a_seed_after_the_separator_is_refused(learnable_idx_dir, tmp_path):
  result = _run(learnable_idx_dir, 0.5, tmp_path, ['--seed=3'])
  assert result.returncode == 2 and '--seeds/--first_seed' in result.stderr


def _result(seed, reached, minutes, final):
  return {'seed': seed, 'reached': reached, 'minutes': minutes if reached else None,
          'final_accuracy': final}


def test_the_summary_quotes_the_reach_rate_and_every_final_accuracy():
  sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
  try:
    import time_to_accuracy  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  results = [_result(0, True, 2.0, 0.9936), _result(1, False, None, 0.9910),
             _result(2, True, 2.5, 0.9934), _result(3, False, None, 0.9926),
             _result(4, True, 2.4, 0.9931)]
  lines = time_to_accuracy.summary(results, 0.993)
  assert lines[0] == 'reached 0.9930 on 3 of 5 seeds'
  # two of five not reached: the median is the third fastest, the max is not reached
  assert lines[1] == 'minutes to 0.9930 over 5 seed(s): median 2.50, max not reached'
  assert lines[2].startswith('final accuracy: 0.9910, 0.9926, 0.9931, 0.9934, 0.9936 '
                             '(min 0.9910, mean 0.9927 +- 0.0010, max 0.9936)')
