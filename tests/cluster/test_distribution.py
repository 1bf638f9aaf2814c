"""tf.distribute through the Estimator: strategies, batch splitting, TF_CONFIG checks."""

import io
import json
import os
import socket
import subprocess
import sys
import time

from absl import flags
import pytest
import tensorflow as tf

from mnist_cnn import launch_local_cluster
from mnist_cnn import resnet_main
from official.utils import cluster_training
from official.utils import distribution_utils
from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
ENV.pop('TF_CONFIG', None)

GOOD = {'cluster': {'chief': ['127.0.0.1:2222'], 'worker': ['127.0.0.1:2223'],
                    'ps': ['127.0.0.1:2224']},
        'task': {'type': 'worker', 'index': 0}}


def test_a_good_tf_config_is_returned_as_a_dict():
  assert distribution_utils.parse_tf_config(json.dumps(GOOD)) == GOOD
  assert distribution_utils.parse_tf_config('') == {}
  evaluator = dict(GOOD, task={'type': 'evaluator', 'index': 0})
  assert distribution_utils.parse_tf_config(json.dumps(evaluator)) == evaluator


@pytest.mark.parametrize('text, message', [
    ('{"cluster": ', 'TF_CONFIG is not valid JSON'),
    ('[1, 2]', 'must be a JSON object'),
    (json.dumps({'task': {'type': 'worker', 'index': 0}}), 'no "cluster" object'),
    (json.dumps(dict(GOOD, cluster={'master': ['h:1']})), "unknown task type 'master'"),
    (json.dumps(dict(GOOD, cluster={'worker': 'h:1'})), 'non-empty list of "host:port"'),
    (json.dumps(dict(GOOD, task={'type': 'boss', 'index': 0})), "task type 'boss' is unknown"),
    (json.dumps(dict(GOOD, task={'type': 'worker', 'index': 1})),
     'task index 1 is out of range for 1 worker task(s)'),
    (json.dumps(dict(GOOD, task={'type': 'worker', 'index': -1})), 'out of range'),
    (json.dumps({'cluster': {'chief': ['h:1']}, 'task': {'type': 'ps', 'index': 0}}),
     "task type 'ps' has no addresses"),
])
def test_bad_tf_config_fails_fast_naming_the_defect(text, message):
  with pytest.raises(distribution_utils.DistributionError) as error:
    distribution_utils.parse_tf_config(text)
  assert message in str(error.value)


def test_host_flags_build_a_cluster_with_the_first_worker_as_chief():
  hosts = ['10.0.0.1:2222', '10.0.0.2:2222', '10.0.0.4:2222']
  cluster = {'chief': ['10.0.0.1:2222'], 'worker': ['10.0.0.2:2222', '10.0.0.4:2222'],
             'ps': ['10.0.0.3:2222']}
  for task_type, index, task in [('worker', 0, {'type': 'chief', 'index': 0}),
                                 ('worker', 2, {'type': 'worker', 'index': 1}),
                                 ('ps', 0, {'type': 'ps', 'index': 0}),
                                 ('evaluator', 0, {'type': 'evaluator', 'index': 0})]:
    config = distribution_utils.tf_config_from_flags(hosts, ['10.0.0.3:2222'], task_type, index)
    assert config == {'cluster': cluster, 'task': task}
  assert distribution_utils.tf_config_from_flags([], [], 'worker', 0) == {}
  for args, message in [((hosts, [], 'worker', 3), '--task_index=3 is out of range for 3'),
                        ((hosts, [], 'ps', 0), 'out of range for 0 ps host'),
                        (([], ['h:1'], 'ps', 0), '--ps_hosts needs --worker_hosts'),
                        ((hosts, [], 'chief', 0), '--task_type=chief is unknown')]:
    with pytest.raises(distribution_utils.DistributionError, match=message):
      distribution_utils.tf_config_from_flags(*args)


