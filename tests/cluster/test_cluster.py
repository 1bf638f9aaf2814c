"""Clusters on 127.0.0.1: train_and_evaluate with multi_worker_mirrored and parameter_server,
the local-cluster launcher, and what happens when members die or cannot be reached.

Every member is a real `python -m mnist_cnn.resnet_main` process on synthetic data with a
4-filter ResNet-18, so each test takes seconds of training and some seconds of start-up."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import launch_local_cluster
from official.utils import distribution_utils
from official.utils.logs import run_record

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONUNBUFFERED='1')
STEP_LINE = re.compile(r'^(?:\[(\w+)\] )?step (\d+) ')
# Clusters run one at a time on one xdist worker: two at once on two cores starved each other
# (a rerun past 300 s, an evaluator lost, in a clean-clone CI run).
pytestmark = pytest.mark.xdist_group('cluster')
# Synthetic data has 1,024 training images (128 steps of 8): enough epochs for any step count.
TINY = ['--use_synthetic_data', '--num_filters=4', '--batch_size=8', '--train_epochs=100']


class Process:
  """A subprocess whose output lines are collected by a thread, so the test can wait on them."""

  def __init__(self, argv):
    self.lines = []
    self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=ENV, cwd=REPO, text=True, start_new_session=True)
    self._thread = threading.Thread(target=self._read, daemon=True)
    self._thread.start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line.rstrip('\n'))

  def wait_for(self, predicate, timeout=240):
    """The first line for which predicate(line) holds (fails at the timeout or on exit)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
      while seen < len(self.lines):
        if predicate(self.lines[seen]):
          return self.lines[seen]
        seen += 1
      if self.process.poll() is not None and seen == len(self.lines):
        self._thread.join(5)
        if seen == len(self.lines):
          break
      time.sleep(0.1)
    raise AssertionError('no matching line; output ends:\n' + '\n'.join(self.lines[-40:]))

  def finish(self, timeout=300):
    code = self.process.wait(timeout)
    self._thread.join(10)
    return code

  def kill(self):
    if self.process.poll() is None:
      os.killpg(self.process.pid, signal.SIGKILL)
      self.process.wait()

  @property
  def text(self):
    return '\n'.join(self.lines)


def _launcher(model_dir, *args, main_flags=()):
  return Process([sys.executable, '-m', 'mnist_cnn.launch_local_cluster'] + list(args) +
                 ['--'] + TINY + ['--model_dir=%s' % model_dir] + list(main_flags))


def _steps(lines, role):
  return [int(m.group(2)) for m in map(STEP_LINE.match, lines)
          if m and (m.group(1) or role) == role]


def _checkpoint_step(model_dir):
  path = tf.train.latest_checkpoint(str(model_dir))
  assert path, 'no checkpoint in %s' % model_dir
  reader = tf.train.load_checkpoint(path)
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    assert not hasattr(value, 'dtype') or value.dtype.kind != 'f' or (value == value).all(), name
  return int(reader.get_tensor('global_step'))


def _member_pids(started_line):
  """{role: pid} from the launcher's '[launcher] started chief (pid N), ...' line."""
  return {role: int(pid) for role, pid in re.findall(r'(\w+) \(pid (\d+)\)', started_line)}


def _launch_until_checkpointed(model_dir, args, main_flags):
  """Starts a launcher and waits until the chief trains with a checkpoint past step 0.

  Returns (Process, {role: pid}); the caller kills the process when done.
  """
  run = _launcher(model_dir, *args, main_flags=main_flags)
  try:
    pids = _member_pids(run.wait_for(lambda l: l.startswith('[launcher] started')))
    run.wait_for(lambda l: (STEP_LINE.match(l) and l.startswith('[chief]') and
                            tf.train.latest_checkpoint(str(model_dir)) and
                            _checkpoint_step(model_dir) > 0))
  except BaseException:
    run.kill()
    raise
  return run, pids


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def test_member_commands_build_the_host_flags_of_one_cluster():
  members = launch_local_cluster.member_commands(['--train_epochs=1'], workers=2, ps=1,
                                                 evaluator=True, ports=[5001, 5002, 5003],
                                                 python='py')
  assert [role for role, _ in members] == ['chief', 'worker0', 'ps0', 'evaluator']
  chief = members[0][1]
  assert chief[:4] == ['py', '-m', 'mnist_cnn.resnet_main', '--train_epochs=1']
  assert '--distribution_strategy=parameter_server' in chief
  assert '--worker_hosts=127.0.0.1:5001,127.0.0.1:5002' in chief
  assert '--ps_hosts=127.0.0.1:5003' in chief
  assert chief[-2:] == ['--task_type=worker', '--task_index=0']
  assert members[1][1][-2:] == ['--task_type=worker', '--task_index=1']
  assert members[2][1][-2:] == ['--task_type=ps', '--task_index=0']
  assert members[3][1][-2:] == ['--task_type=evaluator', '--task_index=0']
  # What the host flags say is what TF_CONFIG would say.
  config = distribution_utils.tf_config_from_flags(
      ['127.0.0.1:5001', '127.0.0.1:5002'], ['127.0.0.1:5003'], 'worker', 1)
  assert config['task'] == {'type': 'worker', 'index': 0}
  mirrored = launch_local_cluster.member_commands([], workers=3, ps=0, ports=[1, 2, 3])
  assert '--distribution_strategy=multi_worker_mirrored' in mirrored[0][1]
  assert not any(a.startswith('--ps_hosts') for a in mirrored[0][1])
  chosen = launch_local_cluster.member_commands(['--distribution_strategy=parameter_server'],
                                                workers=1, ps=1, ports=[1, 2])
  assert sum(a.startswith('--distribution_strategy') for a in chosen[0][1]) == 1


