"""The benchmark suite in smoke mode: every table comes out, with sane figures."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_suite_runs_in_smoke_mode():
  result = subprocess.run([sys.executable, os.path.join(REPO, 'benchmarks', 'suite.py'),
                           '--smoke'], capture_output=True, text=True, cwd=REPO, timeout=1200,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert out.startswith('Machine: ') and 'TensorFlow 2.15' in out
  training = re.findall(r'^\| (AlexNet|ResNet-18) \| (\S+) \| ([\d.]+) \(', out, re.M)
  assert [(m, v) for m, v, _ in training] == [
      ('AlexNet', 'placeholder'), ('AlexNet', 'tf.data'), ('AlexNet', 'keras'),
      ('ResNet-18', 'estimator'), ('ResNet-18', 'estimator_bf16'), ('ResNet-18', 'session'),
      ('ResNet-18', 'keras')]
  assert all(float(rate) > 0 for _, _, rate in training)
  peak = re.search(r'Matmul peak: fp32 (\d+) GFLOP/s, bf16 (\d+) GFLOP/s', out)
  assert peak and int(peak.group(1)) > 0
  flops = re.search(r'Forward FLOPs per example: AlexNet ([\d.e+]+), ResNet-18 ([\d.e+]+)', out)
  assert flops and float(flops.group(1)) > 1e6
  inference = re.findall(r'^\| (AlexNet|ResNet-18) \| ([\d.]+) / ([\d.]+) \| (\d+) \|', out,
                         re.M)
  assert [row[0] for row in inference] == ['AlexNet', 'ResNet-18']
  assert all(float(p50) <= float(p99) for _, p50, p99, _ in inference)
