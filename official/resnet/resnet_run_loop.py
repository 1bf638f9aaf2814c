"""The Estimator run loop for ResNets: model_fn, and local train/evaluate cycles.

In the spirit of the TensorFlow Model Garden's legacy `official/resnet/resnet_run_loop.py`,
written for `tf.compat.v1` + `tf.estimator` on TensorFlow 2.15, without `tf.contrib`, and without
its known defects: synthetic labels cover every class, thread settings are computed instead of
written back into parsed flags, a rerun resumes to the target epoch count instead of training it
again, and the batch-norm variables are left out of weight decay by name.

Around it: the learning-rate schedules (official/utils/learning_rate.py), batch-norm statistics
(official/utils/batch_norm_statistics.py), the run lifecycle (official/utils/lifecycle.py), the
cluster path (official/utils/cluster_training.py), the export (official/utils/export.py) and
the flags (official/resnet/resnet_flags.py). Nothing here reads flags: the entry point passes
values.
"""

import dataclasses
import math
import sys
import time

import tensorflow as tf

from official.utils import batch_norm_statistics
from official.utils import cluster_training
from official.utils import export
from official.utils import lifecycle
from official.utils import precision
from official.utils import session_config
from official.utils.logs import hooks_helper
from official.utils.logs import run_record

KEEP_CHECKPOINTS = 5


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


# What the loop trains on: fn(is_training, batch_size, num_epochs, dtype, seed,
# datasets_num_private_threads) -> Dataset, the image shape [h, w, c] and the training examples
# per epoch.
# test_set: None, or fn() -> (float images [N, h, w, c] in [0, 1], int labels [N]), which the
# export measures its accuracy on in each precision (export.export_model).
Data = dataclasses.make_dataclass('Data', ['input_fn', 'image_shape', 'num_train',
                                           ('test_set', object, None)])