def test_each_member_watches_the_peers_it_cannot_train_without():
  ps_cluster = {'chief': ['c:1'], 'worker': ['w:1', 'w:2'], 'ps': ['p:1']}
  def config(cluster, task_type, index=0):
    return {'cluster': cluster, 'task': {'type': task_type, 'index': index}}
  assert distribution_utils.peers_to_reach(config(ps_cluster, 'worker', 1)) == {
      'ps:0': 'p:1', 'chief:0': 'c:1'}
  assert distribution_utils.startup_peers(config(ps_cluster, 'worker', 1)) == {'chief:0'}
  assert distribution_utils.peers_to_reach(config(ps_cluster, 'chief')) == {'ps:0': 'p:1'}
  assert distribution_utils.peers_to_reach(config(ps_cluster, 'ps')) == {}
  assert distribution_utils.peers_to_reach(config(ps_cluster, 'evaluator')) == {}
  sync = {'chief': ['c:1'], 'worker': ['w:1', 'w:2']}
  assert distribution_utils.peers_to_reach(config(sync, 'worker', 0)) == {
      'chief:0': 'c:1', 'worker:1': 'w:2'}
  assert distribution_utils.startup_peers(config(sync, 'worker', 0)) == set()
  assert distribution_utils.peers_to_reach({}) == {}
  assert distribution_utils.training_workers(config(sync, 'chief')) == 3
  assert distribution_utils.training_workers({}) == 1


def _watch(peers, timeout_s, **kwargs):
  exits, stream = [], io.StringIO()
  watchdog = distribution_utils.PeerWatchdog(peers, timeout_s, poll_s=0.05, stream=stream,
                                             exit_fn=exits.append, **kwargs)
  watchdog.start()
  return watchdog, exits, stream


def test_the_watchdog_ends_the_process_naming_a_peer_that_stays_unreachable():
  listening = socket.socket()
  listening.bind(('127.0.0.1', 0))
  listening.listen()
  live = '127.0.0.1:%d' % listening.getsockname()[1]
  dead_port = launch_local_cluster.free_ports(1)[0]
  dead = '127.0.0.1:%d' % dead_port
  watchdog, exits, stream = _watch({'chief:0': live, 'ps:0': dead}, timeout_s=0.5)
  watchdog.join(10)
  listening.close()
  assert exits == [1]
  assert stream.getvalue() == (
      'error: cluster member ps:0 at %s is unreachable: no answer for 0.5 s (--cluster_timeout_s); '
      'check that it runs and that the address is right\n' % dead)


def test_the_watchdog_lets_a_startup_peer_go_once_seen_and_stops_on_request():
  listening = socket.socket()
  listening.bind(('127.0.0.1', 0))
  listening.listen()
  address = '127.0.0.1:%d' % listening.getsockname()[1]
  watchdog, exits, _ = _watch({'chief:0': address}, timeout_s=0.3, startup_only={'chief:0'})
  deadline = time.monotonic() + 30  # its first poll, however late a loaded machine runs it
  while watchdog.peers and time.monotonic() < deadline:
    time.sleep(0.05)
  listening.close()  # the chief goes away after the worker's start: no longer needed
  time.sleep(0.8)
  assert exits == [] and watchdog.peers == {}
  watchdog.stop()
  watchdog.join(5)
  assert not watchdog.is_alive()


def test_global_batch_splits_evenly_or_is_rejected():
  assert distribution_utils.per_replica_batch_size(128, 4) == 32
  with pytest.raises(distribution_utils.DistributionError,
                     match='--batch_size=10 does not split evenly over 4 replicas'):
    distribution_utils.per_replica_batch_size(10, 4)


def _flags(argv):
  return conftest.parse_flags(resnet_main.define_mnist_flags, argv)


