"""tf.distribute strategies for the Estimator, and the cluster description they run on.

--distribution_strategy picks one of STRATEGIES; --num_gpus says how many devices (-1: all
GPUs, 0: the CPU, or every logical CPU device when mirroring, as the tests set them up). The
cluster strategies need a cluster, from the TF_CONFIG environment variable or from the host
flags (--worker_hosts, --ps_hosts, --task_type, --task_index); a malformed one fails at start,
naming what is wrong, and a member that cannot reach the others fails after a bounded wait,
naming the address (PeerWatchdog).

A process's cluster is parsed once, into a frozen `Cluster` (describe_cluster), which everything
after reads instead of the TF_CONFIG text.
"""

import dataclasses
import json
import os
import socket
import sys
import threading
import time

import tensorflow as tf

LOCAL_STRATEGIES = ('off', 'one_device', 'mirrored')
# Between-graph strategies: one process per task, run through tf.estimator.train_and_evaluate.
CLUSTER_STRATEGIES = ('multi_worker_mirrored', 'parameter_server')
STRATEGIES = LOCAL_STRATEGIES + CLUSTER_STRATEGIES
# What --task_type accepts: 'worker' index 0 is the chief (a TF_CONFIG may say 'chief' itself).
FLAG_TASK_TYPES = ('worker', 'ps', 'evaluator')


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
  """A TF_CONFIG dict from host lists, as TF1 scripts took them: worker_hosts[0] is the chief,
  so --task_type=worker --task_index=0 is the chief and index i > 0 is TF_CONFIG's worker i-1.
  """
  if not worker_hosts:
    if ps_hosts:
      raise DistributionError('--ps_hosts needs --worker_hosts (the first worker is the chief)')
    return {}
  if task_type not in FLAG_TASK_TYPES:
    raise DistributionError('--task_type=%s is unknown; choose one of %s' % (
        task_type, ', '.join(FLAG_TASK_TYPES)))
  hosts = {'worker': worker_hosts, 'ps': ps_hosts or [], 'evaluator': [None]}[task_type]
  if not 0 <= task_index < len(hosts):
    raise DistributionError('--task_index=%d is out of range for %d %s host(s)' % (
        task_index, len(hosts), task_type))
  cluster = {'chief': [worker_hosts[0]]}
  if len(worker_hosts) > 1:
    cluster['worker'] = list(worker_hosts[1:])
  if ps_hosts:
    cluster['ps'] = list(ps_hosts)
  task = {'type': task_type, 'index': task_index}
  if task_type == 'worker':
    task = {'type': 'chief', 'index': 0} if task_index == 0 else {'type': 'worker',
                                                                   'index': task_index - 1}
  return parse_tf_config(json.dumps({'cluster': cluster, 'task': task}))


def cluster_config(environ, worker_hosts=None, ps_hosts=None, task_type='worker', task_index=0):
  """The cluster this process belongs to, as a TF_CONFIG dict ({} for none).

  From the host flags or from TF_CONFIG, not both (which would win is a guess).
  """
  from_flags = tf_config_from_flags(worker_hosts, ps_hosts, task_type, task_index)
  from_environ = parse_tf_config(environ.get('TF_CONFIG', ''))
  if from_flags and from_environ:
    raise DistributionError('both TF_CONFIG and --worker_hosts describe a cluster; give one')
  return from_flags or from_environ


@dataclasses.dataclass(frozen=True)
class Cluster(object):
  """This process's cluster, parsed once: the TF_CONFIG dict (config; {} when the run is
  local) and what the run loop needs of it."""
  config: dict
  task_type: str
  task_index: int
  training_workers: int
  peers: dict  # peers_to_reach
  startup_peers: frozenset

  @property
  def is_chief(self):
    """Whether this process records the run in model_dir: a local run, or a cluster's chief."""
    return self.task_type == 'chief'

  @property
  def distributed(self):
    return bool(self.config)


def describe_cluster(environ, worker_hosts=None, ps_hosts=None, task_type='worker',
                     task_index=0):
  """The Cluster of this process, from TF_CONFIG in environ or the host flags (the one place
  either is parsed).

  Raises:
    DistributionError: see parse_tf_config, tf_config_from_flags and cluster_config.
  """
  config = cluster_config(environ, worker_hosts, ps_hosts, task_type, task_index)
  return Cluster(config, *task_of(config), training_workers(config), peers_to_reach(config),
                 frozenset(startup_peers(config)))


def _check_known_strategy(name):
  if name not in STRATEGIES:
    raise DistributionError('unknown --distribution_strategy %r; choose one of %s' % (
        name, ', '.join(STRATEGIES)))


def check_strategy_for_cluster(name, config):
  """The strategy and the cluster must fit: cluster strategies need one and local ones refuse
  one (rather than failing later inside the Estimator)."""
  _check_known_strategy(name)
  cluster = config.get('cluster', {})
  if name in CLUSTER_STRATEGIES and not config:
    raise DistributionError('--distribution_strategy=%s needs a cluster: set TF_CONFIG or '
                            '--worker_hosts (and --ps_hosts, --task_type, --task_index)' % name)
  if config and name not in CLUSTER_STRATEGIES:
    raise DistributionError('a cluster is given (TF_CONFIG or --worker_hosts) but '
                            '--distribution_strategy=%s trains in one process; use one of %s, '
                            'or unset TF_CONFIG' % (name, ', '.join(CLUSTER_STRATEGIES)))
  if name == 'parameter_server' and 'ps' not in cluster:
    raise DistributionError('--distribution_strategy=parameter_server needs ps tasks '
                            '(--ps_hosts or "ps" in TF_CONFIG)')
  if name == 'multi_worker_mirrored' and 'ps' in cluster:
    raise DistributionError('--distribution_strategy=multi_worker_mirrored has no use for ps '
                            'tasks; drop them or use parameter_server')
  if config and 'chief' not in cluster:
    raise DistributionError('the cluster has no chief; the chief writes checkpoints and '
                            'exports (TF_CONFIG "chief", or the first of --worker_hosts)')