################################################################################
# model_fn
################################################################################


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
      'model': callable(dtype, batch_norm_decay=<the run's>) -> a model configured for the
        dataset (resnet_model.Model, googlenet_model.GoogLeNet), which
        official/utils/batch_norm_statistics.py builds with decay 0;
      'num_classes', 'weight_decay', 'momentum', 'learning_rate_fn' (fn(global_step));
      'dtype' (what the layers compute in: 'fp32', 'fp16', 'bf16'), 'loss_scale' (None: the
      dtype's default); 'fine_tune' (train only the dense layer), 'label_smoothing';
      'aux_loss_weight' (optional: what each auxiliary head's cross-entropy weighs in the
      loss, for models returning (logits, end_points));
      'loss_filter_fn' (optional; default excludes batch-norm variables).

  Returns:
    tf.estimator.EstimatorSpec for the mode.
  """
  if isinstance(features, dict):  # a serving receiver wraps a lone tensor as {'feature': t}
    features = features['feature']
  predictions, logits, aux_logits = _predictions(features, mode, params)
  if mode == tf.estimator.ModeKeys.PREDICT:
    return tf.estimator.EstimatorSpec(
        mode=mode, predictions=predictions,
        export_outputs={'predict': tf.estimator.export.PredictOutput(predictions)})
  labels = tf.cast(labels, tf.int32)
  cross_entropy, loss = _loss(logits, labels, params, aux_logits)
  metrics = _metrics(logits, labels, predictions, cross_entropy, params['num_classes'])
  if mode == tf.estimator.ModeKeys.EVAL:
    return tf.estimator.EstimatorSpec(mode=mode, predictions=predictions, loss=loss,
                                      eval_metric_ops=metrics)
  return tf.estimator.EstimatorSpec(mode=mode, predictions=predictions, loss=loss,
                                    train_op=_train_op(loss, params),
                                    eval_metric_ops=metrics)


def _predictions(features, mode, params):
  """The model in params['dtype'], its float32 logits, classes and probabilities, and the
  float32 logits of its auxiliary heads (a model that returns (logits, end_points), as
  GoogLeNet does, names them 'AuxLogits_*' in training)."""
  dtype = precision.tf_dtype(params['dtype'])
  model = params['model'](dtype)
  tf.compat.v1.summary.image('images', tf.cast(features, tf.float32), max_outputs=4)
  outputs = model(tf.cast(features, dtype), mode == tf.estimator.ModeKeys.TRAIN)
  logits, end_points = outputs if isinstance(outputs, tuple) else (outputs, {})
  aux_logits = [tf.cast(end_points[name], tf.float32) for name in sorted(end_points)
                if name.startswith('AuxLogits')]
  logits = tf.cast(logits, tf.float32)  # softmax and loss in float32
  return {'classes': tf.argmax(logits, axis=1),
          'probabilities': tf.nn.softmax(logits, name='softmax_tensor')}, logits, aux_logits


def _cross_entropy(logits, labels, params):
  if params.get('label_smoothing'):
    one_hot = tf.one_hot(labels, params['num_classes'])
    return tf.compat.v1.losses.softmax_cross_entropy(
        one_hot, logits, label_smoothing=params['label_smoothing'])
  return tf.compat.v1.losses.sparse_softmax_cross_entropy(labels=labels, logits=logits)


def _loss(logits, labels, params, aux_logits=()):
  """(cross-entropy, cross-entropy + params['aux_loss_weight'] x each auxiliary head's
  cross-entropy + weight decay over the variables loss_filter_fn keeps)."""
  cross_entropy = tf.identity(_cross_entropy(logits, labels, params), name='cross_entropy')
  tf.compat.v1.summary.scalar('cross_entropy', cross_entropy)
  loss = cross_entropy
  if aux_logits and params.get('aux_loss_weight'):
    aux_loss = tf.identity(params['aux_loss_weight'] * tf.add_n(
        [_cross_entropy(aux, labels, params) for aux in aux_logits]), name='aux_loss')
    tf.compat.v1.summary.scalar('aux_loss', aux_loss)
    loss += aux_loss
  loss_filter_fn = params.get('loss_filter_fn') or default_loss_filter_fn
  decayed = [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in tf.compat.v1.trainable_variables()
             if loss_filter_fn(v.name)]
  l2_loss = tf.identity(params['weight_decay'] * tf.add_n(decayed), name='l2_loss')
  tf.compat.v1.summary.scalar('l2_loss', l2_loss)
  return cross_entropy, loss + l2_loss


def _metrics(logits, labels, predictions, cross_entropy, num_classes):
  """Evaluation metrics, and the named train_accuracy tensor the logging hook reads."""
  accuracy = tf.compat.v1.metrics.accuracy(labels, predictions['classes'])
  accuracy_top_5 = tf.compat.v1.metrics.mean(
      tf.nn.in_top_k(predictions=logits, targets=labels, k=min(5, num_classes)))
  train_accuracy = tf.identity(
      tf.reduce_mean(tf.cast(tf.equal(tf.cast(predictions['classes'], tf.int32), labels),
                             tf.float32)), name='train_accuracy')
  tf.compat.v1.summary.scalar('train_accuracy', train_accuracy)
  # The EstimatorSpec's loss includes weight decay; report the data term on its own too.
  return {'accuracy': accuracy, 'accuracy_top_5': accuracy_top_5,
          'cross_entropy': tf.compat.v1.metrics.mean(cross_entropy)}


def _train_op(loss, params):
  """Momentum SGD on the (loss-scaled) loss, after the batch-norm updates."""
  global_step = tf.compat.v1.train.get_or_create_global_step()
  learning_rate = tf.identity(params['learning_rate_fn'](global_step), name='learning_rate')
  tf.compat.v1.summary.scalar('learning_rate', learning_rate)
  optimizer = tf.compat.v1.train.MomentumOptimizer(learning_rate=learning_rate,
                                                   momentum=params['momentum'])
  variables = tf.compat.v1.trainable_variables()
  if params.get('fine_tune'):
    variables = [v for v in variables if 'dense' in v.name]
  loss_scale = params.get('loss_scale') or precision.default_loss_scale(params['dtype'])
  # Scaling the loss keeps small float16 gradients from flushing to zero; unscale after.
  grads_and_vars = optimizer.compute_gradients(loss * loss_scale, var_list=variables)
  if loss_scale != 1:
    grads_and_vars = [(g / loss_scale, v) for g, v in grads_and_vars if g is not None]
  update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
  with tf.control_dependencies(update_ops):
    return optimizer.apply_gradients(grads_and_vars, global_step=global_step)


################################################################################
# The run: one process's train/evaluate cycles, or its part of a cluster
################################################################################


def run_estimator(settings, estimator_settings, cluster_settings, model_fn, params, data,
                  facts):
  """Trains and evaluates in cycles (or as a cluster member), stops early, and exports.

  Args:
    settings: lifecycle.RunSettings.
    estimator_settings: EstimatorSettings.
    cluster_settings: cluster_training.ClusterSettings.
    model_fn: the Estimator model_fn (resnet_model_fn, or a wrapper).
    params: the model_fn params, complete (see resnet_model_fn); params['onednn_bf16'] turns on
      the CPU bfloat16 rewrite (official/utils/precision.py).
    data: Data.
    facts: what flags.json records beside the flags (model, dataset, dtype_used...).

  Returns:
    dict of the last evaluation's results (accuracy, accuracy_top_5, loss, global_step), plus
    'export_path' when exported; {} for cluster members other than the chief.
  """
  # Settled before anything in model_dir is touched: a refusal must not cost a checkpoint.
  placement = cluster_training.resolve(cluster_settings, settings.batch_size,
                                       settings.stop_threshold, estimator_settings.eval_only)
  if cluster_training.is_chief(placement.cluster):
    lifecycle.start(settings, KEEP_CHECKPOINTS, dict(
        facts, replicas=placement.replicas, cluster=placement.cluster.get('cluster')))
  if placement.cluster:
    cluster_training.join(placement.cluster)
  threads = session_config.gpu_thread_settings(
      settings.inter_op_parallelism_threads, estimator_settings.datasets_num_private_threads,
      estimator_settings.tf_gpu_thread_mode, estimator_settings.per_gpu_thread_count)
  classifier = _make_estimator(settings, estimator_settings, model_fn, params, placement,
                               threads['inter_op_parallelism_threads'],
                               cluster_settings.cluster_timeout_s)
  loop = _Loop(settings, classifier, data, model_fn, params, placement,
               threads['datasets_num_private_threads'], estimator_settings.batch_norm_batches)
  if placement.cluster:
    results = loop.train_in_cluster(model_fn, cluster_settings.cluster_timeout_s)
    if not results:
      return results
  else:
    results = loop.train_locally(estimator_settings.eval_only)
  return lifecycle.export_if_asked(settings, lambda export_dir: export_resnet(
      export_dir, model_fn, params, data.image_shape, tf.train.latest_checkpoint(
          settings.model_dir), facts['dtype_used'],
      estimator_settings.image_bytes_as_serving_input, data.test_set), results)


def _make_estimator(settings, estimator_settings, model_fn, params, placement, inter_op,
                    session_timeout_s):
  config = session_config.make(inter_op, settings.intra_op_parallelism_threads,
                               onednn_bf16=params.get('onednn_bf16', False),
                               allow_soft_placement=True)
  run_config = tf.estimator.RunConfig(
      train_distribute=placement.strategy,
      eval_distribute=None if placement.cluster else placement.strategy,
      model_dir=settings.model_dir, tf_random_seed=settings.seed, session_config=config,
      save_checkpoints_secs=estimator_settings.save_checkpoints_secs,
      keep_checkpoint_max=KEEP_CHECKPOINTS, log_step_count_steps=1000,
      session_creation_timeout_secs=session_timeout_s)
  warm_start = None
  if estimator_settings.pretrained_model_checkpoint_path:
    # Everything but the final dense layer, whose class count may differ.
    warm_start = tf.estimator.WarmStartSettings(
        estimator_settings.pretrained_model_checkpoint_path, vars_to_warm_start='^(?!.*dense)')
  return tf.estimator.Estimator(model_fn=model_fn, model_dir=settings.model_dir,
                                config=run_config, params=params, warm_start_from=warm_start)


class _Loop(object):
  """The input functions, hooks and step counts one run's training shares."""

  def __init__(self, settings, classifier, data, model_fn, params, placement, private_threads,
               batch_norm_batches=0):
    self.settings = settings
    self.classifier = classifier
    self.model_fn = model_fn
    self.params = params
    self.batch_norm_batches = batch_norm_batches
    self.placement = placement
    self.steps_per_epoch = math.ceil(data.num_train / settings.batch_size)
    self._data = data
    self._private_threads = private_threads
    self.progress = hooks_helper.ProgressHook(settings.batch_size, self.steps_per_epoch)
    self.hooks = hooks_helper.get_train_hooks(settings.hooks, settings.model_dir,
                                              settings.batch_size) + [self.progress]

  def train_input_fn(self, num_epochs, input_context=None):
    # Under a strategy each replica's input_fn call yields that replica's share of the batch;
    # each worker of a cluster shuffles with its own seed, so they do not train in lockstep.
    pipeline = input_context.input_pipeline_id if input_context else 0
    return self._data.input_fn(
        is_training=True, batch_size=self.placement.replica_batch_size, num_epochs=num_epochs,
        dtype=precision.tf_dtype(self.params['dtype']), seed=self.settings.seed + pipeline,
        datasets_num_private_threads=self._private_threads)

  def eval_input_fn(self):
    return self._data.input_fn(is_training=False, batch_size=self.placement.replica_batch_size,
                               num_epochs=1, dtype=precision.tf_dtype(self.params['dtype']))

  def evaluate(self, classifier=None):
    results = (classifier or self.classifier).evaluate(input_fn=self.eval_input_fn)
    return {key: (value.item() if hasattr(value, 'item') else value)
            for key, value in results.items()}

  def max_steps(self, epochs):
    steps = epochs * self.steps_per_epoch
    return min(steps, self.settings.max_train_steps or steps)

  def train_locally(self, eval_only):
    """Train/evaluate cycles of --epochs_between_evals to --train_epochs, one metrics.json
    record each, until a stop condition; returns the last evaluation."""
    settings = self.settings
    cycle_ends = list(range(settings.epochs_between_evals, settings.train_epochs,
                            settings.epochs_between_evals)) + [settings.train_epochs]
    results, previous_end = {}, 0
    for cycle_end in ([] if eval_only else cycle_ends):
      results = self._cycle(previous_end, cycle_end)
      previous_end = cycle_end
      if lifecycle.should_stop(settings, results):
        break
    if not results:
      results = self.evaluate()
      run_record.append_metrics(settings.model_dir,
                                                 dict(results, event='eval_only'))
      print('Test accuracy %.4f' % results['accuracy'])
    return results

  def _cycle(self, previous_end, cycle_end):
    """Trains epochs previous_end+1..cycle_end (what a resumed run still lacks of them),
    evaluates, and records; returns the evaluation."""
    settings, classifier = self.settings, self.classifier
    max_steps = self.max_steps(cycle_end)
    done = cluster_training.checkpoint_step(settings.model_dir)
    train_seconds, trained_steps = 0.0, 0
    if done < max_steps:
      started = time.monotonic()
      print('Training epochs %d-%d of %d (steps %d to %d)' % (
          previous_end + 1, cycle_end, settings.train_epochs, done, max_steps))
      with lifecycle.StopOnInterrupt() as stop:
        classifier.train(input_fn=lambda: self.train_input_fn(cycle_end - previous_end),
                         hooks=self.hooks + [lifecycle.StopHook(stop)], max_steps=max_steps)
      train_seconds = time.monotonic() - started
      trained_steps = classifier.get_variable_value('global_step') - done
      if stop.requested:
        lifecycle.interrupted(settings.model_dir, done + trained_steps)
      if trained_steps and self.batch_norm_batches:
        self.recompute_statistics()
    results = self.evaluate()
    run_record.append_metrics(settings.model_dir, lifecycle.epoch_record(
        cycle_end, results['global_step'], train_seconds, trained_steps * settings.batch_size,
        self.progress.mean_loss if trained_steps else None, self.progress.num_parameters,
        evaluation=results, epochs_trained=trained_steps / self.steps_per_epoch))
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
    epochs = 1 + math.ceil(  # enough batches on tiny data too
        self.batch_norm_batches * self.placement.replica_batch_size / self._data.num_train)
    count = batch_norm_statistics.recompute(
        self.model_fn, self.params, lambda: self.train_input_fn(epochs),
        tf.train.latest_checkpoint(self.settings.model_dir), self.batch_norm_batches,
        config=self.classifier.config.session_config)
    if count:
      print('Batch-norm statistics of %d layers recomputed over %d training batches (%.1f s)' %
            (count // 2, self.batch_norm_batches, time.monotonic() - started))

  def train_in_cluster(self, model_fn, timeout_s):
    """This process's part of a cluster run; the chief then recomputes the batch-norm
    statistics of the final checkpoint, evaluates and records it, so a cluster's run directory
    looks like a local one's. (The evaluator task evaluates checkpoints as they come, with the
    moving averages.)"""
    settings = self.settings
    max_steps = self.max_steps(settings.train_epochs)
    goal = ('--max_train_steps' if max_steps == settings.max_train_steps else
            '%d epochs of %d steps' % (settings.train_epochs, self.steps_per_epoch))
    task_type, train_seconds, resumed = cluster_training.train_in_cluster(
        self.classifier, self.placement.cluster, timeout_s, max_steps,
        lambda input_context=None: self.train_input_fn(None, input_context),
        self.eval_input_fn, self.hooks, goal)
    if task_type != 'chief':
      return {}
    if self.batch_norm_batches and train_seconds:
      self.recompute_statistics()
    results = self.evaluate(cluster_training.local_estimator(
        model_fn, settings.model_dir, self.params, settings.seed))
    record = cluster_training.chief_record(
        results, train_seconds, resumed, self.steps_per_epoch, settings.batch_size,
        settings.train_epochs, self.progress, self.placement.cluster)
    run_record.append_metrics(settings.model_dir, record)
    print('Cluster trained to step %d: test accuracy %.4f, %.1f examples/s over %d worker(s)' %
          (results['global_step'], results['accuracy'], record['examples_per_second'],
           record['workers']))
    return results


def export_resnet(export_dir, model_fn, params, image_shape, checkpoint_path, training_dtype,
                  image_bytes_default=False, test_set=None):
  """Exports the checkpoint through export.export_model: model_fn's PREDICT graph, computing
  in params['dtype'] (float32 when bf16 came from the CPU rewrite, which exports leave out;
  training_dtype records it)."""
  def build_outputs(images):
    spec = model_fn(images, None, tf.estimator.ModeKeys.PREDICT, params)
    return spec.predictions
  return export.export_model(export_dir, list(image_shape), build_outputs, checkpoint_path,
                             params['dtype'], training_dtype,
                             image_bytes_default=image_bytes_default, test_set=test_set)
