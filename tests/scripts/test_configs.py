"""The flag files of mnist_cnn/configs: each names flags its main defines, says what it is for,
what it measured and how, and gives way to flags after it on the command line."""

import os
import re

from absl import flags
import pytest

from mnist_cnn import alexnet_main
from mnist_cnn import googlenet_main
from mnist_cnn import resnet_main

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'mnist_cnn', 'configs')
MAINS = {'alexnet': alexnet_main.define_alexnet_flags, 'resnet18': resnet_main.define_mnist_flags,
         'googlenet': googlenet_main.define_googlenet_flags}
# Flags that would tie a configuration to one machine, one dataset or one run.
NOT_IN_A_CONFIG = ('data_dir', 'model_dir', 'clean', 'stop_threshold', 'seed', 'export_dir')


def _configs():
  return sorted(name for name in os.listdir(CONFIGS) if name.endswith('.flags'))


def _flag_values(name):
  flag_values = flags.FlagValues()
  MAINS[name.split('_')[0]](flag_values)
  return flag_values


def test_the_issue_s_configurations_exist():
  assert {'alexnet_fast.flags', 'resnet18_fast.flags', 'googlenet_fast.flags'} <= set(
      _configs())


@pytest.mark.parametrize('name', _configs())
def test_a_config_parses_with_its_main_and_starts_with_what_it_measured(name):
  path = os.path.join(CONFIGS, name)
  with open(path) as f:
    lines = f.read().splitlines()
  header = [line for line in lines[:lines.index('')]]  # the comment block before the flags
  assert header and all(line.startswith('#') for line in header)
  text = '\n'.join(header)
  assert re.search(r'Measured', text) and 'benchmarks/time_to_accuracy.py' in text
  assert '--config=' + name[:-len('.flags')] in text
  # quoted by reach rate over the documented five seeds, not by a best run
  assert re.search(r'reached on \d of \d seeds', text) and '--seeds=5' in text
  flag_values = _flag_values(name)
  flag_values(['main', '--flagfile=' + path])
  given = [line.split('=')[0].lstrip('-') for line in lines if line.startswith('--')]
  assert given and not set(given) & set(NOT_IN_A_CONFIG)
  for flag in given:
    assert flag_values[flag].present, flag


def test_flags_after_the_file_override_it():
  path = os.path.join(CONFIGS, 'resnet18_fast.flags')
  flag_values = _flag_values('resnet18_fast.flags')
  flag_values(['main', '--flagfile=' + path, '--train_epochs=1', '--num_filters=4'])
  assert (flag_values.train_epochs, flag_values.num_filters) == (1, 4)
  assert flag_values.dtype == 'bf16'  # from the file