def task_of(config):
  """(type, index) of this process in config; ('chief', 0) without a cluster."""
  if not config:
    return 'chief', 0
  return config['task']['type'], config['task'].get('index', 0)


def training_workers(config):
  """How many processes train (chief and workers), 1 without a cluster."""
  cluster = config.get('cluster', {})
  return len(cluster.get('chief', [])) + len(cluster.get('worker', [])) if config else 1


def peers_to_reach(config):
  """{'type:index': address} of the members this process cannot train without.

  ps tasks only serve variables and evaluators only read checkpoints, so they wait for no one;
  under parameter_server a worker needs the ps tasks and the chief (which initialises the
  variables), and the chief needs the ps tasks; under multi_worker_mirrored every training
  process needs every other one (each step is a collective).
  """
  task_type, index = task_of(config)
  if not config or task_type in ('ps', 'evaluator'):
    return {}
  cluster = config['cluster']
  wanted = ['ps', 'chief'] if 'ps' in cluster else ['chief', 'worker']
  return {'%s:%d' % (job, i): address
          for job in wanted for i, address in enumerate(cluster.get(job, []))
          if (job, i) != (task_type, index)}


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
  """The tf.distribute strategy for --distribution_strategy (None for 'off').

  The cluster strategies are the TF1 (between-graph) classes the Estimator drives through its
  distribute coordinator; they read the cluster from TF_CONFIG when training starts.
  """
  _check_known_strategy(name)
  if name == 'off':
    return None
  if name == 'parameter_server':
    return tf.compat.v1.distribute.experimental.ParameterServerStrategy()
  if name == 'multi_worker_mirrored':
    # The TF1 collective strategy configures itself for eager collectives (and fails on an
    # eager device it cannot see) unless the process runs graph mode only, as TF1 did.
    tf.compat.v1.disable_eager_execution()
    return tf.compat.v1.distribute.experimental.MultiWorkerMirroredStrategy()
  if name == 'one_device':
    return tf.distribute.OneDeviceStrategy(_devices(min(num_gpus, 1), False)[0])
  devices = _devices(num_gpus, True)
  cross_device_ops = None
  if not any('GPU' in d.upper() for d in devices):
    # NCCL needs GPUs; on CPU devices the gradients are summed on one device.
    cross_device_ops = tf.distribute.ReductionToOneDevice()
  return tf.compat.v1.distribute.MirroredStrategy(devices=devices,
                                                  cross_device_ops=cross_device_ops)


def startup_peers(config):
  """The peers of peers_to_reach needed only until training starts: under parameter_server a
  worker waits for the chief to initialise the variables, then trains on without it."""
  task_type, _ = task_of(config)
  if config and 'ps' in config['cluster'] and task_type == 'worker':
    return {'chief:0'}
  return set()


def _reachable(address, timeout_s=1.0):
  host, port = address.rsplit(':', 1)
  try:
    with socket.create_connection((host, int(port)), timeout=timeout_s):
      return True
  except (OSError, ValueError):
    return False


class PeerWatchdog(threading.Thread):
  """Ends this process when a cluster member it needs stays unreachable.

  TensorFlow waits for a missing member without end (session creation retries, "CreateSession
  still waiting"), so a typo in a host list or a dead ps would hang every other member. This
  thread connects to each needed peer every `poll_s` (those in `startup_only` until they first
  answer); a peer that has not answered for `timeout_s` (at start, or since it last answered)
  gets a one-line error naming it and its address, and the process exits with `exit_code`. It
  cannot raise into the main thread, which is blocked inside TensorFlow, hence the hard exit;
  checkpoints are written to a temporary file and renamed, so none is left half-written.
  """

  def __init__(self, peers, timeout_s, startup_only=(), poll_s=1.0, exit_code=1, stream=None,
               exit_fn=None, on_failure=None):
    """on_failure(message), if given, runs before the exit (the chief marks its run failed)."""
    super().__init__(name='peer-watchdog', daemon=True)
    self.on_failure = on_failure
    self.peers = dict(peers)
    self.startup_only = set(startup_only)
    self.timeout_s = timeout_s
    self.poll_s = poll_s
    self.exit_code = exit_code
    self.stream = stream or sys.stderr
    self.exit_fn = exit_fn or _hard_exit
    self._stop_event = threading.Event()

  def stop(self):
    self._stop_event.set()

  def run(self):
    last_seen = {name: time.monotonic() for name in self.peers}
    while not self._stop_event.is_set():
      now = time.monotonic()
      for name, address in list(self.peers.items()):
        if _reachable(address):
          last_seen[name] = time.monotonic()
          if name in self.startup_only:
            del self.peers[name]  # seen once: no longer needed
        elif now - last_seen[name] > self.timeout_s:
          if self._stop_event.is_set():
            return
          message = ('cluster member %s at %s is unreachable: no answer for %g s '
                     '(--cluster_timeout_s); check that it runs and that the address is right' %
                     (name, address, self.timeout_s))
          self.stream.write('error: %s\n' % message)
          self.stream.flush()
          if self.on_failure:
            self.on_failure(message)
          self.exit_fn(self.exit_code)
          return
      self._stop_event.wait(self.poll_s)


def _hard_exit(code):
  sys.stdout.flush()
  os._exit(code)  # pylint: disable=protected-access
