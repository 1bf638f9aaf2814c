"""The shape of the code that issue 14 set: small functions, a run loop of one job, layers that
import only what is below them (docs/ARCHITECTURE.md)."""

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FUNCTION_LINES = 70
MAX_RUN_LOOP_LINES = 450


def _python_files(*roots):
  for root in roots:
    for directory, _, names in os.walk(os.path.join(REPO, root)):
      for name in sorted(names):
        if name.endswith('.py'):
          yield os.path.join(directory, name)


def test_no_function_in_the_library_is_over_70_lines():
  long_ones = []
  for path in _python_files('official', 'mnist_cnn'):
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES:
          long_ones.append('%s:%d %s (%d lines)' % (
              os.path.relpath(path, REPO), node.lineno, node.name, length))
  assert not long_ones


def test_the_run_loop_stays_one_job():
  with open(os.path.join(REPO, 'official', 'resnet', 'resnet_run_loop.py')) as f:
    assert len(f.read().splitlines()) <= MAX_RUN_LOOP_LINES


def _loaded_modules(module):
  script = ('import sys, %s; print("\\n".join(sorted(m for m in sys.modules '
            'if m.startswith(("official", "mnist_cnn")))))' % module)
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          cwd=REPO, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.split()


@pytest.mark.parametrize('module', ['mnist_cnn.alexnet_main', 'mnist_cnn.input_data'])
def test_alexnet_and_the_data_layer_load_no_resnet_or_cluster_code(module):
  loaded = _loaded_modules(module)
  assert module in loaded
  assert not [m for m in loaded if m.startswith('official.resnet') or m in (
      'official.utils.distribution_utils', 'official.utils.cluster_training')]


DATA_LAYER = {'mnist_cnn', 'mnist_cnn.input_data', 'mnist_cnn.cifar10_data',
              'mnist_cnn.tfds_data', 'mnist_cnn.datasets', 'official', 'official.utils',
              'official.utils.record_pipeline'}


def test_the_data_layer_loads_nothing_above_it():
  # datasets.py imports every source: the whole data layer, and nothing else.
  loaded = _loaded_modules('mnist_cnn.datasets')
  assert set(loaded) <= DATA_LAYER and 'mnist_cnn.cifar10_data' in loaded
