"""Runs a whole training cluster as processes on this machine, to try one before having one.

  python -m mnist_cnn.launch_local_cluster --workers=2 --ps=1 -- --data_dir=DIR --model_dir=DIR

Every member is `python -m mnist_cnn.resnet_main` with the flags after `--`, plus the host flags
of a cluster on free 127.0.0.1 ports (--worker_hosts, --ps_hosts, --task_type, --task_index) and
--distribution_strategy (parameter_server with ps tasks, multi_worker_mirrored without, unless
the flags after `--` name one). Output is streamed with the roles as TF_CONFIG names them as
prefixes ("[chief] ", "[worker0] ", "[ps0] ", "[evaluator] "). With ps tasks the workers start
once the chief's session is ready (TensorFlow makes an early worker sleep 30 s).

When the chief ends, the workers and the evaluator get --grace_s seconds to finish their last
step or evaluation, then every member is stopped; a chief that fails or is killed, or Ctrl-C
or `kill` of the launcher, stops them all at once, and on Linux no member outlives a launcher
killed outright. The exit status is the chief's (128 + signal for a killed one, 130
after Ctrl-C); rerunning the same command resumes from the last checkpoint.
"""

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app
from absl import flags

from official.utils.logs import run_record

MAIN_MODULE = 'mnist_cnn.resnet_main'
EXIT_INTERRUPTED = 130
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def define_launcher_flags(flag_values=flags.FLAGS):
  fv = {'flag_values': flag_values}
  flags.DEFINE_integer('workers', 2, 'Training processes; the first is the chief.', **fv)
  flags.DEFINE_integer('ps', 0, 'Parameter-server processes (0: multi_worker_mirrored).', **fv)
  flags.DEFINE_boolean('evaluator', False,
                       'Add an evaluator task, which evaluates each new checkpoint.', **fv)
  flags.DEFINE_string('host', '127.0.0.1', 'Address every member listens on.', **fv)
  flags.DEFINE_float('grace_s', 30.0,
                     'Seconds the workers and the evaluator get to end on their own after the '
                     'chief.', **fv)
  flags.register_validator('workers', lambda v: v >= 1, message='--workers must be 1 or more',
                           **fv)
  flags.register_validator('ps', lambda v: v >= 0, message='--ps must be 0 or more', **fv)
  flags.register_validator('grace_s', lambda v: v >= 0, message='--grace_s must be >= 0', **fv)


# Where free_ports looks first: below the kernel's ephemeral range (where it can be read).
_LOWEST_PORT = 10000