def test_a_cluster_for_a_local_strategy_is_refused_before_model_dir_is_touched(tmp_path,
                                                                               monkeypatch):
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  (model_dir / 'keep').write_text('x')
  monkeypatch.setenv('TF_CONFIG', json.dumps(dict(GOOD, task={'type': 'chief', 'index': 0})))
  with pytest.raises(distribution_utils.DistributionError, match='trains in one process'):
    resnet_main.run_resnet(_flags(['--use_synthetic_data', '--model_dir=%s' % model_dir,
                                   '--clean', '--num_filters=4', '--batch_size=8']))
  monkeypatch.setenv('TF_CONFIG', '{"cluster": }')
  with pytest.raises(distribution_utils.DistributionError, match='not valid JSON'):
    resnet_main.run_resnet(_flags(['--use_synthetic_data', '--model_dir=%s' % model_dir,
                                   '--clean', '--num_filters=4', '--batch_size=8']))
  assert os.listdir(str(model_dir)) == ['keep']


def test_unknown_strategy_and_bad_num_gpus_are_rejected():
  with pytest.raises(flags.IllegalFlagValueError, match='off|one_device|mirrored|parameter_server'):
    _flags(['--distribution_strategy=horovod'])
  with pytest.raises(flags.IllegalFlagValueError, match='--num_gpus must be -1'):
    _flags(['--num_gpus=-2'])


# Two logical CPU devices must be configured before TensorFlow initialises its devices, so the
# mirrored run goes in a fresh process.
_MIRRORED_SCRIPT = '''
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from absl import flags
from mnist_cnn import launch_local_cluster
from mnist_cnn import resnet_main
flag_values = flags.FlagValues()
resnet_main.define_mnist_flags(flag_values)
flag_values(['resnet_main'] + sys.argv[1:])
try:
  results = resnet_main.run_resnet(flag_values)["eval_results"]
except ValueError as e:
  print('ERROR', e)
  sys.exit(3)
print('RESULT', json.dumps({k: float(v) for k, v in results.items()
                             if k in ('accuracy', 'global_step', 'loss')}))
'''


