"""The Estimator run loop, with the Model Garden's r1 API: `resnet_main` and its helpers.

The report's ResNet section lists these functions and calls `resnet_main` as the Model
Garden's cifar10_main does; they keep the signatures of `official/r1/resnet/resnet_run_loop.py`
in tensorflow/models, written for `tf.compat.v1` + `tf.estimator` on TensorFlow 2.15 without
`tf.contrib`:

  process_record_dataset(dataset, is_training, batch_size, shuffle_buffer, parse_record_fn, ...)
  get_synth_input_fn(height, width, num_channels, num_classes, dtype=tf.float32)
  image_bytes_serving_input_fn(image_shape, dtype=tf.float32)
  override_flags_and_set_envars_for_gpu_thread_pool(flags_obj)   (also ..._envvars_...)
  learning_rate_with_decay(batch_size, batch_denom, num_images, boundary_epochs, ...)
  resnet_model_fn(features, labels, mode, model_class, resnet_size, weight_decay, ...)
  resnet_main(flags_obj, model_function, input_function, dataset_name, shape=None)
  define_resnet_flags(resnet_size_choices=None)

`resnet_main` owns every Estimator run here (ResNet on MNIST, GoogLeNet, the CIFAR-10 ResNets):
the only code below the mains that reads the parsed flags, it parses the cluster once, writes
the run's records, trains and evaluates in cycles (or as a cluster member), recomputes the
batch-norm statistics, stops early, handles Ctrl-C and exports with both signatures. Where the
Model Garden's behaviour was worse it does otherwise, by default: synthetic labels cover every
class, thread settings are computed instead of written back into the parsed flags, a rerun
resumes to the target epoch count instead of training it again, batch-norm variables are left
out of weight decay by name, and the export is checked on the test set.

The helpers live in their layers, re-exported here under their r1 names: the record pipeline
and synthetic input in official/data/, the receiver in official/utils/export.py, the schedules
in learning_rate.py, the flags in resnet_flags.py, the EstimatorSpec in classifier_model_fn.py.
"""

import dataclasses
import inspect
import math
import sys
import time

import tensorflow as tf

from official.data import array_input
from official.data import datasets
from official.data import record_pipeline
from official.resnet import resnet_flags
from official.resnet import resnet_model
from official.utils import batch_norm_statistics
from official.utils import classifier_model_fn
from official.utils import cluster_training
from official.utils import distribution_utils
from official.utils import export
from official.utils import learning_rate
from official.utils import lifecycle
from official.utils import precision
from official.utils import session_config
from official.utils.logs import hooks_helper
from official.utils.logs import run_record

KEEP_CHECKPOINTS = 5
# Errors of the user's making beyond lifecycle.USER_ERRORS that an Estimator main prints as one
# line: its data's, and those resnet_main raises.
USER_ERRORS = datasets.DATA_ERRORS + (distribution_utils.DistributionError,
                                      batch_norm_statistics.StatisticsError)

# The Model Garden's names, each the callable it describes.
process_record_dataset = record_pipeline.process_record_dataset
get_synth_input_fn = array_input.get_synth_input_fn
image_bytes_serving_input_fn = export.image_bytes_serving_input_fn
learning_rate_with_decay = learning_rate.learning_rate_with_decay
define_resnet_flags = resnet_flags.define_resnet_flags


def override_flags_and_set_envars_for_gpu_thread_pool(flags_obj):
  """The Model Garden's: sets TF_GPU_THREAD_MODE and TF_GPU_THREAD_COUNT for
  --tf_gpu_thread_mode and writes the thread counts that leaves back into flags_obj
  (--inter_op_parallelism_threads, --datasets_num_private_threads). resnet_main does not call
  it: it computes the same counts (session_config.gpu_thread_settings, two inter-op threads per
  GPU where the Model Garden gave every core left) and leaves the parsed flags as parsed."""
  num_gpus = None if flags_obj.num_gpus == -1 else flags_obj.num_gpus
  threads = session_config.gpu_thread_settings(
      flags_obj.inter_op_parallelism_threads, flags_obj.datasets_num_private_threads,
      flags_obj.tf_gpu_thread_mode, flags_obj.per_gpu_thread_count, num_gpus=num_gpus)
  flags_obj.inter_op_parallelism_threads = threads['inter_op_parallelism_threads']
  flags_obj.datasets_num_private_threads = threads['datasets_num_private_threads']


