"""Wall-clock from start to the first test evaluation at or above a target accuracy.

  python benchmarks/time_to_accuracy.py --model=resnet --target=0.995 --data_dir=DIR \\
      [--max_minutes=30] [-- extra flags for the main]

Runs `python -m mnist_cnn.<model>_main` as a user would (process start, data loading and every
evaluation included) with --stop_threshold=target into a fresh model directory, then reads its
metrics.json: the time to target is the timestamp of the first evaluation that reached it, less
the moment the process was started. A run still short of the target after --max_minutes is
stopped and reported as not reached. Prints one markdown table row per run.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAINS = {'alexnet': 'mnist_cnn.alexnet_main', 'resnet': 'mnist_cnn.resnet_main'}


def read_records(model_dir):
  path = os.path.join(model_dir, 'metrics.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def time_to_accuracy(model, target, data_dir, max_minutes, extra_flags, model_dir):
  """Runs one training; returns a dict of what happened."""
  command = [sys.executable, '-m', MAINS[model], '--data_dir=' + data_dir,
             '--model_dir=' + model_dir, '--clean', '--stop_threshold=%s' % target]
  command += list(extra_flags)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  started = time.time()
  with open(os.path.join(os.path.dirname(model_dir), 'train.log'), 'w') as log:
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
      returncode = process.wait(timeout=max_minutes * 60)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
      returncode = None
  records = [r for r in read_records(model_dir) if 'accuracy' in r and 'epoch' in r]
  reached = [r for r in records if r['accuracy'] >= target]
  return {
      'model': model, 'flags': ' '.join(extra_flags), 'target': target,
      'reached': bool(reached),
      'minutes': (reached[0]['timestamp'] - started) / 60 if reached else None,
      'epochs': reached[0]['epoch'] if reached else (records[-1]['epoch'] if records else None),
      'accuracy': reached[0]['accuracy'] if reached else (
          records[-1]['accuracy'] if records else None),
      'status': ('ok' if returncode == 0 else 'timed out after %g min' % max_minutes
                 if returncode is None else 'exit %d' % returncode),
  }


def format_row(result):
  def cell(value, fmt):
    return '-' if value is None else fmt % value
  return '| %s | %s | %.4f | %s | %s | %s | %s | %s |' % (
      result['model'], result['flags'] or '(defaults)', result['target'],
      'yes' if result['reached'] else 'no', cell(result['minutes'], '%.2f'),
      cell(result['epochs'], '%d'), cell(result['accuracy'], '%.4f'), result['status'])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', choices=sorted(MAINS), required=True)
  parser.add_argument('--target', type=float, required=True, help='test accuracy to reach')
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--max_minutes', type=float, default=30.0)
  parser.add_argument('--keep_dir', default=None,
                      help='keep the run here (default: a temporary directory, removed)')
  parser.add_argument('extra_flags', nargs='*', help='flags for the main, after --')
  args = parser.parse_args(argv)
  if not 0 < args.target <= 1:
    parser.error('--target must be in (0, 1]')
  work = args.keep_dir or tempfile.mkdtemp(prefix='time_to_accuracy-')
  os.makedirs(work, exist_ok=True)
  try:
    result = time_to_accuracy(args.model, args.target, args.data_dir, args.max_minutes,
                              args.extra_flags, os.path.join(work, 'model'))
  finally:
    if not args.keep_dir:
      shutil.rmtree(work, ignore_errors=True)
  print('| model | flags | target | reached | minutes to target | epochs | accuracy | status |')
  print('|---|---|---:|---|---:|---:|---:|---|')
  print(format_row(result))
  return 0 if result['reached'] else 1


if __name__ == '__main__':
  sys.exit(main())
