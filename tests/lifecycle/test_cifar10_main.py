"""cifar10_main: the Model Garden's flags and schedule, and a run on tiny CIFAR-10 binary files
whose export answers in a fresh process as the Estimator does, from floats and from PNGs."""

import json
import os

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from official.resnet import cifar10_main
from official.utils import export
from tests import model_helpers
from tests.conftest import parse_flags


def make_flags(argv=()):
  return parse_flags(cifar10_main.define_cifar_flags, argv, 'cifar10_main')


@pytest.mark.parametrize('argv,message', [
    (['--resnet_size=18'], r'--resnet_size must be 6n\+2'),
    (['--resnet_size=2'], r'--resnet_size must be 6n\+2'),
    (['--stem=mnist'], 'Unknown command line flag'),
])
def test_bad_flags_fail_with_a_clear_message(argv, message):
  error = flags.UnrecognizedFlagError if 'Unknown' in message else flags.IllegalFlagValueError
  with pytest.raises(error, match=message):
    make_flags(argv)


def test_defaults_are_the_model_garden_s():
  f = make_flags()
  assert (f.dataset, f.resnet_size, f.train_epochs, f.batch_size, f.weight_decay,
          f.base_learning_rate, f.lr_schedule, f.epochs_between_evals, f.momentum) == (
              'cifar10', '56', 182, 128, 2e-4, 0.1, 'step', 10, 0.9)


def _model_garden_params(**overrides):
  """The params the Model Garden's resnet_main gave cifar10_model_fn: none of the recipe's."""
  return dict({'resnet_size': 8, 'data_format': 'channels_last', 'batch_size': 256,
               'resnet_version': 2, 'loss_scale': 1, 'dtype': tf.float32,
               'fine_tune': False}, **overrides)


def test_schedule_divides_by_ten_at_epochs_91_and_136_of_182_scaled_to_the_batch():
  steps_per_epoch = 50000 / 256
  with tf.Graph().as_default() as graph, tf.compat.v1.Session() as sess:
    images = tf.zeros([2, 32, 32, 3])
    cifar10_main.cifar10_model_fn(images, tf.constant([0, 1]), tf.estimator.ModeKeys.TRAIN,
                                  _model_garden_params())
    step = tf.compat.v1.placeholder(tf.int64, [])
    set_step = tf.compat.v1.train.get_global_step().assign(step)
    rate = graph.get_tensor_by_name('learning_rate:0')
    sess.run(tf.compat.v1.global_variables_initializer())
    rates = []
    for epoch in (0, 90, 92, 135, 137, 181):
      sess.run(set_step, {step: int(epoch * steps_per_epoch)})
      rates.append(sess.run(rate))
    # Weight decay 2e-4 on every variable, batch-norm gamma and beta included.
    variables = tf.compat.v1.trainable_variables()
    assert any('batch_normalization' in v.name for v in variables)
    l2_loss, values = sess.run([graph.get_tensor_by_name('l2_loss:0'), variables])
  np.testing.assert_allclose(rates, [0.2, 0.2, 0.02, 0.02, 0.002, 0.002], rtol=1e-5)
  expected = 2e-4 * sum(float(np.sum(v.astype(np.float64) ** 2)) / 2 for v in values)
  assert l2_loss == pytest.approx(expected, rel=1e-4)


def _serve(export_path, signature_name, input_name, value):
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    meta_graph = tf.compat.v1.saved_model.loader.load(sess, ['serve'], export_path)
    signature = meta_graph.signature_def[signature_name]
    return sess.run(signature.outputs['probabilities'].name,
                    {signature.inputs[input_name].name: value})


@pytest.mark.slow
def test_end_to_end_on_tiny_binary_files_with_export_loaded_in_a_fresh_process(
    tmp_path, cifar10_dir):
  model_dir, export_dir = str(tmp_path / 'model'), str(tmp_path / 'export')
  argv = ['--data_dir=%s' % os.path.dirname(cifar10_dir), '--model_dir=%s' % model_dir,
          '--resnet_size=8', '--train_epochs=2', '--epochs_between_evals=1',
          '--batch_size=10', '--batch_norm_batches=2', '--export_dir=%s' % export_dir]
  stats = cifar10_main.run_cifar(make_flags(argv))
  results = dict(stats['eval_results'], export_path=stats['export_path'])
  assert results['global_step'] == 2 * 4 and 0 <= results['accuracy'] <= 1
  with open(os.path.join(model_dir, 'flags.json')) as f:
    recorded = json.load(f)
  assert (recorded['model'], recorded['dataset_name'], recorded['image_shape'],
          recorded['resnet_size']) == ('resnet', 'CIFAR-10', [32, 32, 3], '8')
  assert recorded['augmentation'] == {'shift_pixels': 4, 'flip': True}
  assert export.read_serving_info(results['export_path'])['image_shape'] == [32, 32, 3]

  pixels = np.random.RandomState(1).randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  images = pixels.astype(np.float32) / 255.0
  exported, names = model_helpers.exported_probabilities(results['export_path'], images,
                                                         tmp_path)
  assert exported.shape == (3, 10) and names
  predicted = model_helpers.estimator_probabilities(
      model_dir, _model_garden_params(batch_size=10), images, cifar10_main.cifar10_model_fn)
  np.testing.assert_allclose(exported, predicted, atol=1e-5)
  # The image-bytes signature decodes colour PNGs to the 32x32x3 the model trained on, and a
  # grey one to three equal channels.
  from_png = _serve(results['export_path'], 'image_bytes:serving_default', 'image_bytes',
                    [tf.io.encode_png(image).numpy() for image in pixels])
  np.testing.assert_allclose(from_png, exported, atol=1e-5)
  grey = pixels[:1, :, :, :1]
  from_grey = _serve(results['export_path'], 'image_bytes:serving_default', 'image_bytes',
                     [tf.io.encode_png(grey[0]).numpy()])
  as_rgb = _serve(results['export_path'], 'serving_default', 'images',
                  np.repeat(grey.astype(np.float32) / 255.0, 3, axis=-1))
  np.testing.assert_allclose(from_grey, as_rgb, atol=1e-5)