# The report spells it with "envvars".
override_flags_and_set_envvars_for_gpu_thread_pool = (
    override_flags_and_set_envars_for_gpu_thread_pool)


def resnet_model_fn(features, labels, mode, model_class, resnet_size, weight_decay,
                    learning_rate_fn, momentum, data_format, resnet_version, loss_scale,
                    loss_filter_fn=None, dtype=resnet_model.DEFAULT_DTYPE, fine_tune=False,
                    label_smoothing=0.0, ema_decay=0.0):
  """Shared functionality of the ResNet model_fns: the model, losses, optimizer and metrics.

  Builds model_class(resnet_size, data_format, resnet_version=resnet_version, dtype=dtype), as
  the Model Garden did (a functools.partial of the class carries other constructor values), and
  returns classifier_model_fn.estimator_spec of it: cross-entropy plus weight_decay times the
  L2 norm of the variables loss_filter_fn keeps (default: all but batch norm's), momentum SGD
  at learning_rate_fn(global_step) after the batch-norm updates, with the loss scaled by
  loss_scale around the gradients. Features are cast to dtype here (the Model Garden asserted
  that the input function had). ema_decay (ours): evaluate averaged weights (weight_averages).

  Returns:
    tf.estimator.EstimatorSpec: predictions 'classes' int64 [B] and 'probabilities' float32
    [B, classes]; in TRAIN and EVAL a scalar float32 loss and the metrics 'accuracy',
    'accuracy_top_5' and 'cross_entropy'.
  """
  dtype = precision.tf_dtype(dtype)
  model = model_class(resnet_size, data_format, resnet_version=resnet_version, dtype=dtype)
  return classifier_model_fn.estimator_spec(
      features, labels, mode, model, weight_decay, learning_rate_fn, momentum,
      loss_scale=loss_scale, loss_filter_fn=loss_filter_fn, dtype=dtype, fine_tune=fine_tune,
      label_smoothing=label_smoothing, ema_decay=ema_decay)


@dataclasses.dataclass(frozen=True)
class EstimatorSettings(object):
  """The Estimator loop's own flags (official/resnet/resnet_flags.py), as values."""
  eval_only: bool
  save_checkpoints_secs: int
  pretrained_model_checkpoint_path: str
  image_bytes_as_serving_input: bool
  datasets_num_private_threads: int
  tf_gpu_thread_mode: str
  per_gpu_thread_count: int
  batch_norm_batches: int


@dataclasses.dataclass(frozen=True)
class RecipeSettings(object):
  """The training recipe's flags, which resnet_main hands every model_fn in params."""
  weight_decay: float
  momentum: float
  base_learning_rate: float
  warmup_epochs: float
  lr_schedule: str
  label_smoothing: float
  batch_norm_decay: float
  fine_tune: bool
  loss_scale: int
  data_format: str


