"""Version swaps free what the retired version held: the server in this process, so that a
weak reference can tell whether anything still holds a retired version once its requests end."""

import asyncio
import gc
import http.client
import json
import shutil
import threading
import time
import weakref

import numpy as np
import pytest

from mnist_cnn import serve
from mnist_cnn.serving import memory
from mnist_cnn.serving import models
from tests import server_helpers
from tests.conftest import parse_flags


class InProcessServer(object):
  """serve.serve() on its own event loop in a thread; `api.served.manager('mnist')` is the
  live manager."""

  def __init__(self, base_path, *extra):
    flags_obj = parse_flags(serve.define_serve_flags, [
        '--model_base_path=%s' % base_path, '--port=0', '--rest_api_port=0',
        '--file_system_poll_wait_seconds=0.1'] + list(extra))
    started = threading.Event()
    self._failure = []

    def ready(port, stop, api):
      self.port, self._stop, self.api = port, stop, api
      self._loop = asyncio.get_running_loop()
      started.set()

    def run():
      try:
        asyncio.run(serve.serve(flags_obj, ready))
      except BaseException as e:  # pylint: disable=broad-except
        self._failure.append(e)
        started.set()

    self._thread = threading.Thread(target=run, daemon=True)
    self._thread.start()
    assert started.wait(120) and not self._failure, self._failure

  def predict(self, images, connection):
    connection.request('POST', '/v1/models/mnist:predict',
                       body=json.dumps({'instances': images.tolist()}))
    response = connection.getresponse()
    return response.status, json.loads(response.read())

  def stop(self):
    self._loop.call_soon_threadsafe(self._stop.set)
    self._thread.join(60)
    gc.unfreeze()  # the server froze this test process's objects
    assert not self._thread.is_alive() and not self._failure, self._failure


def _wait(condition, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return True
    time.sleep(0.05)
  return False


@pytest.mark.parametrize('optimize', ['true', 'false'])
def test_a_retired_version_is_freed_once_its_requests_finish(exports, tmp_path, optimize):
  base = tmp_path / 'models'
  base.mkdir()
  server_helpers.publish(exports['alexnet'], base, 1)
  server = InProcessServer(base, '--optimize_graph=%s' % optimize)
  manager = server.api.served.manager('mnist')
  images = server_helpers.images(2, seed=4)
  stop, calling = threading.Event(), threading.Event()
  statuses = []

  def client():  # one client calling while `calling` is set
    connection = http.client.HTTPConnection('127.0.0.1', server.port, timeout=60)
    while not stop.is_set():
      if calling.wait(0.05):
        statuses.append(server.predict(images, connection)[0])
    connection.close()

  thread = threading.Thread(target=client)
  try:
    thread.start()
    retired = []
    # The first swap under a steady client, the second after its requests stopped (nothing
    # idle, such as the batcher's last batch, may keep the retired version).
    for version, name, client_calls in ((2, 'alexnet_2', True), (3, 'alexnet', False)):
      calling.set()
      count = len(statuses)
      assert _wait(lambda: len(statuses) >= count + 5)  # the served version answers
      if not client_calls:
        calling.clear()
      retired += [weakref.ref(manager.current), weakref.ref(manager.current.graph)]
      server_helpers.publish(exports[name], base, version)
      assert _wait(lambda: manager.current.version == version)
      shutil.rmtree(str(base / str(version - 1)))
      assert _wait(lambda: len(manager.retired) == version - 1), manager.retired
    assert manager.retired == [(1, True), (2, True)]
    gc.collect()  # the test's own check, beside the manager's
    assert [r() for r in retired] == [None] * 4
  finally:
    stop.set()
    thread.join(60)
    server.stop()
  assert statuses and set(statuses) == {200}


def test_a_retired_version_is_closed_before_it_drains_and_waits_for_its_calls(exports):
  loaded = models.LoadedVersion(1, exports['alexnet'])
  assert loaded.acquire()
  closer = threading.Thread(target=loaded.close_when_drained, args=(60.0,))
  closer.start()
  assert _wait(lambda: loaded._closed, 10)  # pylint: disable=protected-access
  assert not loaded.acquire()  # no new call once retiring...
  signature = loaded.signatures['serving_default']
  feeds = {'images': np.zeros((1, 28, 28, 1), np.float32)}
  assert loaded.run(signature, feeds)['classes'].shape == (1,)  # ...the one in flight still runs
  assert closer.is_alive()
  loaded.release()
  closer.join(60)
  assert not closer.is_alive() and not loaded._callables  # pylint: disable=protected-access


@pytest.mark.parametrize('variable', ['MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_'])
def test_large_blocks_are_mapped_unless_the_user_chose(monkeypatch, variable):
  monkeypatch.delenv('MALLOC_MMAP_THRESHOLD_', raising=False)
  monkeypatch.delenv('MALLOC_TRIM_THRESHOLD_', raising=False)
  monkeypatch.setenv(variable, '65536')
  assert not memory.map_large_blocks()  # the user's setting stands
  monkeypatch.delenv(variable)
  assert memory.map_large_blocks() == (memory._LIBC is not None)  # pylint: disable=protected-access
