"""An Estimator run as one member of a cluster: strategy and replicas, the checks made before
model_dir is touched, and tf.estimator.train_and_evaluate to the last step.

The cluster itself (TF_CONFIG or --worker_hosts, roles, the peer watchdog) is
official/utils/distribution_utils.py; the local train/evaluate cycles are the run loop's.
"""

import dataclasses
import json
import os
import sys
import time

import tensorflow as tf

from official.utils import distribution_utils
from official.utils import lifecycle
from official.utils.logs import run_record


@dataclasses.dataclass(frozen=True)
class ClusterSettings(object):
  """The distribution flags (official/resnet/resnet_flags.py), as values."""
  distribution_strategy: str
  num_gpus: int
  worker_hosts: tuple
  ps_hosts: tuple
  task_type: str
  task_index: int
  cluster_timeout_s: int


# What resolve() settles: this process's cluster (distribution_utils.Cluster), the strategy,
# the replicas one step's --batch_size is split over, and each one's share of it.
Placement = dataclasses.make_dataclass(
    'Placement', ['cluster', 'strategy', 'replicas', 'replica_batch_size'])


def cluster_of(settings, environ=None):
  """The Cluster this process belongs to (not distributed when none), from TF_CONFIG or the
  host flags: the run's one parse of either."""
  return distribution_utils.describe_cluster(
      os.environ if environ is None else environ, settings.worker_hosts, settings.ps_hosts,
      settings.task_type, settings.task_index)


def resolve(cluster, settings, batch_size, stop_threshold=None, eval_only=False):
  """Settles the strategy and replicas for cluster, refusing bad combinations with one line.

  Raises:
    DistributionError: the cluster, strategy or flags do not fit together.
  """
  distribution_utils.check_strategy_for_cluster(settings.distribution_strategy, cluster.config)
  if cluster.distributed:
    for name, value in (('stop_threshold', stop_threshold), ('eval_only', eval_only)):
      if value:
        raise distribution_utils.DistributionError(
            '--%s needs evaluations between training cycles, which a cluster does not run '
            '(the chief evaluates once at the end; add an evaluator task to follow accuracy)' %
            name)
  strategy = distribution_utils.get_distribution_strategy(settings.distribution_strategy,
                                                          settings.num_gpus)
  replicas = _replicas(settings.distribution_strategy, strategy, cluster)
  return Placement(cluster, strategy, replicas,
                   distribution_utils.per_replica_batch_size(batch_size, replicas))


def _replicas(name, strategy, cluster):
  """Replicas that share one step's --batch_size: every device of every worker under
  multi_worker_mirrored, this worker's devices under parameter_server (each worker step
  updates the ps variables on its own), the strategy's devices otherwise."""
  if name in distribution_utils.CLUSTER_STRATEGIES:
    local = max(1, len(tf.config.list_physical_devices('GPU')))
    if name == 'multi_worker_mirrored':
      return local * cluster.training_workers
    return local
  return distribution_utils.num_replicas(strategy)


def join(cluster):
  """Puts the cluster in TF_CONFIG, where train_and_evaluate reads it, and says so."""
  os.environ['TF_CONFIG'] = json.dumps(cluster.config)
  print('Cluster member %s:%d of %s' % (cluster.task_type, cluster.task_index,
                                        json.dumps(cluster.config['cluster'])))
  sys.stdout.flush()


