"""Params of a small ResNet for tests that call its model_fn themselves (as resnet_main would
give them), and an export's answers from a fresh process."""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from mnist_cnn import resnet_main


# The model_fn those params are for.
model_fn = resnet_main.mnist_model_fn


def resnet_params(**overrides):
  """mnist_model_fn params of a 4-filter ResNet-18 for 10 classes in fp32: the Model Garden's
  keys, the recipe's and the data's, as resnet_main gives them."""
  params = {
      'resnet_size': 18, 'data_format': 'channels_last', 'batch_size': 50,
      'resnet_version': 2, 'loss_scale': 1, 'dtype': tf.float32, 'fine_tune': False,
      'num_workers': 1, 'train_epochs': 2, 'weight_decay': 1e-4, 'momentum': 0.9,
      'base_learning_rate': 0.1, 'warmup_epochs': 0.0, 'lr_schedule': 'step',
      'label_smoothing': 0.0, 'batch_norm_decay': 0.997, 'num_images': 400,
      'num_classes': 10, 'stem': 'mnist', 'num_filters': 4}
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


def estimator_probabilities(model_dir, params, images, estimator_model_fn=model_fn):
  """Estimator.predict's probabilities for images, from model_dir's latest checkpoint: what an
  export must answer."""
  estimator = tf.estimator.Estimator(estimator_model_fn, model_dir=model_dir, params=params)
  return np.array([p['probabilities'] for p in estimator.predict(
      lambda: tf.data.Dataset.from_tensor_slices(images).batch(len(images)))])
