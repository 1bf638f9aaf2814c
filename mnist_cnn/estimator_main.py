"""What the Estimator entry points (resnet_main, googlenet_main) share: from parsed flags to
resnet_run_loop.run_estimator.

An entry point defines its model's flags and builds its model; everything else of a run (the
precision plan, the data read once, the learning-rate schedule, the batch-norm memory, the
facts flags.json records, the run's errors and exit status) is done here once for both.
"""

import functools

from absl import flags
import tensorflow as tf

from mnist_cnn import datasets
from mnist_cnn import input_data
from official.resnet import resnet_flags
from official.resnet import resnet_run_loop
from official.utils import batch_norm_statistics
from official.utils import cluster_training
from official.utils import distribution_utils
from official.utils import learning_rate
from official.utils import lifecycle
from official.utils import precision

BOUNDARY_FRACTIONS = (0.5, 0.75, 0.9)
DECAY_RATES = (1.0, 0.1, 0.01, 0.001)
BATCH_DENOM = 256


def define_flags(flag_values=flags.FLAGS):
  """The Estimator run loop's flags and the data augmentation every Estimator main takes."""
  resnet_flags.define_estimator_flags(flag_values)
  define_augmentation_flags(flag_values)


def define_augmentation_flags(flag_values=flags.FLAGS):
  fv = {'flag_values': flag_values}
  flags.DEFINE_integer('shift_pixels', None,
                       'Shift training images randomly by up to this many pixels (zero '
                       'padding, random crop; 0: off). Default: the dataset\'s standard '
                       'augmentation (2 for IDX digits, 4 for CIFAR-10; mnist_cnn/datasets.py).',
                       **fv)
  flags.DEFINE_boolean('random_flip', None,
                       'Mirror training images left-right at random. Default: the dataset\'s '
                       'standard augmentation (on for photographs such as CIFAR-10, off for '
                       'digits and letters).', **fv)
  flags.register_validator('shift_pixels', lambda v: v is None or v >= 0,
                           message='--shift_pixels must be zero or more', **fv)


def run(flags_obj, model_name, model_params):
  """Trains and evaluates one Estimator model on --dataset (or synthetic data of its shape);
  returns the last evaluation (see resnet_run_loop.run_estimator).

  Args:
    flags_obj: the parsed flags (this is an entry point's one read of them).
    model_name: recorded in flags.json ('resnet', 'googlenet').
    model_params: fn(flags_obj, raw, plan) -> the model_fn params (see
      resnet_run_loop.resnet_model_fn), built from values.
  """
  settings = lifecycle.settings_from_flags(lifecycle.RunSettings, flags_obj)
  # Settled before anything in model_dir is touched: a refusal must not cost a checkpoint.
  has_gpu = bool(tf.config.list_physical_devices('GPU'))
  plan = precision.plan(precision.settle_dtype(flags_obj.dtype, flags_obj.bf16_fallback,
                                               has_gpu=has_gpu), has_gpu=has_gpu)
  raw = datasets.load(flags_obj.dataset, flags_obj.data_dir, flags_obj.use_synthetic_data,
                      flags_obj.seed)
  augmentation = datasets.augmentation(flags_obj.dataset, flags_obj.shift_pixels,
                                       flags_obj.random_flip)
  data = resnet_run_loop.Data(
      functools.partial(input_data.raw_input_fn, raw, shift_pixels=augmentation.shift_pixels,
                        flip=augmentation.flip),
      raw.image_shape, raw.num_train, raw.test_set)
  params = model_params(flags_obj, raw, plan)
  facts = dict(raw.describe(), model=model_name,
               dataset_name=datasets.display_name(flags_obj.dataset,
                                                  flags_obj.use_synthetic_data),
               augmentation=augmentation._asdict(), dtype_used=plan.dtype,
               batch_norm_decay_used=params['batch_norm_decay'])
  return resnet_run_loop.run_estimator(
      settings, lifecycle.settings_from_flags(resnet_run_loop.EstimatorSettings, flags_obj),
      lifecycle.settings_from_flags(cluster_training.ClusterSettings, flags_obj),
      resnet_run_loop.resnet_model_fn, params, data, facts)


def recipe_params(flags_obj, num_train, plan, boundary_fractions=BOUNDARY_FRACTIONS,
                  batch_denom=BATCH_DENOM):
  """The model_fn params every Estimator model shares: the learning-rate schedule (cosine, or
  steps by DECAY_RATES at boundary_fractions of the run), optimizer, loss terms and precision;
  --base_learning_rate is the rate for a batch of batch_denom."""
  epochs = flags_obj.train_epochs
  total_steps = int(epochs * num_train / flags_obj.batch_size)
  bn_decay = flags_obj.batch_norm_decay
  if bn_decay is None:
    bn_decay = batch_norm_statistics.batch_norm_decay_for(total_steps)
  if flags_obj.lr_schedule == 'cosine':
    learning_rate_fn = learning_rate.learning_rate_cosine(
        batch_size=flags_obj.batch_size, batch_denom=batch_denom, num_images=num_train,
        train_epochs=epochs, base_lr=flags_obj.base_learning_rate,
        warmup_epochs=flags_obj.warmup_epochs)
  else:
    learning_rate_fn = learning_rate.learning_rate_with_decay(
        batch_size=flags_obj.batch_size, batch_denom=batch_denom, num_images=num_train,
        boundary_epochs=[fraction * epochs for fraction in boundary_fractions],
        decay_rates=DECAY_RATES, base_lr=flags_obj.base_learning_rate,
        warmup_epochs=flags_obj.warmup_epochs)
  return {'learning_rate_fn': learning_rate_fn, 'momentum': flags_obj.momentum,
          'weight_decay': flags_obj.weight_decay, 'label_smoothing': flags_obj.label_smoothing,
          'fine_tune': flags_obj.fine_tune, 'loss_scale': flags_obj.loss_scale,
          'dtype': plan.graph_dtype, 'onednn_bf16': plan.onednn_bf16,
          'batch_norm_decay': bn_decay}


def main(run_fn, flags_obj):
  """An Estimator main's body: run_fn(flags_obj) with the run lifecycle's error handling."""
  cluster = lifecycle.settings_from_flags(cluster_training.ClusterSettings, flags_obj)
  lifecycle.run_main(run_fn, flags_obj,
                     user_errors=datasets.DATA_ERRORS + (distribution_utils.DistributionError,),
                     records_run=cluster_training.records_run(cluster))
