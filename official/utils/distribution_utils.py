"""tf.distribute strategies for the Estimator, and the cluster description they will run on.

--distribution_strategy picks one of STRATEGIES; --num_gpus says how many devices (-1: all
GPUs, 0: the CPU, or every logical CPU device when mirroring, as the tests set them up). A
cluster will come from the TF_CONFIG environment variable or from host flags; a malformed
TF_CONFIG fails at start, naming what is wrong.
"""

import json

import tensorflow as tf

# multi_worker_mirrored and parameter_server (clusters through train_and_evaluate) come next;
# parse_tf_config below already checks the TF_CONFIG they will read.
STRATEGIES = ('off', 'one_device', 'mirrored')


class DistributionError(ValueError):
  """A strategy or cluster setting that cannot work (the mains print it and exit 1)."""
TASK_TYPES = ('chief', 'worker', 'ps', 'evaluator')


def parse_tf_config(text):
  """Checks a TF_CONFIG string; returns it as a dict (empty for an empty string).

  Raises:
    DistributionError: naming the defect (bad JSON, no cluster, an unknown task type, an index out
      of range, a task whose type has no addresses).
  """
  if not text or not text.strip():
    return {}
  try:
    config = json.loads(text)
  except ValueError as e:
    raise DistributionError('TF_CONFIG is not valid JSON: %s' % e) from None
  if not isinstance(config, dict):
    raise DistributionError('TF_CONFIG must be a JSON object with "cluster" and "task"')
  cluster = config.get('cluster')
  if not isinstance(cluster, dict) or not cluster:
    raise DistributionError('TF_CONFIG has no "cluster" object of task type -> addresses')
  for task_type, addresses in cluster.items():
    if task_type not in TASK_TYPES:
      raise DistributionError('TF_CONFIG cluster has unknown task type %r; known: %s' % (
          task_type, ', '.join(TASK_TYPES)))
    if not isinstance(addresses, list) or not addresses or not all(
        isinstance(a, str) and ':' in a for a in addresses):
      raise DistributionError('TF_CONFIG cluster[%r] must be a non-empty list of "host:port" '
                       'strings; got %r' % (task_type, addresses))
  task = config.get('task')
  if not isinstance(task, dict):
    raise DistributionError('TF_CONFIG has no "task" object with "type" and "index"')
  task_type, index = task.get('type'), task.get('index', 0)
  if task_type not in TASK_TYPES:
    raise DistributionError('TF_CONFIG task type %r is unknown; known: %s' % (
        task_type, ', '.join(TASK_TYPES)))
  if task_type != 'evaluator':
    if task_type not in cluster:
      raise DistributionError('TF_CONFIG task type %r has no addresses in the cluster' %
                              task_type)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
      raise DistributionError('TF_CONFIG task index %r is out of range for %d %s task(s)' % (
          index, len(cluster[task_type]), task_type))
  return config


def tf_config_from_flags(worker_hosts, ps_hosts, task_type, task_index):
  """A TF_CONFIG dict from host lists: the first worker is the chief, as Estimators expect."""
  if not worker_hosts:
    return {}
  cluster = {'chief': [worker_hosts[0]]}
  if len(worker_hosts) > 1:
    cluster['worker'] = list(worker_hosts[1:])
  if ps_hosts:
    cluster['ps'] = list(ps_hosts)
  config = {'cluster': cluster, 'task': {'type': task_type, 'index': task_index}}
  return parse_tf_config(json.dumps(config))


def check_no_cluster(environ):
  """Fails fast on a TF_CONFIG: a bad one names its defect, and a good one says that training
  across processes is not supported yet (rather than failing later inside the Estimator)."""
  config = parse_tf_config(environ.get('TF_CONFIG', ''))
  if config:
    raise DistributionError('TF_CONFIG describes a cluster, and multi-process training is not '
                            'supported yet; unset TF_CONFIG to train in this process')


def num_replicas(strategy):
  return strategy.num_replicas_in_sync if strategy is not None else 1


def per_replica_batch_size(batch_size, replicas):
  """The batch each replica gets; the global batch must split evenly."""
  if batch_size % replicas:
    raise DistributionError('--batch_size=%d does not split evenly over %d replicas; use a '
                            'multiple of %d' % (batch_size, replicas, replicas))
  return batch_size // replicas


def _devices(num_gpus, allow_cpus):
  gpus = tf.config.list_logical_devices('GPU')
  if num_gpus == -1:
    num_gpus = len(gpus)
  if num_gpus > len(gpus):
    raise DistributionError('--num_gpus=%d but this machine has %d GPU(s)' % (num_gpus, len(gpus)))
  if num_gpus:
    return ['/gpu:%d' % i for i in range(num_gpus)]
  cpus = tf.config.list_logical_devices('CPU')
  return [d.name for d in cpus] if allow_cpus else ['/cpu:0']


def get_distribution_strategy(name, num_gpus=0):
  """The tf.distribute strategy for --distribution_strategy (None for 'off')."""
  if name not in STRATEGIES:
    raise DistributionError('unknown --distribution_strategy %r; choose one of %s' % (
        name, ', '.join(STRATEGIES)))
  if name == 'off':
    return None
  if name == 'one_device':
    return tf.distribute.OneDeviceStrategy(_devices(min(num_gpus, 1), False)[0])
  devices = _devices(num_gpus, True)
  cross_device_ops = None
  if not any('GPU' in d.upper() for d in devices):
    # NCCL needs GPUs; on CPU devices the gradients are summed on one device.
    cross_device_ops = tf.distribute.ReductionToOneDevice()
  return tf.compat.v1.distribute.MirroredStrategy(devices=devices,
                                                  cross_device_ops=cross_device_ops)