def _mirrored(tmp_path, *argv):
  return subprocess.run([sys.executable, '-c', _MIRRORED_SCRIPT, '--use_synthetic_data',
                         '--model_dir=%s' % (tmp_path / 'model'), '--num_filters=4',
                         '--distribution_strategy=mirrored', '--num_gpus=0'] + list(argv),
                        capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize('ema_decay', ['0', '0.5'])
def test_mirrored_over_two_logical_cpus_trains_and_evaluates(tmp_path, ema_decay):
  result = _mirrored(tmp_path, '--batch_size=8', '--max_train_steps=3',
                     '--ema_decay=' + ema_decay)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  # The replicas' averages are one set of variables, as the weights are; the evaluation
  # (under the strategy too) restored them.
  checkpoint = tf.train.latest_checkpoint(str(tmp_path / 'model'))
  assert any(name.endswith('/ExponentialMovingAverage') for name, _ in
             tf.train.list_variables(checkpoint)) == (ema_decay != '0')
  line = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')][-1]
  results = json.loads(line[len('RESULT '):])
  assert results['global_step'] == 3
  assert 0.0 <= results['accuracy'] <= 1.0 and results['loss'] > 0
  with open(str(tmp_path / 'model' / 'flags.json')) as f:
    assert json.load(f)['replicas'] == 2


def test_mirrored_batch_that_does_not_split_is_rejected(tmp_path):
  result = _mirrored(tmp_path, '--batch_size=7', '--max_train_steps=1')
  assert result.returncode == 3, result.stderr[-3000:]
  assert 'ERROR --batch_size=7 does not split evenly over 2 replicas' in result.stdout
  assert not os.path.exists(str(tmp_path / 'model'))


def test_the_cluster_comes_from_tf_config_or_the_host_flags_not_both():
  environ = {'TF_CONFIG': json.dumps(GOOD)}
  assert distribution_utils.cluster_config(environ) == GOOD
  assert distribution_utils.task_of(GOOD) == ('worker', 0)
  from_flags = distribution_utils.cluster_config({}, ['h:1', 'h:2'], ['h:3'], 'worker', 1)
  assert from_flags['task'] == {'type': 'worker', 'index': 0}
  assert distribution_utils.cluster_config({}) == {}
  assert distribution_utils.task_of({}) == ('chief', 0)
  with pytest.raises(distribution_utils.DistributionError, match='both TF_CONFIG and'):
    distribution_utils.cluster_config(environ, ['h:1'], [], 'worker', 0)


@pytest.mark.parametrize('name, config, message', [
    ('parameter_server', {}, 'needs a cluster'),
    ('multi_worker_mirrored', GOOD, 'no use for ps tasks'),
    ('parameter_server', {'cluster': {'chief': ['h:1']}, 'task': {'type': 'chief'}},
     'needs ps tasks'),
    ('mirrored', GOOD, 'trains in one process'),
    ('parameter_server', {'cluster': {'worker': ['h:1'], 'ps': ['h:2']},
                          'task': {'type': 'worker', 'index': 0}}, 'the cluster has no chief'),
])
def test_the_strategy_must_fit_the_cluster(name, config, message):
  with pytest.raises(distribution_utils.DistributionError, match=message):
    distribution_utils.check_strategy_for_cluster(name, config)
  distribution_utils.check_strategy_for_cluster('off', {})
  distribution_utils.check_strategy_for_cluster('parameter_server', GOOD)


def _save_checkpoint(model_dir, step):
  with tf.Graph().as_default():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
      sess.run(global_step.assign(step))
      return saver.save(sess, os.path.join(model_dir, 'model.ckpt'), global_step=step)


def test_the_evaluator_skips_a_checkpoint_rotated_away_and_stops_at_the_last_step(tmp_path):
  model_dir = str(tmp_path)
  _save_checkpoint(model_dir, 5)

  class Classifier(object):
    """Evaluates like an Estimator; the first checkpoint vanishes as its evaluation starts,
    the way the chief's keep_checkpoint_max rotation deletes it."""
    evaluated = []

    def __init__(self):
      self.model_dir = model_dir

    def evaluate(self, input_fn, checkpoint_path):
      del input_fn
      self.evaluated.append(os.path.basename(checkpoint_path))
      if len(self.evaluated) == 1:
        _save_checkpoint(model_dir, 10)
        for name in os.listdir(model_dir):  # as the chief's rotation deletes it
          if name.startswith('model.ckpt-5.'):
            os.remove(os.path.join(model_dir, name))
        raise ValueError('The passed save_path is not a valid checkpoint: ' + checkpoint_path)
      return {'global_step': int(checkpoint_path.rsplit('-', 1)[1])}

  cluster_training.evaluate_checkpoints(Classifier(), None, max_steps=10, poll_s=0.01)
  assert Classifier.evaluated == ['model.ckpt-5', 'model.ckpt-10']


def test_the_evaluator_stops_on_an_error_of_a_checkpoint_that_is_there(tmp_path):
  model_dir = str(tmp_path)
  _save_checkpoint(model_dir, 5)

  class Classifier(object):

    def __init__(self):
      self.model_dir = model_dir

    def evaluate(self, input_fn, checkpoint_path):
      raise ValueError('shapes do not match')

  with pytest.raises(ValueError, match='shapes do not match'):
    cluster_training.evaluate_checkpoints(Classifier(), None, max_steps=10, poll_s=0.01)


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
  """A port from the ephemeral range, free when probed, can go to another process's
  connection before a member binds it; free_ports looks below that range."""
  ports = launch_local_cluster.free_ports(5)
  assert len(set(ports)) == 5
  low = launch_local_cluster._ephemeral_low()  # pylint: disable=protected-access
  if low is not None and low - launch_local_cluster._LOWEST_PORT >= 1000:  # pylint: disable=protected-access
    assert all(launch_local_cluster._LOWEST_PORT <= p < low for p in ports), (ports, low)  # pylint: disable=protected-access
  for port in ports:
    with socket.socket() as s:
      s.bind(('127.0.0.1', port))
