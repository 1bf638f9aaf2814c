"""Estimator params of a small ResNet, for tests that call resnet_model_fn themselves, and an
export's answers from a fresh process."""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from mnist_cnn import resnet_main


def resnet_params(**overrides):
  """resnet_model_fn params of a 4-filter ResNet-18 for 10 classes, in fp32."""
  params = {
      'model': lambda dtype, batch_norm_decay=0.997: resnet_main.MnistModel(
          18, 10, num_filters=4, data_format='channels_last', dtype=dtype,
          batch_norm_decay=batch_norm_decay),
      'num_classes': 10, 'weight_decay': 1e-4, 'momentum': 0.9, 'dtype': 'fp32',
      'learning_rate_fn': lambda step: tf.constant(0.1), 'loss_scale': None,
      'fine_tune': False, 'label_smoothing': 0.0}
  params.update(overrides)
  return params


_FRESH_PROCESS_SCRIPT = (
    'import sys, numpy as np, tensorflow as tf\n'
    'model = tf.saved_model.load(sys.argv[1])\n'
    'names = [v.name for v in model.variables]\n'
    'out = model.signatures["serving_default"](images=tf.constant(np.load(sys.argv[2])))\n'
    'np.save(sys.argv[3], out["probabilities"].numpy())\n'
    'print("\\n".join(names))\n')


def exported_probabilities(export_path, images, work_dir):
  """(probabilities [N, classes], the export's variable names) from serving_default in a
  fresh Python process, as a user of the export would load it."""
  images_path = os.path.join(str(work_dir), 'images.npy')
  probs_path = os.path.join(str(work_dir), 'probs.npy')
  np.save(images_path, images)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', _FRESH_PROCESS_SCRIPT, export_path,
                           images_path, probs_path], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
                                                PYTHONPATH=repo))
  assert result.returncode == 0, result.stderr[-2000:]
  return np.load(probs_path), result.stdout.split()


def estimator_probabilities(model_dir, params, images):
  """Estimator.predict's probabilities for images, from model_dir's latest checkpoint: what an
  export must answer."""
  from official.resnet import resnet_run_loop  # pylint: disable=g-import-not-at-top
  estimator = tf.estimator.Estimator(resnet_run_loop.resnet_model_fn, model_dir=model_dir,
                                     params=params)
  return np.array([p['probabilities'] for p in estimator.predict(
      lambda: tf.data.Dataset.from_tensor_slices(images).batch(len(images)))])


class FakeRaw(object):
  """What model_params reads of input_data.RawData, without arrays."""

  def __init__(self, num_classes=10, num_train=400):
    self.num_classes = num_classes
    self.num_train = num_train


class FP32_PLAN(object):  # pylint: disable=invalid-name
  """What model_params reads of a precision plan: fp32, no bf16 rewrite."""
  graph_dtype = 'fp32'
  onednn_bf16 = False
