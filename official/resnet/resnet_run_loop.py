"""The Estimator run loop for ResNets: model_fn, learning rate, train/evaluate/export, flags.

In the spirit of the TensorFlow Model Garden's legacy `official/resnet/resnet_run_loop.py`,
written for `tf.compat.v1` + `tf.estimator` on TensorFlow 2.15, without `tf.contrib`, and without
its known defects: synthetic labels cover every class, thread settings are computed instead of
written back into parsed flags, a rerun resumes to the target epoch count instead of training it
again, and the batch-norm variables are left out of weight decay by name.
"""

import json
import math
import multiprocessing
import os
import shutil
import sys
import time

from absl import flags
import tensorflow as tf

from official.resnet import resnet_model
from official.utils import distribution_utils
from official.utils import export
from official.utils import precision
from official.utils import run_dir
from official.utils.flags import core as flags_core
from official.utils.logs import hooks_helper
from official.utils.logs import run_record

DTYPES = {'fp32': tf.float32, 'fp16': tf.float16, 'bf16': tf.bfloat16}
DEFAULT_LOSS_SCALE = {'fp32': 1, 'fp16': 128, 'bf16': 1}
KEEP_CHECKPOINTS = 5


def override_flags_and_set_envars_for_gpu_thread_pool(flags_obj):
  """Computes thread settings for a private GPU thread pool and sets TF's env vars for it.

  With --tf_gpu_thread_mode=gpu_private each GPU gets its own threads for launching kernels,
  so the input pipeline and inter-op threads must share what is left of the CPU. Returns the
  values to use instead of writing them back into the parsed flags.

  Returns:
    dict with 'inter_op_parallelism_threads' and 'datasets_num_private_threads'.
  """
  inter_op = flags_obj.inter_op_parallelism_threads
  private_threads = flags_obj.datasets_num_private_threads
  mode = flags_obj.tf_gpu_thread_mode
  if mode:
    cpu_count = multiprocessing.cpu_count()
    per_gpu = flags_obj.per_gpu_thread_count or 2
    num_gpus = len(tf.config.list_physical_devices('GPU'))
    os.environ['TF_GPU_THREAD_MODE'] = mode
    os.environ['TF_GPU_THREAD_COUNT'] = str(per_gpu)
    total_gpu_threads = per_gpu * num_gpus
    # Model Garden's rule of thumb: leave two threads per GPU for the main thread pool, and
    # the rest after the GPU threads for tf.data.
    inter_op = inter_op or max(2, num_gpus * 2)
    private_threads = private_threads or max(1, cpu_count - total_gpu_threads - num_gpus)
  return {'inter_op_parallelism_threads': inter_op,
          'datasets_num_private_threads': private_threads}


################################################################################
# Learning rate and model_fn
################################################################################


def learning_rate_with_decay(batch_size, batch_denom, num_images, boundary_epochs, decay_rates,
                             base_lr=0.1, warmup_epochs=0):
  """Returns fn(global_step) -> learning rate, step-decayed at epoch boundaries.

  The base rate scales linearly with batch size (base_lr * batch_size / batch_denom). With
  warmup_epochs it ramps up linearly from 0 over that many epochs first.

  Args:
    boundary_epochs: epochs at which the rate changes; len(decay_rates) - 1 of them.
    decay_rates: multipliers of the scaled base rate, one per interval.

  Raises:
    ValueError: the list lengths do not fit.
  """
  if len(decay_rates) != len(boundary_epochs) + 1:
    raise ValueError('need one more decay rate than boundaries: %s vs %s' %
                     (decay_rates, boundary_epochs))
  initial_learning_rate = base_lr * batch_size / batch_denom
  batches_per_epoch = num_images / batch_size
  boundaries = [int(batches_per_epoch * epoch) for epoch in boundary_epochs]
  values = [initial_learning_rate * decay for decay in decay_rates]

  def learning_rate_fn(global_step):
    global_step = tf.cast(global_step, tf.int64)
    rate = tf.compat.v1.train.piecewise_constant(global_step, boundaries, values)
    if warmup_epochs:
      warmup_steps = max(1, int(batches_per_epoch * warmup_epochs))
      warmup_rate = (initial_learning_rate * tf.cast(global_step, tf.float32) /
                     float(warmup_steps))
      rate = tf.cond(global_step < warmup_steps, lambda: warmup_rate, lambda: rate)
    return rate

  return learning_rate_fn