def _assert_holds_the_averages(loaded, checkpoint):
  """The export's weights are the checkpoint's averages (--ema_decay), not its last weights."""
  exported = {v.name.split(':')[0]: v.numpy() for v in loaded.variables}
  averaged = [name for name in exported if 'moving_' not in name]
  assert averaged
  for name in averaged:
    np.testing.assert_array_equal(
        exported[name], tf.train.load_variable(checkpoint, name + '/ExponentialMovingAverage'))


@pytest.mark.slow
def test_parameter_server_cluster_trains_to_its_steps_and_the_chief_exports(tmp_path):
  model_dir, export_dir = tmp_path / 'model', tmp_path / 'export'
  # The evaluator works through the checkpoints after the chief ends: on a loaded machine that
  # took longer than the default 30 s of grace, and it was stopped (exit not 0).
  run = _launcher(model_dir, '--workers=2', '--ps=1', '--evaluator', '--grace_s=600',
                  main_flags=['--max_train_steps=2000', '--export_dir=%s' % export_dir,
                              '--save_checkpoints_secs=1', '--ema_decay=0.99'])
  assert run.finish() == 0, run.text[-4000:]
  # Workers step independently: each stops when it sees global_step at the target, so steps
  # already under way may carry it a step or so per worker past it.
  last_step = _checkpoint_step(model_dir)
  assert 2000 <= last_step <= 2002
  # Both workers trained, and global_step (shared on the ps) only went forwards. worker0 starts
  # once the chief's session is ready and may join late (at step 1069 of 1200 in a loaded CI
  # run), logging no step line: it says how many steps it ran when it is done.
  assert _steps(run.lines, 'chief'), run.text[-3000:]
  own = re.search(r'^\[worker0\] worker:0: done after (\d+) steps of its own$', run.text, re.M)
  assert own and int(own.group(1)) >= 1, run.text[-3000:]
  chief_steps = _steps(run.lines, 'chief')
  assert chief_steps == sorted(chief_steps)
  records = run_record.read_metrics(str(model_dir))
  final = [r for r in records if 'accuracy' in r][-1]
  assert final['global_step'] == last_step and final['workers'] == 2
  assert final['examples_per_second'] > 0
  assert records[-1] == dict(records[-1], event='finished')
  with open(str(model_dir / 'flags.json')) as f:
    recorded = json.load(f)
  assert recorded['distribution_strategy'] == 'parameter_server'
  assert sorted(recorded['cluster']) == ['chief', 'ps', 'worker']
  # The export loads and answers, with the averages of the weights the ps kept.
  (version,) = os.listdir(str(export_dir))
  loaded = tf.saved_model.load(str(export_dir / version))
  outputs = loaded.signatures['serving_default'](images=tf.zeros([2, 28, 28, 1]))
  assert outputs['probabilities'].shape == (2, 10)
  _assert_holds_the_averages(loaded, tf.train.latest_checkpoint(str(model_dir)))
  assert 'chief exited with status 0' in run.text
  # The evaluator followed the checkpoints into model_dir/eval and ended with the run.
  assert 'evaluator exited with status 0' in run.text, run.text[-6000:]
  assert any(name.startswith('events.') for name in os.listdir(str(model_dir / 'eval')))


@pytest.mark.slow
def test_multi_worker_mirrored_cluster_trains_in_step(tmp_path):
  model_dir = tmp_path / 'model'
  run = _launcher(model_dir, '--workers=2', main_flags=['--max_train_steps=200',
                                                       '--ema_decay=0.9'])
  assert run.finish() == 0, run.text[-4000:]
  assert _checkpoint_step(model_dir) == 200
  checkpoint = tf.train.latest_checkpoint(str(model_dir))
  assert any(name.endswith('/ExponentialMovingAverage')
             for name, _ in tf.train.list_variables(checkpoint))
  # Synchronous: both workers run every step (on half of the global batch each), so both
  # report the same steps and the count lands exactly on the target.
  assert _steps(run.lines, 'chief') == _steps(run.lines, 'worker0') != []
  with open(str(model_dir / 'flags.json')) as f:
    assert json.load(f)['replicas'] == 2


