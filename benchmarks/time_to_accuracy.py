"""How reliably, and how fast, a configuration reaches a target test accuracy, seed by seed.

  python benchmarks/time_to_accuracy.py --model=resnet --target=0.995 --data_dir=DIR \\
      --config=resnet18_fast [--seeds=5] [--max_minutes=30] [-- extra flags for the main]

Runs `python -m mnist_cnn.<model>_main` as a user would (process start, data loading and every
evaluation included) into a fresh model directory for each seed, one after another, then reads
its metrics.json. The time to target is the timestamp of the first evaluation at or above the
target, less the moment the process was started; the final accuracy is the last evaluation's,
which is what the run leaves (its checkpoint and export). A configuration is quoted by both:
"reached on k of N seeds", and the final accuracies, lowest first, so that a target inside the
seed-to-seed spread shows as such. Five seeds (0-4, the default) are the documented way to
quote one; the flag files' headers quote them.

Each run trains its whole schedule (--stop_at_target stops it at the first evaluation that
reaches the target instead, for times alone; its "final" accuracy is then that evaluation's). A
run still going after --max_minutes is stopped and counts as not reached. --config=NAME passes
mnist_cnn/configs/NAME.flags first (flags after -- override it). Prints one markdown table row
per run, then the reach rate, the median and maximum minutes (a run that did not reach the
target counts as slower than any that did) and the final accuracies; --json writes them too.
Exit status 0 when every seed reached the target.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, 'mnist_cnn', 'configs')
MAINS = {'alexnet': 'mnist_cnn.alexnet_main', 'resnet': 'mnist_cnn.resnet_main',
         'googlenet': 'mnist_cnn.googlenet_main'}


def read_records(model_dir):
  path = os.path.join(model_dir, 'metrics.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def time_to_accuracy(model, target, data_dir, max_minutes, extra_flags, model_dir,
                     stop_at_target=False):
  """Runs one training; returns a dict of what happened."""
  command = [sys.executable, '-m', MAINS[model], '--data_dir=' + data_dir,
             '--model_dir=' + model_dir, '--clean']
  if stop_at_target:
    command.append('--stop_threshold=%s' % target)
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
      'epochs': reached[0]['epoch'] if reached else None,
      'accuracy': reached[0]['accuracy'] if reached else None,
      'final_epoch': records[-1]['epoch'] if records else None,
      'final_accuracy': records[-1]['accuracy'] if records else None,
      'accuracies': [r['accuracy'] for r in records],
      'status': ('ok' if returncode == 0 else 'timed out after %g min' % max_minutes
                 if returncode is None else 'exit %d' % returncode),
  }


def format_row(result):
  def cell(value, fmt):
    return '-' if value is None else fmt % value
  return '| %s | %s | %s | %.4f | %s | %s | %s | %s | %s | %s | %s |' % (
      result['model'], result['flags'] or '(defaults)', result['seed'], result['target'],
      'yes' if result['reached'] else 'no', cell(result['minutes'], '%.2f'),
      cell(result['epochs'], '%d'), cell(result['accuracy'], '%.4f'),
      cell(result['final_epoch'], '%d'), cell(result['final_accuracy'], '%.4f'),
      result['status'])


HEADER = ('| model | flags | seed | target | reached | minutes to target | epoch reached | '
          'accuracy then | epochs run | final accuracy | status |\n'
          '|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|')


def config_flags(name):
  """['--flagfile=<abs path>'] for mnist_cnn/configs/<name>.flags ([] for None)."""
  if name is None:
    return []
  path = os.path.join(CONFIGS, name + '.flags')
  if not os.path.isfile(path):
    raise ValueError('no configuration %r: %s does not exist (there are: %s)' % (
        name, path, ', '.join(sorted(f[:-len('.flags')] for f in os.listdir(CONFIGS)
                                     if f.endswith('.flags')))))
  return ['--flagfile=' + path]


def summarize(results):
  """(median, max) minutes to target over the runs; None where a run did not reach it."""
  minutes = [r['minutes'] if r['reached'] else float('inf') for r in results]
  finite = lambda value: None if value == float('inf') else value
  return finite(statistics.median(minutes)), finite(max(minutes))


def summary(results, target):
  """The lines that quote a configuration: reach rate, minutes, final accuracies."""
  median, maximum = summarize(results)
  finals = sorted(r['final_accuracy'] for r in results if r['final_accuracy'] is not None)
  lines = ['reached %.4f on %d of %d seeds' % (target, sum(r['reached'] for r in results),
                                               len(results)),
           'minutes to %.4f over %d seed(s): median %s, max %s' % (
               target, len(results), 'not reached' if median is None else '%.2f' % median,
               'not reached' if maximum is None else '%.2f' % maximum)]
  if finals:
    spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
    lines.append('final accuracy: %s (min %.4f, mean %.4f +- %.4f, max %.4f)' % (
        ', '.join('%.4f' % a for a in finals), finals[0], statistics.mean(finals), spread,
        finals[-1]))
  return lines


def run_seeds(args):
  """Trains each seed in turn; returns the results."""
  results = []
  for seed in range(args.first_seed, args.first_seed + args.seeds):
    work = args.keep_dir and os.path.join(args.keep_dir, 'seed%d' % seed) or tempfile.mkdtemp(
        prefix='time_to_accuracy-')
    os.makedirs(work, exist_ok=True)
    flags = config_flags(args.config) + ['--seed=%d' % seed] + list(args.extra_flags)
    try:
      result = time_to_accuracy(args.model, args.target, args.data_dir, args.max_minutes,
                                flags, os.path.join(work, 'model'), args.stop_at_target)
    finally:
      if not args.keep_dir:
        shutil.rmtree(work, ignore_errors=True)
    result.update(seed=seed, flags=' '.join(
        (['--config=' + args.config] if args.config else []) + list(args.extra_flags)))
    print(format_row(result), flush=True)
    results.append(result)
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', choices=sorted(MAINS), required=True)
  parser.add_argument('--target', type=float, required=True, help='test accuracy to reach')
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--config', default=None,
                      help='a flag file of mnist_cnn/configs, without .flags')
  parser.add_argument('--seeds', type=int, default=5,
                      help='runs, one seed each (5, the way configurations are quoted)')
  parser.add_argument('--first_seed', type=int, default=0)
  parser.add_argument('--max_minutes', type=float, default=30.0)
  parser.add_argument('--stop_at_target', action='store_true',
                      help='stop each run at its first evaluation at or above the target '
                      '(times only: the final accuracy is then that evaluation\'s)')
  parser.add_argument('--json', default=None, help='also write the runs and summary here')
  parser.add_argument('--keep_dir', default=None,
                      help='keep the runs here, one folder per seed (default: temporary '
                      'directories, removed)')
  parser.add_argument('extra_flags', nargs='*', help='flags for the main, after --')
  args = parser.parse_args(argv)
  if not 0 < args.target <= 1:
    parser.error('--target must be in (0, 1]')
  if args.seeds < 1:
    parser.error('--seeds must be 1 or more')
  if any(flag.startswith(('--seed=', '-seed=')) for flag in args.extra_flags):
    parser.error('give seeds with --seeds/--first_seed, not --seed after --')
  try:
    config_flags(args.config)
  except ValueError as e:
    parser.error(str(e))
  print(HEADER, flush=True)
  results = run_seeds(args)
  lines = summary(results, args.target)
  print('\n' + '\n'.join(lines))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'runs': results, 'summary': lines}, f, indent=1)
  return 0 if all(r['reached'] for r in results) else 1


if __name__ == '__main__':
  sys.exit(main())