def train_in_cluster(classifier, cluster, timeout_s, max_steps, train_input_fn, eval_input_fn,
                     train_hooks, goal):
  """One process of a cluster: tf.estimator.train_and_evaluate to max_steps, or for the
  evaluator task evaluate_checkpoints.

  ps tasks serve variables until stopped; an evaluator evaluates each new checkpoint; workers
  train. A member that cannot reach one it needs exits 1 after timeout_s (PeerWatchdog).

  Returns:
    (task type, training seconds, the step the chief resumed from).
  """
  task_type, task_index = cluster.task_type, cluster.task_index
  model_dir = classifier.model_dir
  mark_failed = None
  if task_type == 'chief':
    mark_failed = lambda message: run_record.append_metrics(
        model_dir, {'event': 'failed', 'error': message})
  watchdog = distribution_utils.PeerWatchdog(cluster.peers, timeout_s,
                                             startup_only=cluster.startup_peers,
                                             on_failure=mark_failed)
  watchdog.start()
  # Members that finish the last step leave; from then on this one needs no one.
  stop_hook = StopAtStepHook(watchdog.stop, max_steps)
  train_hooks = list(train_hooks) + [stop_hook]
  done = checkpoint_step(model_dir) if task_type == 'chief' else 0
  if done:
    print('chief:0: resuming from the checkpoint at step %d' % done)
  train_spec = tf.estimator.TrainSpec(input_fn=train_input_fn, max_steps=max_steps,
                                      hooks=train_hooks)
  eval_spec = tf.estimator.EvalSpec(input_fn=eval_input_fn, steps=None, start_delay_secs=0,
                                    throttle_secs=1)
  print('%s:%d: %s' % (task_type, task_index, {
      'ps': 'serving variables until stopped',
      'evaluator': 'evaluating each new checkpoint up to step %d' % max_steps,
  }.get(task_type, 'training to step %d (%s)' % (max_steps, goal))))
  sys.stdout.flush()
  started = time.monotonic()
  try:
    if task_type == 'evaluator':
      evaluate_checkpoints(classifier, eval_input_fn, max_steps)
    else:
      tf.estimator.train_and_evaluate(classifier, train_spec, eval_spec)
  finally:
    watchdog.stop()
  if task_type != 'chief':
    # Its own count: step lines come every 100 of them, so a worker that joins late may log none.
    print('%s:%d: done after %d steps of its own' % (task_type, task_index, stop_hook.steps_run))
  return task_type, time.monotonic() - started, done


def evaluate_checkpoints(classifier, eval_input_fn, max_steps, poll_s=1.0):
  """The evaluator task: evaluates each new checkpoint in model_dir (into model_dir/eval) until
  one reaches max_steps.

  A checkpoint that the chief's rotation (keep_checkpoint_max) deletes while its evaluation is
  starting is skipped for the next one. TensorFlow's own evaluator exits on it ("not a valid
  checkpoint"), which a clean-clone CI run hit with a checkpoint every second.
  """
  for path in tf.compat.v1.train.checkpoints_iterator(classifier.model_dir,
                                                      min_interval_secs=poll_s):
    try:
      results = classifier.evaluate(eval_input_fn, checkpoint_path=path)
    except (ValueError, tf.errors.NotFoundError):
      if os.path.exists(path + '.index'):
        raise  # the checkpoint is there: the error is real
      print('evaluator: %s was rotated away before it could be read; waiting for the next' %
            os.path.basename(path))
      continue
    if results['global_step'] >= max_steps:
      return


def chief_record(results, train_seconds, resumed_step, steps_per_epoch, batch_size, epochs,
                 progress, cluster):
  """The chief's one metrics.json record of a cluster run, in the lifecycle's schema."""
  trained_steps = results['global_step'] - resumed_step
  return lifecycle.epoch_record(
      epochs, results['global_step'], train_seconds, trained_steps * batch_size,
      progress.mean_loss, progress.num_parameters, evaluation=results,
      epochs_trained=trained_steps / steps_per_epoch if steps_per_epoch else None,
      workers=cluster.training_workers)


class StopAtStepHook(tf.compat.v1.train.SessionRunHook):
  """Calls stop() once training reaches last_step, or when it ends at all; counts the steps
  this process ran (steps_run)."""

  def __init__(self, stop, last_step):
    self._stop = stop
    self._last_step = last_step
    self.steps_run = 0

  def begin(self):
    self._global_step = tf.compat.v1.train.get_global_step()

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self._global_step)

  def after_run(self, run_context, run_values):
    self.steps_run += 1
    if run_values.results + 1 >= self._last_step:
      self._stop()

  def end(self, session):
    self._stop()


def checkpoint_step(model_dir):
  """The global step of model_dir's latest checkpoint (0 without one)."""
  path = tf.train.latest_checkpoint(model_dir)
  return int(tf.train.load_variable(path, 'global_step')) if path else 0


def local_estimator(model_fn, model_dir, params, seed):
  """An Estimator of this process alone, blind to TF_CONFIG: the chief evaluates and exports
  the final checkpoint with it, since the cluster's Estimator runs through the distribute
  coordinator."""
  tf_config = os.environ.pop('TF_CONFIG', None)
  try:
    return tf.estimator.Estimator(model_fn=model_fn, model_dir=model_dir, params=params,
                                  config=tf.estimator.RunConfig(tf_random_seed=seed))
  finally:
    if tf_config is not None:
      os.environ['TF_CONFIG'] = tf_config