@pytest.mark.slow
def test_a_killed_worker_rejoins_and_training_finishes_consistently(tmp_path):
  model_dir = tmp_path / 'model'
  ps_port, chief_port, worker_port = launch_local_cluster.free_ports(3)
  members = dict(launch_local_cluster.member_commands(
      TINY + ['--model_dir=%s' % model_dir, '--max_train_steps=1500',
              '--save_checkpoints_secs=2'],
      workers=2, ps=1, ports=[chief_port, worker_port, ps_port]))
  ps = Process(members['ps0'])
  chief = Process(members['chief'])
  worker = None
  try:
    chief.wait_for(lambda l: run_record.SESSION_READY in l)
    # The chief is paused from here until the restarted worker trains, so that it cannot finish
    # the run first (a loaded CI run: the chief reached step 1490 of 1500 while the worker
    # started); the worker needs only the ps to train.
    os.killpg(chief.process.pid, signal.SIGSTOP)
    try:
      worker = Process(members['worker0'])
      before = int(STEP_LINE.match(worker.wait_for(STEP_LINE.match)).group(2))
      worker.kill()
      worker = Process(members['worker0'])
      ready = worker.wait_for(lambda l: run_record.SESSION_READY in l)
      rejoined_at = int(ready.rsplit(' ', 1)[1])
      assert rejoined_at > before  # it took up the shared global_step, not a fresh one
      first_step = int(STEP_LINE.match(worker.wait_for(STEP_LINE.match)).group(2))
      assert first_step > rejoined_at
    finally:
      os.killpg(chief.process.pid, signal.SIGCONT)
    assert chief.finish() == 0, chief.text[-4000:]
    assert worker.finish(60) == 0, worker.text[-4000:]
  finally:
    for process in (chief, worker, ps):
      if process:
        process.kill()
  assert 1500 <= _checkpoint_step(model_dir) <= 1502
  steps = _steps(chief.lines, None)
  assert steps == sorted(steps) and steps[-1] <= 1502


@pytest.mark.slow
def test_rerunning_after_the_chief_dies_resumes_from_its_checkpoint(tmp_path):
  model_dir = tmp_path / 'model'
  args = ('--workers=2', '--ps=1', '--grace_s=5')
  main_flags = ['--max_train_steps=1500', '--save_checkpoints_secs=1']
  run, pids = _launch_until_checkpointed(model_dir, args, main_flags)
  try:
    os.kill(pids['chief'], signal.SIGKILL)
    assert run.finish(60) == 128 + signal.SIGKILL
  finally:
    run.kill()
  # Every member went with the chief.
  assert len(pids) == 3 and not any(_alive(pid) for pid in pids.values())
  saved = _checkpoint_step(model_dir)
  assert 0 < saved < 1500
  rerun = _launcher(model_dir, *args, main_flags=main_flags)
  assert rerun.finish() == 0, rerun.text[-4000:]
  assert '[chief] chief:0: resuming from the checkpoint at step %d' % saved in rerun.text
  assert 1500 <= _checkpoint_step(model_dir) <= 1502
  assert min(_steps(rerun.lines, 'chief')) > saved


@pytest.mark.slow
def test_a_member_that_cannot_reach_the_others_fails_naming_the_address(tmp_path):
  dead_ps, chief_port, worker_port = launch_local_cluster.free_ports(3)
  members = dict(launch_local_cluster.member_commands(
      TINY + ['--model_dir=%s' % (tmp_path / 'model'), '--max_train_steps=10',
              '--cluster_timeout_s=3'],
      workers=2, ps=1, ports=[chief_port, worker_port, dead_ps]))
  started = time.monotonic()
  worker = Process(members['worker0'])  # no ps, no chief
  code = worker.finish(120)
  assert code == 1, worker.text[-3000:]
  assert ('error: cluster member ps:0 at 127.0.0.1:%d is unreachable' % dead_ps) in worker.text
  assert time.monotonic() - started < 90
  assert not os.path.exists(str(tmp_path / 'model' / 'metrics.json'))