def default_loss_filter_fn(name):
  """Weight decay applies to every trainable variable except batch-norm gamma and beta."""
  return 'batch_normalization' not in name


def resnet_model_fn(features, labels, mode, params):
  """The Estimator model_fn shared by ResNet mains.

  Args:
    features: images [B, h, w, c].
    labels: int class indices [B] (None in PREDICT).
    mode: a tf.estimator.ModeKeys value.
    params: dict with
      'model': callable(dtype) -> resnet_model.Model configured for the dataset;
      'num_classes', 'weight_decay', 'momentum', 'learning_rate_fn' (fn(global_step));
      'dtype' ('fp32', 'fp16', 'bf16'), 'loss_scale' (None: the dtype's default);
      'fine_tune' (train only the dense layer), 'label_smoothing';
      'loss_filter_fn' (optional; default excludes batch-norm variables).

  Returns:
    tf.estimator.EstimatorSpec for the mode.
  """
  if isinstance(features, dict):  # a serving receiver wraps a lone tensor as {'feature': t}
    features = features['feature']
  dtype = DTYPES[params['dtype']]
  model = params['model'](dtype)
  tf.compat.v1.summary.image('images', tf.cast(features, tf.float32), max_outputs=4)
  features = tf.cast(features, dtype)
  logits = model(features, mode == tf.estimator.ModeKeys.TRAIN)
  logits = tf.cast(logits, tf.float32)  # softmax and loss in float32

  predictions = {
      'classes': tf.argmax(logits, axis=1),
      'probabilities': tf.nn.softmax(logits, name='softmax_tensor'),
  }
  if mode == tf.estimator.ModeKeys.PREDICT:
    return tf.estimator.EstimatorSpec(
        mode=mode, predictions=predictions,
        export_outputs={'predict': tf.estimator.export.PredictOutput(predictions)})

  labels = tf.cast(labels, tf.int32)
  num_classes = params['num_classes']
  if params.get('label_smoothing'):
    one_hot = tf.one_hot(labels, num_classes)
    cross_entropy = tf.compat.v1.losses.softmax_cross_entropy(
        one_hot, logits, label_smoothing=params['label_smoothing'])
  else:
    cross_entropy = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels=labels,
                                                                     logits=logits)
  cross_entropy = tf.identity(cross_entropy, name='cross_entropy')
  tf.compat.v1.summary.scalar('cross_entropy', cross_entropy)

  loss_filter_fn = params.get('loss_filter_fn') or default_loss_filter_fn
  decayed = [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in tf.compat.v1.trainable_variables()
             if loss_filter_fn(v.name)]
  l2_loss = params['weight_decay'] * tf.add_n(decayed)
  l2_loss = tf.identity(l2_loss, name='l2_loss')
  tf.compat.v1.summary.scalar('l2_loss', l2_loss)
  loss = cross_entropy + l2_loss

  accuracy = tf.compat.v1.metrics.accuracy(labels, predictions['classes'])
  accuracy_top_5 = tf.compat.v1.metrics.mean(
      tf.nn.in_top_k(predictions=logits, targets=labels, k=min(5, num_classes)))
  # The EstimatorSpec's loss includes weight decay; report the data term on its own too.
  metrics = {'accuracy': accuracy, 'accuracy_top_5': accuracy_top_5,
             'cross_entropy': tf.compat.v1.metrics.mean(cross_entropy)}
  train_accuracy = tf.identity(
      tf.reduce_mean(tf.cast(tf.equal(tf.cast(predictions['classes'], tf.int32), labels),
                             tf.float32)), name='train_accuracy')
  tf.compat.v1.summary.scalar('train_accuracy', train_accuracy)

  if mode == tf.estimator.ModeKeys.EVAL:
    return tf.estimator.EstimatorSpec(mode=mode, predictions=predictions, loss=loss,
                                      eval_metric_ops=metrics)

  global_step = tf.compat.v1.train.get_or_create_global_step()
  learning_rate = tf.identity(params['learning_rate_fn'](global_step), name='learning_rate')
  tf.compat.v1.summary.scalar('learning_rate', learning_rate)
  optimizer = tf.compat.v1.train.MomentumOptimizer(learning_rate=learning_rate,
                                                   momentum=params['momentum'])
  variables = tf.compat.v1.trainable_variables()
  if params.get('fine_tune'):
    variables = [v for v in variables if 'dense' in v.name]
  loss_scale = params.get('loss_scale') or DEFAULT_LOSS_SCALE[params['dtype']]
  # Scaling the loss keeps small float16 gradients from flushing to zero; unscale after.
  grads_and_vars = optimizer.compute_gradients(loss * loss_scale, var_list=variables)
  if loss_scale != 1:
    grads_and_vars = [(g / loss_scale, v) for g, v in grads_and_vars if g is not None]
  update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
  with tf.control_dependencies(update_ops):
    train_op = optimizer.apply_gradients(grads_and_vars, global_step=global_step)
  return tf.estimator.EstimatorSpec(mode=mode, predictions=predictions, loss=loss,
                                    train_op=train_op, eval_metric_ops=metrics)