def resnet_main(flags_obj, model_function, input_function, dataset_name, shape=None, data=None,
                model_params=None, model_name='resnet'):
  """Trains and evaluates an Estimator model in cycles (or as a cluster member) and exports it.

  Args:
    flags_obj: parsed flags of resnet_flags.define_resnet_flags (or define_estimator_flags).
    model_function: an Estimator model_fn(features, labels, mode, params). params holds the
      Model Garden's keys ('resnet_size', 'data_format', 'batch_size', 'resnet_version',
      'loss_scale', 'dtype' (a TensorFlow dtype), 'fine_tune', 'num_workers'), the recipe
      ('train_epochs', 'weight_decay', 'momentum', 'base_learning_rate', 'warmup_epochs',
      'lr_schedule', 'label_smoothing', 'ema_decay', 'batch_norm_decay', which the model must
      be built with: it is 0.0 while the statistics are recomputed), 'num_images' and
      'num_classes' when data says them, and model_params.
    input_function: input_fn(is_training, data_dir, batch_size, num_epochs=1, dtype=...,
      [datasets_num_private_threads, input_context, seed]) -> Dataset of (images, labels);
      called with the keywords it accepts.
    dataset_name: what flags.json records as the data ('-synthetic' added with
      --use_synthetic_data, as the Model Garden did).
    shape: [h, w, c] of the images, for the export (default: data's).
    data: None, or what the run knows of input_function's data: num_train, num_classes,
      image_shape, test_set() and describe() (array_input.ArrayInput is both). With it a run
      counts its epochs in steps, so a rerun resumes to --train_epochs instead of training
      again, and the export is checked on the test set; without it each cycle trains its
      epochs' passes over the input, as the Model Garden's did.
    model_params: the model's own entries of params (from its main's flags).
    model_name: what flags.json records as the model.

  Returns:
    {'eval_results': the last evaluation's results (accuracy, accuracy_top_5, loss,
    cross_entropy, global_step; {} for cluster members other than the chief),
    'train_hooks': the training hooks, 'export_path': the export's directory or None}.

  Raises:
    PrecisionError, RunDirError, DistributionError, StatisticsError: one-line errors of the
      user's making, raised before model_dir is touched where they can be.
  """
  settings = lifecycle.settings_from_flags(lifecycle.RunSettings, flags_obj)
  loop_settings = lifecycle.settings_from_flags(EstimatorSettings, flags_obj)
  recipe = lifecycle.settings_from_flags(RecipeSettings, flags_obj)
  cluster_settings = lifecycle.settings_from_flags(cluster_training.ClusterSettings, flags_obj)
  model_size = {name: int(getattr(flags_obj, name)) if hasattr(flags_obj, name) else None
                for name in ('resnet_size', 'resnet_version')}
  if flags_obj.use_synthetic_data:
    dataset_name += '-synthetic'
  # Settled before anything in model_dir is touched: a refusal must not cost a checkpoint.
  has_gpu = bool(tf.config.list_physical_devices('GPU'))
  plan = precision.plan(precision.settle_dtype(flags_obj.dtype, flags_obj.bf16_fallback,
                                               has_gpu=has_gpu), has_gpu=has_gpu)
  placement = cluster_training.resolve(
      cluster_training.cluster_of(cluster_settings), cluster_settings, settings.batch_size,
      settings.stop_threshold, loop_settings.eval_only)
  if placement.cluster.distributed and data is None:
    raise distribution_utils.DistributionError(
        'a cluster run needs to know its training images (resnet_main(..., data=...)): its '
        'members train to a step count')
  image_shape = list(shape or (data.image_shape if data is not None else []))
  if settings.export_dir and not image_shape:
    raise ValueError('--export_dir needs the image shape: pass resnet_main shape=[h, w, c]')
  params = dict(_params(recipe, model_size, plan, data, settings, placement),
                **(model_params or {}))
  facts = dict(data.describe() if data is not None else {}, model=model_name,
               dataset_name=dataset_name, dtype_used=plan.dtype,
               batch_norm_decay_used=params['batch_norm_decay'])
  if image_shape:
    facts['image_shape'] = image_shape
  run = _Run(settings, loop_settings, placement, cluster_settings.cluster_timeout_s,
             model_function, params, plan, data)
  with lifecycle.recording(settings.model_dir if placement.cluster.is_chief else None,
                           user_errors=USER_ERRORS):
    return run.main(input_function, flags_obj.data_dir, facts, image_shape)


