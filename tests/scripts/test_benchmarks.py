"""Every benchmark in smoke mode (tiny sizes: they check the scripts work, not the figures)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import cluster_scaling
from benchmarks import serving_abuse
from benchmarks import serving_swaps
from mnist_cnn.serving import inference_graph
from official.utils import export
from official.utils import precision

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO, PYTHONUNBUFFERED='1')


@pytest.mark.slow
def test_feeding_benchmark_runs_in_smoke_mode():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'alexnet_feeding.py'),
       '--batch_size=8', '--rounds=1', '--steps_per_window=2', '--num_examples=64'],
      capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split('|')[1].strip() for line in result.stdout.splitlines()
          if line.startswith('| ') and not line.startswith('| variant')]
  assert rows == ['placeholder', 'tf.data', 'keras', 'placeholder + shifts',
                  'placeholder + averages']


@pytest.mark.slow
def test_stem_benchmark_runs_in_smoke_mode():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'resnet_stems.py'), '--batch_size=2',
       '--rounds=1', '--steps_per_window=1'], capture_output=True, text=True, timeout=600,
      env=ENV, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith('| ') and
          not line.startswith('| stem')]
  assert [row.split('|')[1].strip() for row in rows] == ['mnist', 'cifar', 'imagenet']


@pytest.mark.slow
def test_googlenet_variant_benchmark_runs_in_smoke_mode():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'googlenet_variants.py'),
       '--batch_size=2', '--rounds=1', '--steps_per_window=1',
       '--variants=mnist:0.125:fp32,imagenet:0.125:bf16'], capture_output=True, text=True,
      timeout=600, env=ENV, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split('|') for line in result.stdout.splitlines()
          if line.startswith('| ') and not line.startswith('| variant')]
  assert [row[1].strip() for row in rows] == ['mnist:0.125:fp32', 'imagenet:0.125:bf16']
  gflops = [float(row[2]) for row in rows]
  assert gflops[0] > gflops[1] > 0  # the mnist stem keeps larger maps


@pytest.mark.slow
def test_pipeline_benchmark_runs_in_smoke_mode():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'resnet_pipeline.py'),
       '--num_filters=4', '--batch_size=8', '--rounds=2', '--steps_per_window=2',
       '--warmup_steps=1'], capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split('|') for line in result.stdout.splitlines()
          if line.startswith('| ') and not line.startswith('| variant')]
  assert [row[1].strip() for row in rows] == ['estimator', 'estimator_bf16', 'estimator_bf16_casts',
                                                   'session', 'keras']
  assert all(float(row[2].split()[0]) > 0 for row in rows)


@pytest.mark.slow
def test_serving_benchmark_runs_in_smoke_mode(exports, idx_dir):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'serving.py'),
       '--export=tiny=' + os.path.dirname(exports['alexnet']), '--rounds=1',
       '--latency_requests=5', '--clients=4', '--requests_per_client=3', '--seconds=0.3',
       '--peak_seconds=0.2', '--breakdown', '--data_dir=' + idx_dir],
      capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  rows = [line.split('|')[1].strip() for line in out.splitlines()
          if line.startswith('| ') and not line.startswith('| path')]
  # The optimised path in fp32, and in bf16 where the CPU has it natively; the precision the
  # export's record makes the server choose is marked and last.
  native = precision.cpu_supports_bf16()
  chosen = inference_graph.choose_precision(
      'auto', export.read_serving_info(exports['alexnet']), native)
  options = sorted({'fp32', chosen} | ({'bf16'} if native else set()),
                   key=lambda option: (option == chosen, option))
  optimised = ['optimised, %s%s' % (option, ' (load-time choice)' if option == chosen else '')
               for option in options]
  assert rows == ['TF1 loader', 'tf.saved_model.load'] + optimised + [
      'REST server (defaults)', 'gRPC, same server', 'REST server, batching off'] + [
          'TF1 loader'] + optimised
  # The check on every test image: the optimised fp32 path gives each the class the export does.
  assert re.search(r'\| optimised, fp32( \(load-time choice\))? \| [01]\.\d{4} \| 20 / 20 \| ',
                   out), out
  for line in ('gRPC p50 / REST p50', 'gRPC 4 clients / REST 4 clients',
               'REST p50 / tf.saved_model.load p50', 'optimised p50 / arithmetic',
               'REST 4 clients / optimised in process, batches of 4'):
    assert re.search(re.escape(line) + r'.*: \d+\.\d\d', out), line
  assert 'precision %s, frozen graph: yes' % chosen in out
  assert out.count('Where one batch-1 call goes') == 2


@pytest.mark.slow
def test_abuse_probe_runs_every_case_in_quick_mode(exports, capsys):
  rows = serving_abuse.main(['--export_dir=' + exports['alexnet'], '--quick',
                             '--header_timeout_s=2'])
  names = [r['case'] for r in rows]
  assert len(names) >= 20 and any('stalled' in n for n in names)
  failed = [r for r in rows if not r['ok'] and 'RSS' not in r['expected']]
  assert failed == []
  assert '| case |' in capsys.readouterr().out


def test_swap_benchmark_counts_an_answer_of_the_retired_version():
  a, b = np.array([0.9, 0.1]), np.array([0.2, 0.8])
  served_at = {1: 0.0, 2: 10.0, 3: 20.0}  # versions 1 and 3 are export a, 2 is b
  published_at = {2: 9.0, 3: 19.0}
  calls = [(1.0, 1.1, 200, a), (11.0, 11.1, 200, b), (12.0, 12.1, 200, a),  # 12: version 1's
           (18.9, 19.5, 200, a),  # answered after version 3 appeared: either is right
           (21.0, 21.1, 503, b'the model is being replaced; retry')]
  log = ['retired version 1: its memory is freed']
  row = serving_swaps.summary(calls, {0: a, 1: b}, served_at, published_at, 2, 500.0,
                              [510.0, 505.0], [1.0, 1.0], log)
  assert (row['answers_checked'], row['answers_from_another_version']) == (3, 1)
  assert row['failed'] == 1 and row['rss_last_over_first'] == pytest.approx(1.01)


@pytest.mark.slow
def test_swap_benchmark_checks_answers_and_memory(exports, capsys):
  row = serving_swaps.main(['--export_dir=' + exports['alexnet'],
                            '--second_export_dir=' + exports['alexnet_2'], '--swaps=3',
                            '--hold_s=0.3'])
  assert row['swaps'] == 3 and row['requests'] > 0 and row['failed'] == 0
  assert row['exports_differ'] and row['answers_checked'] > 0  # the two exports tell apart
  assert row['answers_from_another_version'] == 0 and row['still_referenced'] == 0
  out = capsys.readouterr().out
  assert len(re.findall(r'^swap \d: version \d served .* RSS \d+ MB$', out, re.M)) == 3


@pytest.mark.slow
@pytest.mark.xdist_group('cluster')  # one cluster at a time (tests/cluster/test_cluster.py)
def test_the_scaling_benchmark_prints_a_row_per_configuration():
  result = subprocess.run(
      [sys.executable, 'benchmarks/cluster_scaling.py', '--steps=250', '--configs=2,4', '--',
       '--num_filters=4', '--batch_size=8'],
      capture_output=True, text=True, env=ENV, cwd=REPO, timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith('| ')]
  assert rows[0].startswith('| configuration |')
  names = [row.split(' | ')[0][2:] for row in rows[1:]]
  assert names == [cluster_scaling.CONFIGS[i][0] for i in (0, 1, 3)]
  assert rows[1].endswith('| 1.00x |')
  for row in rows[1:]:
    assert float(row.split(' | ')[1].split(' ')[0]) > 0


def test_the_scaling_benchmark_takes_the_steady_rate_of_the_chief():
  output = '\n'.join([
      '[chief] step 101 (epoch 0.01): loss 1.0, accuracy 0.5, learning rate 0.1, 10.0 examples/s, '
      'epoch ends in 1m00s',
      '[worker0] step 150 (epoch 0.02): loss 1.0, accuracy 0.5, learning rate 0.1, 99.0 '
      'examples/s, epoch ends in 1m00s',
      '[chief] step 201 (epoch 0.02): loss 1.0, accuracy 0.5, learning rate 0.1, 30.0 examples/s, '
      'epoch ends in 1m00s',
      '[chief] step 301 (epoch 0.03): loss 1.0, accuracy 0.5, learning rate 0.1, 50.0 examples/s, '
      'epoch ends in 1m00s'])
  assert cluster_scaling.steady_rate(output) == 40.0
  assert cluster_scaling.steady_rate(output.splitlines()[0]) is None


@pytest.mark.slow
def test_suite_runs_in_smoke_mode():
  result = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'suite.py'),
                           '--smoke'], capture_output=True, text=True, cwd=REPO, timeout=1200,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert out.startswith('Machine: ') and 'TensorFlow 2.15' in out
  training = re.findall(r'^\| (AlexNet|ResNet-18|GoogLeNet) \| (\S+) \| ([\d.]+) \(', out,
                        re.M)
  assert [(m, v) for m, v, _ in training] == [
      ('AlexNet', 'placeholder'), ('AlexNet', 'tf.data'), ('AlexNet', 'keras'),
      ('ResNet-18', 'estimator'), ('ResNet-18', 'estimator_bf16'),
      ('ResNet-18', 'estimator_bf16_casts'), ('ResNet-18', 'session'),
      ('ResNet-18', 'keras'), ('GoogLeNet', 'fp32'), ('GoogLeNet', 'fast_bf16')]
  googlenet = re.findall(r'^\| GoogLeNet \| \S+ \| [^|]+ \| - \| ([\d.]+) \| (\d+)%', out, re.M)
  assert len(googlenet) == 2  # no Keras twin: "-"; GFLOP/s and % of peak from its own FLOPs
  assert all(float(rate) > 0 for _, _, rate in training)
  peak = re.search(r'Matmul peak: fp32 (\d+) GFLOP/s, bf16 (\d+) GFLOP/s', out)
  assert peak and int(peak.group(1)) > 0
  flops = re.search(r'Forward FLOPs per example: AlexNet ([\d.e+]+), ResNet-18 ([\d.e+]+)', out)
  assert flops and float(flops.group(1)) > 1e6
  cifar = re.findall(r'^\| ResNet-8 \| (fp32|bf16) \| ([\d.]+) \([^|]+\| ([\d.]+) \| \d+% \| '
                     r'([\d.]+) \|$', out, re.M)
  assert [row[0] for row in cifar] == ['fp32', 'bf16']
  for _, rate, gflops, minutes in cifar:  # the projection is the epoch at the measured speed
    assert float(gflops) > 0 and abs(float(minutes) - 50000 / float(rate) / 60) < 0.1
  inference = re.findall(
      r'^\| (AlexNet|ResNet-18|GoogLeNet) \| ([\d.]+) / ([\d.]+) \| (\d+) \|', out, re.M)
  assert [row[0] for row in inference] == ['AlexNet', 'ResNet-18', 'GoogLeNet']
  assert all(float(p50) <= float(p99) for _, p50, p99, _ in inference)