################################################################################
# The main loop
################################################################################


def resnet_main(flags_obj, model_function, input_function, dataset_name, shape,
                num_train_images, params):
  """Trains and evaluates in cycles, stops early, and exports.

  Args:
    flags_obj: parsed flags (read here, passed down as values).
    model_function: the Estimator model_fn (resnet_model_fn, or a wrapper).
    input_function: fn(is_training, data_dir, batch_size, num_epochs, dtype, seed) -> Dataset.
    dataset_name: for logs and flags.json.
    shape: [h, w, c] of one image (for the serving input).
    num_train_images: training examples per epoch (for step counts).
    params: the model_fn params (see resnet_model_fn).

  Returns:
    dict of the last evaluation's results (accuracy, accuracy_top_5, loss, global_step), plus
    'export_path' when exported.
  """
  model_dir = flags_obj.model_dir
  # Settled before anything in model_dir is touched: a refusal must not cost a checkpoint.
  dtype_name = precision.settle_dtype(flags_obj.dtype, flags_obj.bf16_fallback,
                                      has_gpu=bool(tf.config.list_physical_devices('GPU')))
  cluster = distribution_utils.cluster_config(
      os.environ, flags_obj.worker_hosts, flags_obj.ps_hosts, flags_obj.task_type,
      flags_obj.task_index)
  distribution_utils.check_strategy_for_cluster(flags_obj.distribution_strategy, cluster)
  if cluster:
    _check_cluster_flags(flags_obj)
  strategy = distribution_utils.get_distribution_strategy(flags_obj.distribution_strategy,
                                                          flags_obj.num_gpus)
  replicas = _replicas(flags_obj.distribution_strategy, strategy, cluster)
  replica_batch_size = distribution_utils.per_replica_batch_size(flags_obj.batch_size, replicas)
  task_type, task_index = distribution_utils.task_of(cluster)
  is_chief = task_type == 'chief'
  if is_chief:
    if flags_obj.clean and os.path.isdir(model_dir):
      shutil.rmtree(model_dir)
    run_dir.prepare(model_dir, flags_obj.export_dir, KEEP_CHECKPOINTS)
    run_record.write_flags(model_dir, flags_core.flags_dict(flags_obj), extra={
        'replicas': replicas, 'model': 'resnet', 'dataset': dataset_name,
        'image_shape': list(shape), 'train_examples': num_train_images, 'dtype_used': dtype_name,
        'cluster': cluster.get('cluster')})
  if cluster:
    # train_and_evaluate reads the cluster from the environment.
    os.environ['TF_CONFIG'] = json.dumps(cluster)
    print('Cluster member %s:%d of %s' % (task_type, task_index, json.dumps(cluster['cluster'])))
    sys.stdout.flush()

  threads = override_flags_and_set_envars_for_gpu_thread_pool(flags_obj)
  session_config = tf.compat.v1.ConfigProto(
      inter_op_parallelism_threads=threads['inter_op_parallelism_threads'],
      intra_op_parallelism_threads=flags_obj.intra_op_parallelism_threads,
      allow_soft_placement=True)
  run_config = tf.estimator.RunConfig(
      train_distribute=strategy, eval_distribute=None if cluster else strategy,
      model_dir=model_dir, tf_random_seed=flags_obj.seed, session_config=session_config,
      save_checkpoints_secs=flags_obj.save_checkpoints_secs, keep_checkpoint_max=KEEP_CHECKPOINTS,
      log_step_count_steps=1000, session_creation_timeout_secs=flags_obj.cluster_timeout_s)
  warm_start = None
  if flags_obj.pretrained_model_checkpoint_path:
    # Everything but the final dense layer, whose class count may differ.
    warm_start = tf.estimator.WarmStartSettings(
        flags_obj.pretrained_model_checkpoint_path, vars_to_warm_start='^(?!.*dense)')
  params = dict(params, dtype=dtype_name, loss_scale=flags_obj.loss_scale,
                fine_tune=flags_obj.fine_tune, label_smoothing=flags_obj.label_smoothing,
                weight_decay=flags_obj.weight_decay)
  classifier = tf.estimator.Estimator(model_fn=model_function, model_dir=model_dir,
                                      config=run_config, params=params,
                                      warm_start_from=warm_start)

  batch_size = flags_obj.batch_size
  steps_per_epoch = math.ceil(num_train_images / batch_size)
  dtype = DTYPES[dtype_name]
  train_hooks = hooks_helper.get_train_hooks(flags_obj.hooks, model_dir, batch_size)
  progress = hooks_helper.ProgressHook(batch_size, steps_per_epoch)
  train_hooks.append(progress)

  def input_fn_train(num_epochs, input_context=None):
    # Under a strategy each replica's input_fn call yields that replica's share of the batch;
    # each worker of a cluster shuffles with its own seed, so they do not train in lockstep.
    pipeline = input_context.input_pipeline_id if input_context else 0
    return input_function(is_training=True, data_dir=flags_obj.data_dir,
                          batch_size=replica_batch_size, num_epochs=num_epochs, dtype=dtype,
                          seed=flags_obj.seed + pipeline,
                          datasets_num_private_threads=threads['datasets_num_private_threads'])

  def input_fn_eval():
    return input_function(is_training=False, data_dir=flags_obj.data_dir,
                          batch_size=replica_batch_size, num_epochs=1, dtype=dtype)

  eval_steps = None
  if flags_obj.use_synthetic_data:
    eval_steps = 2  # synthetic input repeats forever

  if cluster:
    return _train_in_cluster(flags_obj, classifier, cluster, input_fn_train, input_fn_eval,
                             eval_steps, train_hooks, progress, steps_per_epoch, model_function,
                             params, shape)

  epochs = flags_obj.train_epochs
  cycle_ends = list(range(flags_obj.epochs_between_evals, epochs, flags_obj.epochs_between_evals))
  cycle_ends.append(epochs)
  if flags_obj.eval_only:
    cycle_ends = []

  results = {}
  previous_end = 0
  for cycle_end in cycle_ends:
    max_steps = cycle_end * steps_per_epoch
    if flags_obj.max_train_steps:
      max_steps = min(max_steps, flags_obj.max_train_steps)
    done = _checkpoint_step(model_dir)
    if done < max_steps:
      started = time.monotonic()
      print('Training epochs %d-%d of %d (steps %d to %d)' % (
          previous_end + 1, cycle_end, epochs, done, max_steps))
      try:
        classifier.train(input_fn=lambda: input_fn_train(cycle_end - previous_end),
                         hooks=train_hooks, max_steps=max_steps)
      except KeyboardInterrupt:
        run_record.append_metrics(model_dir, {'event': 'interrupted'})
        raise
      train_seconds = time.monotonic() - started
      trained_steps = classifier.get_variable_value('global_step') - done
    else:
      train_seconds, trained_steps = 0.0, 0
    results = _evaluate(classifier, input_fn_eval, eval_steps)
    record = dict(results, epoch=cycle_end, seconds=train_seconds,
                  train_loss_mean=progress.mean_loss if trained_steps else None,
                  num_parameters=progress.num_parameters,
                  epochs_trained=trained_steps / steps_per_epoch,
                  examples_per_second=(trained_steps * batch_size / train_seconds
                                       if train_seconds else None))
    run_record.append_metrics(model_dir, record)
    print('Epoch %d: test accuracy %.4f (top-5 %.4f), cross-entropy %.4f, loss with weight '
          'decay %.4f, %.1f s training' % (
              cycle_end, results['accuracy'], results['accuracy_top_5'],
              results['cross_entropy'], results['loss'], train_seconds))
    sys.stdout.flush()
    previous_end = cycle_end
    if flags_obj.max_train_steps and results['global_step'] >= flags_obj.max_train_steps:
      break
    if flags_obj.stop_threshold and results['accuracy'] >= flags_obj.stop_threshold:
      print('Stopping: test accuracy %.4f reached --stop_threshold=%s' % (
          results['accuracy'], flags_obj.stop_threshold))
      break

  if flags_obj.eval_only or not results:
    results = _evaluate(classifier, input_fn_eval, eval_steps)
    run_record.append_metrics(model_dir, dict(results, event='eval_only'))
    print('Test accuracy %.4f' % results['accuracy'])

  return _export_if_asked(classifier, flags_obj, shape, results)


