"""Training examples/second of one process against local clusters of 1 and 2 workers.

  python benchmarks/cluster_scaling.py [--data_dir=DIR] [--steps=400] [--rounds=1] \\
      [-- extra resnet_main flags]

Each configuration trains `python -m mnist_cnn.resnet_main` for --steps from scratch: alone
(--distribution_strategy=off), and through `mnist_cnn.launch_local_cluster` with
parameter_server (1 and 2 workers, 1 ps) and multi_worker_mirrored (1 and 2 workers). The rate
is the median of the chief's progress lines after the first (global steps × --batch_size per
second, so start-up and the first steps' graph optimisation are left out). Configurations take
turns, --rounds times, so machine noise hits each alike. Prints a markdown table with ratios to
the single process. Without --data_dir it trains on synthetic data.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE = re.compile(r'^(?:\[chief\] )?step \d+ \(epoch [\d.]+\):.* ([\d.]+) examples/s')
CONFIGS = [
    # name, launcher args (None: one process), strategy
    ('one process', None, 'off'),
    ('parameter_server, 1 worker + 1 ps', ['--workers=1', '--ps=1'], 'parameter_server'),
    ('parameter_server, 2 workers + 1 ps', ['--workers=2', '--ps=1'], 'parameter_server'),
    ('multi_worker_mirrored, 1 worker', ['--workers=1'], 'multi_worker_mirrored'),
    ('multi_worker_mirrored, 2 workers', ['--workers=2'], 'multi_worker_mirrored'),
]


def command(launcher_args, strategy, main_flags):
  main = ['--distribution_strategy=' + strategy] + list(main_flags)
  if launcher_args is None:
    return [sys.executable, '-m', 'mnist_cnn.resnet_main'] + main
  return ([sys.executable, '-m', 'mnist_cnn.launch_local_cluster', '--grace_s=10'] +
          launcher_args + ['--'] + main)


def steady_rate(output):
  """Median examples/s of the chief's progress lines after the first (None if < 2 lines)."""
  rates = [float(m.group(1)) for m in map(RATE.match, output.splitlines()) if m]
  return statistics.median(rates[1:]) if len(rates) > 1 else None


def run_one(launcher_args, strategy, main_flags, work):
  model_dir = os.path.join(work, 'model')
  shutil.rmtree(model_dir, ignore_errors=True)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('TF_CONFIG', None)
  result = subprocess.run(command(launcher_args, strategy,
                                  list(main_flags) + ['--model_dir=' + model_dir]),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=REPO)
  if result.returncode:
    raise RuntimeError('%s failed (exit %d):\n%s' % (strategy, result.returncode,
                                                      result.stdout[-3000:]))
  return steady_rate(result.stdout)


def format_table(rates):
  """rates: {name: [examples/s per round]} in CONFIGS order."""
  base = statistics.median(rates[CONFIGS[0][0]])
  lines = ['| configuration | examples/s median (min-max) | vs one process |',
           '|---|---:|---:|']
  for name, values in rates.items():
    median = statistics.median(values)
    lines.append('| %s | %.1f (%.1f-%.1f) | %.2fx |' % (name, median, min(values), max(values),
                                                         median / base))
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default=None, help='IDX files (default: synthetic data)')
  parser.add_argument('--steps', type=int, default=400, help='training steps per configuration')
  parser.add_argument('--rounds', type=int, default=1)
  parser.add_argument('--configs', default=None,
                      help='comma-separated numbers of the configurations to run (1-%d; the '
                           'first, one process, always runs as the base)' % len(CONFIGS))
  parser.add_argument('extra_flags', nargs='*', help='resnet_main flags, after --')
  args = parser.parse_args(argv)
  main_flags = ['--max_train_steps=%d' % args.steps]
  if args.data_dir:
    main_flags.append('--data_dir=' + args.data_dir)
  else:  # 1,024 synthetic images are a few steps an epoch: --steps decides the length, in one
    # training cycle as on real data
    main_flags += ['--use_synthetic_data', '--train_epochs=100000',
                   '--epochs_between_evals=100000']
  main_flags += args.extra_flags  # last, so that they win
  configs = CONFIGS
  if args.configs:
    try:
      chosen = {int(n) for n in args.configs.split(',')} | {1}
    except ValueError:
      chosen = set()
    if not chosen or not chosen <= set(range(1, len(CONFIGS) + 1)):
      parser.error('--configs takes numbers from 1 to %d' % len(CONFIGS))
    configs = [c for i, c in enumerate(CONFIGS, 1) if i in chosen]
  work = tempfile.mkdtemp(prefix='cluster_scaling-')
  rates = {name: [] for name, _, _ in configs}
  try:
    for _ in range(args.rounds):
      for name, launcher_args, strategy in configs:
        rate = run_one(launcher_args, strategy, main_flags, work)
        if rate is None:
          sys.exit('error: %s printed fewer than two progress lines; raise --steps' % name)
        rates[name].append(rate)
        print('%s: %.1f examples/s' % (name, rate), file=sys.stderr)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(format_table(rates))
  return 0


if __name__ == '__main__':
  sys.exit(main())