def _params(recipe, model_size, plan, data, settings, placement):
  """The params every model_fn gets (see resnet_main), from values."""
  num_images = data.num_train if data is not None else None
  bn_decay = recipe.batch_norm_decay
  if bn_decay is None:
    bn_decay = resnet_model.BATCH_NORM_DECAY
    if num_images:
      bn_decay = batch_norm_statistics.batch_norm_decay_for(
          int(settings.train_epochs * num_images / settings.batch_size))
  params = dict(model_size, data_format=recipe.data_format, batch_size=settings.batch_size,
                loss_scale=recipe.loss_scale or precision.default_loss_scale(plan.graph_dtype),
                dtype=precision.tf_dtype(plan.graph_dtype), fine_tune=recipe.fine_tune,
                num_workers=placement.cluster.training_workers,
                train_epochs=settings.train_epochs, weight_decay=recipe.weight_decay,
                momentum=recipe.momentum, base_learning_rate=recipe.base_learning_rate,
                warmup_epochs=recipe.warmup_epochs, lr_schedule=recipe.lr_schedule,
                label_smoothing=recipe.label_smoothing, batch_norm_decay=bn_decay,
                ema_decay=settings.ema_decay)
  if data is not None:
    params.update(num_images=num_images, num_classes=data.num_classes)
  return params


def _accepted(function, names):
  """Which of names function takes as keywords (all, with **kwargs)."""
  parameters = inspect.signature(function).parameters.values()
  if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters):
    return set(names)
  return set(names) & {p.name for p in parameters}