def _check_cluster_flags(flags_obj):
  """Flags that need the local train/evaluate cycles cannot be honoured in a cluster."""
  for name in ('stop_threshold', 'eval_only'):
    if getattr(flags_obj, name):
      raise distribution_utils.DistributionError(
          '--%s needs evaluations between training cycles, which a cluster does not run '
          '(the chief evaluates once at the end; add an evaluator task to follow accuracy)' %
          name)


def _replicas(name, strategy, cluster):
  """Replicas that share one step's --batch_size: every device of every worker under
  multi_worker_mirrored, this worker's devices under parameter_server (each worker step
  updates the ps variables on its own), the strategy's devices otherwise."""
  if name in distribution_utils.CLUSTER_STRATEGIES:
    local = max(1, len(tf.config.list_physical_devices('GPU')))
    if name == 'multi_worker_mirrored':
      return local * distribution_utils.training_workers(cluster)
    return local
  return distribution_utils.num_replicas(strategy)


def _train_in_cluster(flags_obj, classifier, cluster, input_fn_train, input_fn_eval,
                      eval_steps, train_hooks, progress, steps_per_epoch, model_function,
                      params, shape):
  """One process of a cluster: tf.estimator.train_and_evaluate to the last step.

  ps tasks serve variables until stopped; an evaluator evaluates each new checkpoint. The chief
  then evaluates the final checkpoint in this process and writes metrics.json and the export,
  so a cluster's run directory looks like a local one's.
  """
  task_type, task_index = distribution_utils.task_of(cluster)
  max_steps = flags_obj.train_epochs * steps_per_epoch
  if flags_obj.max_train_steps:
    max_steps = min(max_steps, flags_obj.max_train_steps)
  model_dir = flags_obj.model_dir
  mark_failed = None
  if task_type == 'chief':
    mark_failed = lambda message: run_record.append_metrics(
        model_dir, {'event': 'failed', 'error': message})
  watchdog = distribution_utils.PeerWatchdog(
      distribution_utils.peers_to_reach(cluster), flags_obj.cluster_timeout_s,
      startup_only=distribution_utils.startup_peers(cluster), on_failure=mark_failed)
  watchdog.start()
  # Members that finish the last step leave; from then on this one needs no one.
  train_hooks = list(train_hooks) + [_StopAtStepHook(watchdog.stop, max_steps)]
  done = _checkpoint_step(model_dir) if task_type == 'chief' else 0
  if done:
    print('chief:0: resuming from the checkpoint at step %d' % done)
  train_spec = tf.estimator.TrainSpec(
      input_fn=lambda input_context=None: input_fn_train(None, input_context),
      max_steps=max_steps, hooks=train_hooks)
  eval_spec = tf.estimator.EvalSpec(input_fn=input_fn_eval, steps=eval_steps,
                                    start_delay_secs=0, throttle_secs=1)
  print('%s:%d: %s' % (task_type, task_index, {
      'ps': 'serving variables until stopped',
      'evaluator': 'evaluating each new checkpoint up to step %d' % max_steps,
  }.get(task_type, 'training to step %d (%s)' % (
      max_steps, '--max_train_steps' if max_steps == flags_obj.max_train_steps else
      '%d epochs of %d steps' % (flags_obj.train_epochs, steps_per_epoch)))))
  sys.stdout.flush()
  started = time.monotonic()
  try:
    tf.estimator.train_and_evaluate(classifier, train_spec, eval_spec)
  except KeyboardInterrupt:
    if task_type == 'chief':
      run_record.append_metrics(model_dir, {'event': 'interrupted'})
    raise
  finally:
    watchdog.stop()
  train_seconds = time.monotonic() - started
  if task_type != 'chief':
    print('%s:%d: done' % (task_type, task_index))
    return {}

  # The cluster's Estimator runs through the distribute coordinator; evaluating and exporting
  # the final checkpoint is local work, done by a plain Estimator over the same model_dir.
  local = _local_estimator(model_function, model_dir, params, flags_obj.seed)
  results = _evaluate(local, input_fn_eval, eval_steps)
  trained_steps = results['global_step'] - done
  batch_size = flags_obj.batch_size
  record = dict(results, epoch=flags_obj.train_epochs, seconds=train_seconds,
                train_loss_mean=progress.mean_loss, num_parameters=progress.num_parameters,
                epochs_trained=trained_steps / steps_per_epoch,
                examples_per_second=trained_steps * batch_size / train_seconds,
                workers=distribution_utils.training_workers(cluster))
  run_record.append_metrics(model_dir, record)
  print('Cluster trained to step %d: test accuracy %.4f, %.1f examples/s over %d worker(s)' % (
      results['global_step'], results['accuracy'], record['examples_per_second'],
      record['workers']))
  return _export_if_asked(local, flags_obj, shape, results)