def _ephemeral_low():
  """The first port of the kernel's ephemeral range, or None where it cannot be read."""
  try:
    with open('/proc/sys/net/ipv4/ip_local_port_range') as f:
      return int(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return None


def free_ports(count, host='127.0.0.1'):
  """Ports nothing listens on now (held open together, so they are distinct).

  Taken below the ephemeral range where there is room: a port the kernel hands out for port 0
  is free again once probed, and the kernel may hand it to another process's connection or
  server before the member binds it (a cluster test's worker once failed to start so, beside
  servers binding port 0).
  """
  sockets = []
  low = _ephemeral_low()
  rng = random.Random()
  try:
    for _ in range(1000 if low and low - _LOWEST_PORT >= 1000 else 0):
      if len(sockets) == count:
        break
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      try:
        s.bind((host, rng.randrange(_LOWEST_PORT, low)))
        sockets.append(s)
      except OSError:
        s.close()
    while len(sockets) < count:
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind((host, 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def member_commands(main_flags, workers, ps, evaluator=False, host='127.0.0.1', ports=None,
                    python=sys.executable):
  """[(role, argv)] for every member, named as in TF_CONFIG: 'chief', 'worker0'.., 'ps0'..,
  'evaluator'."""
  ports = ports or free_ports(workers + ps, host)
  worker_hosts = ['%s:%d' % (host, port) for port in ports[:workers]]
  ps_hosts = ['%s:%d' % (host, port) for port in ports[workers:workers + ps]]
  common = [python, '-m', MAIN_MODULE] + list(main_flags)
  if not any(f.startswith('--distribution_strategy') for f in main_flags):
    common.append('--distribution_strategy=' + (
        'parameter_server' if ps else 'multi_worker_mirrored'))
  common.append('--worker_hosts=' + ','.join(worker_hosts))
  if ps_hosts:
    common.append('--ps_hosts=' + ','.join(ps_hosts))
  members = []
  for index in range(workers):
    role = 'chief' if index == 0 else 'worker%d' % (index - 1)
    members.append((role, common + ['--task_type=worker', '--task_index=%d' % index]))
  for index in range(ps):
    members.append(('ps%d' % index, common + ['--task_type=ps', '--task_index=%d' % index]))
  if evaluator:
    members.append(('evaluator', common + ['--task_type=evaluator', '--task_index=0']))
  return members


def _own_session_dying_with_parent():
  """Runs in each member before exec: its own session, so a terminal's Ctrl-C reaches only the
  launcher, which stops the members in order; and on Linux a SIGTERM when the launcher dies,
  even by SIGKILL, so no member outlives it."""
  os.setsid()
  try:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
  except (OSError, AttributeError):
    pass  # not Linux: members are still stopped on every exit the launcher can handle


class Member:
  """One running member and the thread that copies its output with its role prefix."""

  def __init__(self, role, argv, out, lock, env):
    self.role = role
    self.ready = threading.Event()  # set when it prints run_record.SESSION_READY
    self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env, preexec_fn=_own_session_dying_with_parent)
    self._thread = threading.Thread(target=self._copy, args=(out, lock), daemon=True)
    self._thread.start()

  def _copy(self, out, lock):
    prefix = '[%s] ' % self.role
    for line in iter(self.process.stdout.readline, b''):
      text = line.decode('utf-8', 'replace')
      if run_record.SESSION_READY in text:
        self.ready.set()
      with lock:
        out.write(prefix + text)
        out.flush()

  def stop(self, sig=signal.SIGTERM):
    if self.process.poll() is None:
      try:
        os.killpg(self.process.pid, sig)
      except ProcessLookupError:
        pass

  def finish(self, timeout):
    try:
      self.process.wait(timeout)
    except subprocess.TimeoutExpired:
      self.stop(signal.SIGKILL)
      self.process.wait()
    self._thread.join(5)


def run_cluster(members, grace_s=30.0, out=sys.stdout, poll_s=0.2, stop_requested=None):
  """Starts members, waits for the chief, stops the rest; returns the chief's exit status.

  stop_requested: a threading.Event the launcher's signal handlers set (checked every poll_s,
  so a signal never interrupts the bookkeeping half-way); then every member is stopped and
  EXIT_INTERRUPTED returned.
  """
  stop_requested = stop_requested or threading.Event()
  env = dict(os.environ)
  env.pop('TF_CONFIG', None)  # the host flags describe the cluster
  lock = threading.Lock()
  running = []

  def say(text):
    with lock:
      out.write('[launcher] %s\n' % text)
      out.flush()

  try:
    _start(members, running, out, lock, env, poll_s, stop_requested)
    chief = running[0]
    say('started %s' % ', '.join('%s (pid %d)' % (m.role, m.process.pid) for m in running))
    reported = set()

    def report_ended():
      for member in running[1:]:
        code = member.process.poll()
        if code is not None and member.role not in reported:
          reported.add(member.role)
          say('%s exited with status %d' % (member.role, code))

    while chief.process.poll() is None and not stop_requested.is_set():
      report_ended()
      stop_requested.wait(poll_s)
    if stop_requested.is_set():
      say('interrupted: stopping every member')
      return EXIT_INTERRUPTED
    code = chief.process.returncode
    say('chief exited with status %d' % code)
    if code == 0:
      _let_finish(running[1:], grace_s, poll_s, stop_requested)
    report_ended()
    left = [member.role for member in running if member.process.poll() is None]
    if left:
      say('stopping %s' % ', '.join(left))
    return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it
  except KeyboardInterrupt:  # a caller without the signal handlers of main()
    say('interrupted: stopping every member')
    return EXIT_INTERRUPTED
  finally:
    for member in running:
      member.stop()
    for member in running:
      member.finish(10)


def _start(members, running, out, lock, env, poll_s, stop_requested):
  """Starts the members into running (a list the caller stops, whatever happens here).

  With ps tasks, workers that start before the chief has initialised the variables sleep 30 s
  (TensorFlow's fixed poll) before they look again, so they start once it has.
  """
  wait_for_chief = any(role.startswith('ps') for role, _ in members)
  later = [(role, argv) for role, argv in members
           if wait_for_chief and role.startswith('worker')]
  for role, argv in members:
    if (role, argv) not in later:
      running.append(Member(role, argv, out, lock, env))
  chief = running[0]
  if later:
    while not chief.ready.wait(poll_s):
      if chief.process.poll() is not None or stop_requested.is_set():
        break
    if not stop_requested.is_set():
      for role, argv in later:
        running.append(Member(role, argv, out, lock, env))


def _let_finish(others, grace_s, poll_s, stop_requested):
  """Gives workers and the evaluator up to grace_s to end on their own after the chief."""
  deadline = time.monotonic() + grace_s
  finishing = [member for member in others
               if member.role.startswith('worker') or member.role == 'evaluator']
  while (any(member.process.poll() is None for member in finishing) and
         time.monotonic() < deadline and not stop_requested.is_set()):
    stop_requested.wait(poll_s)


def main(argv):
  flags_obj = flags.FLAGS
  main_flags = argv[1:]
  if any(f.split('=')[0] in ('--worker_hosts', '--ps_hosts', '--task_type', '--task_index')
         for f in main_flags):
    sys.exit('error: the launcher sets --worker_hosts, --ps_hosts, --task_type and '
             '--task_index itself; leave them out of the flags after --')
  members = member_commands(main_flags, flags_obj.workers, flags_obj.ps, flags_obj.evaluator,
                            flags_obj.host)
  stop_requested = threading.Event()
  for sig in (signal.SIGINT, signal.SIGTERM):  # `kill` stops the members as Ctrl-C does
    signal.signal(sig, lambda signum, frame: stop_requested.set())
  sys.exit(run_cluster(members, flags_obj.grace_s, stop_requested=stop_requested))


def run_command():
  """The `mnist-cnn-cluster` console command (setup.py), as `python -m` runs this module."""
  define_launcher_flags()
  app.run(main)


if __name__ == '__main__':
  run_command()