class _Run(object):
  """One resnet_main run: its Estimator, input functions, hooks and step counts."""

  def __init__(self, settings, loop_settings, placement, cluster_timeout_s, model_fn, params,
               plan, data):
    self.settings = settings
    self.loop_settings = loop_settings
    self.placement = placement
    self.cluster_timeout_s = cluster_timeout_s
    self.model_fn = model_fn
    self.params = params
    self.plan = plan
    self.data = data
    self.steps_per_epoch = (math.ceil(data.num_train / settings.batch_size)
                            if data is not None else None)
    self.progress = hooks_helper.ProgressHook(settings.batch_size, self.steps_per_epoch)
    self.hooks = hooks_helper.get_train_hooks(settings.hooks, settings.model_dir,
                                              settings.batch_size)
    self.threads = session_config.gpu_thread_settings(
        settings.inter_op_parallelism_threads, loop_settings.datasets_num_private_threads,
        loop_settings.tf_gpu_thread_mode, loop_settings.per_gpu_thread_count)
    self._input = None

  def main(self, input_function, data_dir, facts, image_shape):
    """The run, from model_dir's preparation to the export; see resnet_main."""
    settings, cluster = self.settings, self.placement.cluster
    self._input = (input_function, data_dir, _accepted(input_function, (
        'datasets_num_private_threads', 'input_context', 'seed')))
    if cluster.is_chief:
      lifecycle.start(settings, KEEP_CHECKPOINTS, dict(
          facts, replicas=self.placement.replicas, cluster=cluster.config.get('cluster')))
    if cluster.distributed:
      cluster_training.join(cluster)
    self.classifier = self._make_estimator()
    if cluster.distributed:
      results = self.train_in_cluster()
    else:
      results = self.train_locally()
    exported = lifecycle.export_if_asked(settings, self._export(image_shape), {}) if results else {}
    return {'eval_results': results, 'train_hooks': self.hooks,
            'export_path': exported.get('export_path')}

  def _export(self, image_shape):
    test_set = self.data.test_set if self.data is not None else None
    return lambda export_dir: export.export_from_model_fn(
        export_dir, self.model_fn, self.params, image_shape,
        tf.train.latest_checkpoint(self.settings.model_dir), self.plan.dtype,
        self.loop_settings.image_bytes_as_serving_input, test_set)

  def _make_estimator(self):
    settings, placement = self.settings, self.placement
    config = session_config.make(self.threads['inter_op_parallelism_threads'],
                                 settings.intra_op_parallelism_threads,
                                 onednn_bf16=self.plan.onednn_bf16, allow_soft_placement=True)
    # A Saver of averages built in a replica restores its copies only: one device evaluates.
    run_config = tf.estimator.RunConfig(
        train_distribute=placement.strategy, eval_distribute=(
            None if placement.cluster.distributed or settings.ema_decay else placement.strategy),
        model_dir=settings.model_dir, tf_random_seed=settings.seed, session_config=config,
        save_checkpoints_secs=self.loop_settings.save_checkpoints_secs,
        keep_checkpoint_max=KEEP_CHECKPOINTS, log_step_count_steps=1000,
        session_creation_timeout_secs=self.cluster_timeout_s)
    pretrained = self.loop_settings.pretrained_model_checkpoint_path
    # Everything but the final dense layer, whose class count may differ.
    warm_start = (tf.estimator.WarmStartSettings(pretrained, '^(?!.*dense)') if pretrained
                  else None)
    return tf.estimator.Estimator(model_fn=self.model_fn, model_dir=settings.model_dir,
                                  config=run_config, params=self.params,
                                  warm_start_from=warm_start)

  def _input_fn(self, is_training, num_epochs, input_context=None):
    """The input function called with the keywords it takes. Under a strategy each replica's
    call yields that replica's share of the batch; each worker of a cluster shuffles with its
    own seed, so they do not train in lockstep."""
    function, data_dir, accepted = self._input
    optional = {'datasets_num_private_threads': self.threads['datasets_num_private_threads'],
                'input_context': input_context}
    if is_training:
      optional['seed'] = self.settings.seed + (
          input_context.input_pipeline_id if input_context else 0)
    return function(is_training=is_training, data_dir=data_dir,
                    batch_size=self.placement.replica_batch_size, num_epochs=num_epochs,
                    dtype=self.params['dtype'],
                    **{k: v for k, v in optional.items() if k in accepted})

  def train_input_fn(self, num_epochs, input_context=None):
    return self._input_fn(True, num_epochs, input_context)

  def eval_input_fn(self):
    return self._input_fn(False, 1)

  def evaluate(self, classifier=None):
    # An input of unknown length may repeat forever (the Model Garden's synthetic one did);
    # --max_train_steps then bounds the evaluation, as it did there.
    steps = None if self.steps_per_epoch else self.settings.max_train_steps
    results = (classifier or self.classifier).evaluate(input_fn=self.eval_input_fn, steps=steps)
    return {key: (value.item() if hasattr(value, 'item') else value)
            for key, value in results.items()}

  def max_steps(self, epochs):
    """The global step that ends `epochs` epochs (capped by --max_train_steps); without a
    known epoch length, --max_train_steps alone (None: the input's end)."""
    if not self.steps_per_epoch:
      return self.settings.max_train_steps
    steps = epochs * self.steps_per_epoch
    return min(steps, self.settings.max_train_steps or steps)

  def train_locally(self):
    """Train/evaluate cycles of --epochs_between_evals to --train_epochs, one metrics.json
    record each, until a stop condition; returns the last evaluation."""
    settings = self.settings
    cycle_ends = list(range(settings.epochs_between_evals, settings.train_epochs,
                            settings.epochs_between_evals)) + [settings.train_epochs]
    results, previous_end = {}, 0
    recorded = lifecycle.recorded_epochs(settings.model_dir, self.max_steps,
                                         cluster_training.checkpoint_step(settings.model_dir))
    for cycle_end in ([] if self.loop_settings.eval_only else cycle_ends):
      if cycle_end in recorded:  # a rerun: trained and recorded before, its record stays
        previous_end = cycle_end
        continue
      results = self._cycle(previous_end, cycle_end)
      previous_end = cycle_end
      if lifecycle.should_stop(settings, results):
        break
    if not results:
      results = self.evaluate()
      run_record.append_metrics(settings.model_dir, dict(results, event='eval_only'))
      print('Test accuracy %.4f' % results['accuracy'])
    return results

  def _cycle(self, previous_end, cycle_end):
    """Trains epochs previous_end+1..cycle_end (what a resumed run still lacks of them),
    evaluates, and records; returns the evaluation."""
    settings, classifier = self.settings, self.classifier
    max_steps = self.max_steps(cycle_end)
    done = cluster_training.checkpoint_step(settings.model_dir)
    train_seconds, trained_steps = 0.0, 0
    if max_steps is None or done < max_steps:
      started = time.monotonic()
      print('Training epochs %d-%d of %d (steps %d to %s)' % (
          previous_end + 1, cycle_end, settings.train_epochs, done, max_steps or 'the end'))
      with lifecycle.StopOnInterrupt() as stop:
        classifier.train(input_fn=lambda: self.train_input_fn(cycle_end - previous_end),
                         hooks=self.hooks + [self.progress, lifecycle.StopHook(stop)],
                         max_steps=max_steps)
      train_seconds = time.monotonic() - started
      trained_steps = classifier.get_variable_value('global_step') - done
      if stop.requested:
        lifecycle.interrupted(settings.model_dir, done + trained_steps)
      if trained_steps and self.loop_settings.batch_norm_batches:
        self.recompute_statistics()
    results = self.evaluate()
    run_record.append_metrics(settings.model_dir, lifecycle.epoch_record(
        cycle_end, results['global_step'], train_seconds, trained_steps * settings.batch_size,
        self.progress.mean_loss if trained_steps else None, self.progress.num_parameters,
        evaluation=results, epochs_trained=(trained_steps / self.steps_per_epoch
                                            if self.steps_per_epoch else None)))
    print('Epoch %d: test accuracy %.4f (top-5 %.4f), cross-entropy %.4f, loss with weight '
          'decay %.4f, %.1f s training' % (
              cycle_end, results['accuracy'], results['accuracy_top_5'],
              results['cross_entropy'], results['loss'], train_seconds))
    sys.stdout.flush()
    return results

  def recompute_statistics(self):
    """Batch-norm statistics of the latest checkpoint from its own weights (precise BN; see
    official/utils/batch_norm_statistics.py), so evaluation and export see the trained model."""
    started = time.monotonic()
    batches = self.loop_settings.batch_norm_batches
    count = batch_norm_statistics.recompute(
        self.model_fn, self.params, lambda: self.train_input_fn(None),
        tf.train.latest_checkpoint(self.settings.model_dir), batches,
        config=self.classifier.config.session_config)
    if count:
      print('Batch-norm statistics of %d layers recomputed over %d training batches (%.1f s)' %
            (count // 2, batches, time.monotonic() - started))

  def train_in_cluster(self):
    """This process's part of a cluster run; the chief then recomputes the batch-norm
    statistics of the final checkpoint, evaluates and records it, so a cluster's run directory
    looks like a local one's. (The evaluator task evaluates checkpoints as they come, with the
    moving averages.)"""
    settings = self.settings
    max_steps = self.max_steps(settings.train_epochs)
    goal = ('--max_train_steps' if max_steps == settings.max_train_steps else
            '%d epochs of %d steps' % (settings.train_epochs, self.steps_per_epoch))
    task_type, train_seconds, resumed = cluster_training.train_in_cluster(
        self.classifier, self.placement.cluster, self.cluster_timeout_s, max_steps,
        lambda input_context=None: self.train_input_fn(None, input_context),
        self.eval_input_fn, self.hooks + [self.progress], goal)
    if task_type != 'chief':
      return {}
    if self.loop_settings.batch_norm_batches and train_seconds:
      self.recompute_statistics()
    results = self.evaluate(cluster_training.local_estimator(
        self.model_fn, settings.model_dir, self.params, settings.seed))
    record = cluster_training.chief_record(
        results, train_seconds, resumed, self.steps_per_epoch, settings.batch_size,
        settings.train_epochs, self.progress, self.placement.cluster)
    run_record.append_metrics(settings.model_dir, record)
    print('Cluster trained to step %d: test accuracy %.4f, %.1f examples/s over %d worker(s)' %
          (results['global_step'], results['accuracy'], record['examples_per_second'],
           record['workers']))
    return results