class _StopAtStepHook(tf.compat.v1.train.SessionRunHook):
  """Calls stop() once training reaches last_step, or when it ends at all."""

  def __init__(self, stop, last_step):
    self._stop = stop
    self._last_step = last_step

  def begin(self):
    self._global_step = tf.compat.v1.train.get_global_step()

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self._global_step)

  def after_run(self, run_context, run_values):
    if run_values.results + 1 >= self._last_step:
      self._stop()

  def end(self, session):
    self._stop()


def _checkpoint_step(model_dir):
  path = tf.train.latest_checkpoint(model_dir)
  return int(tf.train.load_variable(path, 'global_step')) if path else 0


def _local_estimator(model_function, model_dir, params, seed):
  """An Estimator of this process alone, blind to TF_CONFIG."""
  tf_config = os.environ.pop('TF_CONFIG', None)
  try:
    return tf.estimator.Estimator(model_fn=model_function, model_dir=model_dir, params=params,
                                  config=tf.estimator.RunConfig(tf_random_seed=seed))
  finally:
    if tf_config is not None:
      os.environ['TF_CONFIG'] = tf_config


def _export_if_asked(classifier, flags_obj, shape, results):
  """Exports with --export_dir (if given) and adds 'export_path' to results, which it returns."""
  if flags_obj.export_dir:
    receiver_fn = lambda: export.estimator_receiver(
        shape, image_bytes_default=flags_obj.image_bytes_as_serving_input)
    results['export_path'] = export.export_estimator(
        classifier, flags_obj.export_dir, receiver_fn,
        {'compute_dtype': classifier.params['dtype']})
    print('Exported SavedModel to %s' % results['export_path'])
  return results