@pytest.mark.parametrize('argv, environ, message', [
    (['--distribution_strategy=parameter_server'], None, 'needs a cluster'),
    (['--distribution_strategy=multi_worker_mirrored', '--worker_hosts=127.0.0.1:1',
      '--ps_hosts=127.0.0.1:2'], None, 'no use for ps tasks'),
    (['--distribution_strategy=parameter_server', '--worker_hosts=127.0.0.1:1'], None,
     'needs ps tasks'),
    (['--worker_hosts=127.0.0.1:1'], None, 'trains in one process'),
    (['--distribution_strategy=parameter_server', '--worker_hosts=127.0.0.1:1',
      '--ps_hosts=127.0.0.1:2', '--task_type=ps', '--task_index=1'], None,
     '--task_index=1 is out of range for 1 ps host(s)'),
    (['--distribution_strategy=multi_worker_mirrored', '--worker_hosts=127.0.0.1:1'],
     '{"cluster": {"chief": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}',
     'both TF_CONFIG and --worker_hosts'),
    (['--distribution_strategy=multi_worker_mirrored'], '{"cluster": ', 'not valid JSON'),
    (['--distribution_strategy=multi_worker_mirrored'],
     '{"cluster": {"chief": ["h:1"]}, "task": {"type": "boss", "index": 0}}',
     "task type 'boss' is unknown"),
    (['--distribution_strategy=multi_worker_mirrored'],
     '{"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", '
     '"index": 3}}', 'task index 3 is out of range'),
    (['--distribution_strategy=multi_worker_mirrored', '--worker_hosts=127.0.0.1:1,'
      '127.0.0.1:2', '--batch_size=7'], None, '--batch_size=7 does not split evenly'),
    (['--distribution_strategy=parameter_server', '--worker_hosts=127.0.0.1:1',
      '--ps_hosts=127.0.0.1:2', '--stop_threshold=0.9'], None, '--stop_threshold needs'),
])
def test_bad_cluster_settings_fail_fast_without_touching_model_dir(tmp_path, argv, environ,
                                                                   message):
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  (model_dir / 'keep').write_text('x')
  env = dict(ENV, TF_CONFIG=environ) if environ else ENV
  started = time.monotonic()
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.resnet_main', '--use_synthetic_data', '--num_filters=4',
       '--clean', '--model_dir=%s' % model_dir] + argv,
      capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
  assert result.returncode == 1, result.stderr[-3000:]
  assert message in result.stderr and 'error: ' in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert time.monotonic() - started < 60
  assert os.listdir(str(model_dir)) == ['keep']


def test_the_launcher_refuses_host_flags_after_the_separator(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.launch_local_cluster', '--workers=1', '--',
       '--task_index=1'], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60)
  assert result.returncode == 1
  assert 'the launcher sets --worker_hosts' in result.stderr


@pytest.mark.slow
def test_under_multi_worker_mirrored_a_lost_worker_stops_the_chief_and_a_rerun_resumes(tmp_path):
  # A dead peer aborts the collectives for good in the surviving process, so the chief cannot
  # wait for a restarted worker: it exits naming the lost one, and a rerun resumes.
  model_dir = tmp_path / 'model'
  args = ('--workers=2', '--grace_s=5')
  main_flags = ['--max_train_steps=1500', '--save_checkpoints_secs=1', '--cluster_timeout_s=5']
  run, pids = _launch_until_checkpointed(model_dir, args, main_flags)
  try:
    os.kill(pids['worker0'], signal.SIGKILL)
    assert run.finish(120) == 1
  finally:
    run.kill()
  assert re.search(r'\[chief\] error: cluster member worker:0 at 127\.0\.0\.1:\d+ is '
                   r'unreachable', run.text), run.text[-3000:]
  last = run_record.read_metrics(str(model_dir))[-1]
  assert last['event'] == 'failed' and 'worker:0 at 127.0.0.1:' in last['error']
  saved = _checkpoint_step(model_dir)
  rerun = _launcher(model_dir, *args, main_flags=main_flags)
  assert rerun.finish() == 0, rerun.text[-4000:]
  assert '[chief] chief:0: resuming from the checkpoint at step %d' % saved in rerun.text
  assert _checkpoint_step(model_dir) == 1500


@pytest.mark.slow
@pytest.mark.parametrize('sig, code', [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)])
def test_no_member_outlives_the_launcher(tmp_path, sig, code):
  # Ctrl-C stops every member in order; even a killed launcher takes them along (Linux).
  run = _launcher(tmp_path / 'model', '--workers=2', '--ps=1',
                  main_flags=['--max_train_steps=100000'])
  try:
    started = run.wait_for(lambda l: l.startswith('[launcher] started'))
    run.wait_for(lambda l: STEP_LINE.match(l) and l.startswith('[chief]'))
    os.kill(run.process.pid, sig)
    assert run.finish(60) == code, run.text[-4000:]
  finally:
    run.kill()
  pids = _member_pids(started).values()
  deadline = time.monotonic() + 30
  while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert len(pids) == 3 and not any(_alive(pid) for pid in pids)
