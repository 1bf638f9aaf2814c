"""--dataset on every main: CIFAR-10 binary files and tensorflow-datasets (mock data, no
network), with image size, channels and classes taken from the data."""

import functools
import json
import os

from absl import flags
import pytest
import tensorflow_datasets as tfds

from mnist_cnn import alexnet_main
from mnist_cnn import googlenet_main
from mnist_cnn import resnet_main
from official.data import cifar10 as cifar10_data
from official.data import datasets
from official.data import tfds_data
from official.resnet import cifar10_main
from official.utils import lifecycle
from tests.conftest import parse_flags

# Each main, as small as it goes, for a few steps.
MAINS = {
    'alexnet': (alexnet_main.define_alexnet_flags, alexnet_main.run_alexnet,
                ['--batch_size=8', '--optimizer=adam', '--learning_rate=0.001']),
    'resnet': (resnet_main.define_mnist_flags, resnet_main.run_resnet,
               ['--resnet_size=18', '--num_filters=4', '--batch_size=8',
                '--batch_norm_batches=1']),
    'googlenet': (googlenet_main.define_googlenet_flags, googlenet_main.run_googlenet,
                  ['--width_multiplier=0.0625', '--aux_loss_weight=0', '--batch_size=8',
                   '--batch_norm_batches=0']),
    'cifar10': (cifar10_main.define_cifar_flags, cifar10_main.run_cifar,
                ['--resnet_size=8', '--batch_size=8', '--batch_norm_batches=1']),
}
# (image shape, classes) of the tfds datasets run here: square grey, square colour, and
# binary_alpha_digits' 20x16 grey images of 36 classes.
TFDS_DATASETS = {'mnist': ([28, 28, 1], 10), 'cifar10': ([32, 32, 3], 10),
                 'binary_alpha_digits': ([20, 16, 1], 36)}


def _train(main, tmp_path, argv):
  define, run, small = MAINS[main]
  model_dir = str(tmp_path / ('model_' + main))
  f = parse_flags(define, ['--model_dir=%s' % model_dir, '--train_epochs=1',
                           '--max_train_steps=3'] + small + list(argv), main)
  results = run(f)
  if main != 'alexnet':  # the Estimator mains return resnet_main's dict
    results = results['eval_results']
  with open(os.path.join(model_dir, 'flags.json')) as fh:
    return results, json.load(fh)


# AlexNet's runs take about a second, cifar10_main's ResNet-8 about 3 s; ResNet-18's and
# GoogLeNet's 5-15 s. (cifar10_main on its own files: test_cifar10_main.py.)
EVERY_MAIN = ['alexnet', pytest.param('resnet', marks=pytest.mark.slow),
              pytest.param('googlenet', marks=pytest.mark.slow)]


@pytest.mark.parametrize('main', EVERY_MAIN)
def test_every_main_trains_on_cifar10_files(main, tmp_path, cifar10_dir):
  results, recorded = _train(main, tmp_path, ['--dataset=cifar10',
                                              '--data_dir=%s' % cifar10_dir])
  assert 0 <= results['accuracy'] <= 1 and results['global_step'] == 3
  assert recorded['image_shape'] == [32, 32, 3] and recorded['num_classes'] == 10
  assert recorded['dataset'] == 'cifar10' and recorded['dataset_name'] == 'CIFAR-10'
  assert recorded['train_examples'] == 40 and recorded['test_examples'] == 20
  if main != 'alexnet':
    assert recorded['augmentation'] == {'shift_pixels': 4, 'flip': True}


@pytest.mark.parametrize('name', sorted(TFDS_DATASETS))
@pytest.mark.parametrize('main', EVERY_MAIN + ['cifar10'])
def test_every_main_trains_on_tfds_datasets(main, name, tmp_path, monkeypatch):
  shape, num_classes = TFDS_DATASETS[name]
  monkeypatch.setattr(tfds_data, '_online', lambda: True)  # mock data downloads nothing
  with tfds.testing.mock_data(num_examples=24):
    results, recorded = _train(main, tmp_path, ['--dataset=tfds:%s' % name,
                                                '--data_dir=%s' % tmp_path])
  assert 0 <= results['accuracy'] <= 1 and results['global_step'] == 3
  assert recorded['image_shape'] == shape and recorded['num_classes'] == num_classes
  assert recorded['dataset_name'] == 'tfds:%s' % name
  assert recorded['train_examples'] == 24 and recorded['test_examples'] == 24


def test_tfds_data_keeps_the_dataset_s_shape_and_classes(monkeypatch):
  monkeypatch.setattr(tfds_data, '_online', lambda: True)  # mock data downloads nothing
  with tfds.testing.mock_data(num_examples=6):
    raw = datasets.load('tfds:binary_alpha_digits', '/unused')
    synthetic = datasets.load('tfds:cifar10', '/unused', use_synthetic_data=True)
  assert raw.train_images.shape == (6, 20, 16, 1) and raw.image_shape == (20, 16, 1)
  assert raw.num_classes == 36 and raw.train_labels.max() < 36
  assert synthetic.image_shape == (32, 32, 3) and synthetic.num_classes == 10


@pytest.mark.parametrize('value', ['cifar11', 'tfds:', 'MNIST', ''])
def test_unknown_dataset_values_are_refused_at_parse_time(value):
  with pytest.raises(flags.IllegalFlagValueError,
                     match='--dataset must be mnist, cifar10 or tfds:<name>'):
    parse_flags(alexnet_main.define_alexnet_flags, ['--dataset=%s' % value])


def test_tfds_errors_are_one_line_naming_the_dataset(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_data, '_online', lambda: False)
  with pytest.raises(tfds_data.TfdsDatasetError,
                     match='tfds:no_such_set: not a dataset of tensorflow-datasets'):
    tfds_data.load('no_such_set', str(tmp_path))
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(tfds_data.TfdsDatasetError, match=r'tfds:mnist: not prepared in %s and '
                     r'could not be downloaded \(no connection' % data_dir) as error:
    tfds_data.load('mnist', data_dir)
  assert '\n' not in str(error.value) and not os.path.exists(data_dir)
  with pytest.raises(tfds_data.TfdsDatasetError, match='only image classification'):
    tfds_data.load('glue/cola', str(tmp_path))


@pytest.mark.parametrize('main', ['alexnet', 'cifar10'])
def test_missing_cifar10_data_costs_a_clean_run_nothing(main, tmp_path, monkeypatch):
  monkeypatch.setattr(cifar10_data, 'SOURCE_URL', 'file://%s/absent.tar.gz' % tmp_path)
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  (model_dir / 'checkpoint').write_text('model_checkpoint_path: "model.ckpt-7"\n')
  define, run, _ = MAINS[main]
  f = parse_flags(define, ['--dataset=cifar10', '--data_dir=%s' % (tmp_path / 'none'),
                           '--model_dir=%s' % model_dir, '--clean'], main)
  with pytest.raises(SystemExit, match='error: CIFAR-10 data not found in '):
    lifecycle.run_main(functools.partial(run, f), user_errors=datasets.DATA_ERRORS)
  assert os.listdir(str(model_dir)) == ['checkpoint']