def _evaluate(classifier, input_fn_eval, steps):
  results = classifier.evaluate(input_fn=input_fn_eval, steps=steps)
  return {key: (value.item() if hasattr(value, 'item') else value)
          for key, value in results.items()}


################################################################################
# Flags
################################################################################


def define_resnet_flags(resnet_size_choices=None, flag_values=flags.FLAGS):
  """Shared flags plus the ResNet run loop's own.

  Args:
    resnet_size_choices: the sizes --resnet_size accepts (all of resnet_model.RESNET_SIZES
      by default).
    flag_values: where to define them (tests pass a fresh absl FlagValues).
  """
  flags_core.define_base_flags(flag_values)
  fv = {'flag_values': flag_values}
  choices = [str(size) for size in (resnet_size_choices or sorted(resnet_model.RESNET_SIZES))]
  flags.DEFINE_enum('resnet_size', '50', choices, 'The size of the ResNet model to use.', **fv)
  flags.DEFINE_enum('resnet_version', str(resnet_model.DEFAULT_VERSION), ['1', '2'],
                    'ResNet version: 1 (v1.5, stride on the 3x3 conv) or 2 (pre-activation).',
                    **fv)
  flags.DEFINE_enum('data_format', None, ['channels_first', 'channels_last'],
                    'Tensor layout; default channels_first with a GPU, channels_last on CPU.',
                    **fv)
  flags.DEFINE_enum('dtype', 'fp32', list(DTYPES),
                    'Compute precision; variables stay float32 (fp16 is for GPUs).', **fv)
  flags.DEFINE_integer('loss_scale', None,
                       'Loss scale for fp16 (default 128); 1 for fp32 and bf16.', **fv)
  flags.DEFINE_float('weight_decay', 1e-4, 'L2 weight decay (batch-norm variables excluded).',
                     **fv)
  flags.DEFINE_float('momentum', 0.9, 'Momentum of the SGD optimizer.', **fv)
  flags.DEFINE_float('base_learning_rate', 0.1,
                     'Learning rate for a batch of 256 (scaled linearly with --batch_size).',
                     **fv)
  flags.DEFINE_float('warmup_epochs', 0.0, 'Linear learning-rate warm-up, in epochs.', **fv)
  flags.DEFINE_float('label_smoothing', 0.0, 'Label smoothing of the cross-entropy (0..1).',
                     **fv)
  flags.DEFINE_boolean('fine_tune', False, 'Train only the final dense layer.', **fv)
  flags.DEFINE_string('pretrained_model_checkpoint_path', None,
                      'Warm-start every variable but the dense layer from this checkpoint.',
                      **fv)
  flags.DEFINE_boolean('eval_only', False, 'Only evaluate the latest checkpoint.', **fv)
  flags.DEFINE_boolean('image_bytes_as_serving_input', False,
                       'Export a model that takes encoded PNG/JPEG bytes instead of float '
                       'images.', **fv)
  flags.DEFINE_integer('datasets_num_private_threads', None,
                       'Private thread pool size for the tf.data pipeline.', **fv)
  flags.DEFINE_enum('tf_gpu_thread_mode', None, ['global', 'gpu_private', 'gpu_shared'],
                    'GPU kernel-launch thread mode (TF_GPU_THREAD_MODE).', **fv)
  flags.DEFINE_integer('per_gpu_thread_count', 0,
                       'Threads per GPU with --tf_gpu_thread_mode (0: 2).', **fv)
  flags.DEFINE_enum('distribution_strategy', 'off', list(distribution_utils.STRATEGIES),
                    'tf.distribute strategy. mirrored: one replica per device of --num_gpus '
                    '(per logical CPU device with --num_gpus=0), the global --batch_size split '
                    'evenly over them. multi_worker_mirrored: synchronous, one process per '
                    'worker, the global --batch_size split over the workers. parameter_server: '
                    'asynchronous, variables on the ps tasks, each worker step a --batch_size '
                    'batch. The last two need a cluster (TF_CONFIG or --worker_hosts).', **fv)
  flags.DEFINE_integer('num_gpus', 0, 'GPUs to use: -1 all, 0 none (CPU).', **fv)
  flags.DEFINE_list('worker_hosts', [],
                    'host:port of every training process; the first is the chief. Builds '
                    'TF_CONFIG (give one or the other).', **fv)
  flags.DEFINE_list('ps_hosts', [], 'host:port of each parameter server.', **fv)
  flags.DEFINE_enum('task_type', 'worker', list(distribution_utils.FLAG_TASK_TYPES),
                    'This process\'s role with --worker_hosts: worker (index 0 is the chief), '
                    'ps, or evaluator (evaluates each new checkpoint).', **fv)
  flags.DEFINE_integer('task_index', 0, 'This process\'s index among --task_type hosts.', **fv)
  flags.DEFINE_integer('save_checkpoints_secs', 600,
                       'Seconds between checkpoints during training (one is always written at '
                       'the end of each training cycle).', **fv)
  flags.DEFINE_integer('cluster_timeout_s', 120,
                       'A cluster member exits with an error when a member it needs has not '
                       'answered for this many seconds.', **fv)
  flags.register_validator('num_gpus', lambda v: v >= -1,
                           message='--num_gpus must be -1 (all), 0 or more', **fv)
  flags.register_validator('task_index', lambda v: v >= 0,
                           message='--task_index must be zero or more', **fv)
  flags.register_validator('save_checkpoints_secs', lambda v: v > 0,
                           message='--save_checkpoints_secs must be positive', **fv)
  flags.register_validator('cluster_timeout_s', lambda v: v > 0,
                           message='--cluster_timeout_s must be positive', **fv)
  flags.register_validator('loss_scale', lambda v: v is None or v > 0,
                           message='--loss_scale must be positive', **fv)
  flags.register_validator('weight_decay', lambda v: v >= 0,
                           message='--weight_decay must be zero or more', **fv)
  flags.register_validator('base_learning_rate', lambda v: v > 0,
                           message='--base_learning_rate must be positive', **fv)
  flags.register_validator('warmup_epochs', lambda v: v >= 0,
                           message='--warmup_epochs must be zero or more', **fv)
  flags.register_validator('label_smoothing', lambda v: 0 <= v < 1,
                           message='--label_smoothing must be in [0, 1)', **fv)
  flags.register_validator('datasets_num_private_threads', lambda v: v is None or v > 0,
                           message='--datasets_num_private_threads must be positive', **fv)
  flags.register_validator('per_gpu_thread_count', lambda v: v >= 0,
                           message='--per_gpu_thread_count must be zero or more', **fv)
