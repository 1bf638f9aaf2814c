"""The REST server at its edges: hostile and unlucky clients over real HTTP on 127.0.0.1.

Each test here failed on the server before the reliability work: one client answered with
another's rows, image bombs decoded, GIF/BMP refused, 500s for deep lists, coercion of
null/true/strings, stalled connections never closed, a stray '²' directory stopping the version
poll, a half-copied version never retried, a deleted one served on."""

import asyncio
import concurrent.futures
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import serving_abuse  # pylint: disable=g-import-not-at-top,wrong-import-position
from mnist_cnn.serving import batching
from mnist_cnn.serving import image_headers
from mnist_cnn.serving import models
from mnist_cnn.serving import rest_api
from tests import server_helpers

PATH = '/v1/models/mnist:predict'


def _rss_mb(pid):
  return serving_abuse.rss_mb(pid)


@pytest.fixture(scope='module')
def shared_server(exports, tmp_path_factory):
  """One server for the tests that only send requests (10 images per request at most)."""
  base = tmp_path_factory.mktemp('shared_models')
  server_helpers.publish(exports['alexnet'], base, 1)
  one = server_helpers.Server(base, '--max_images_per_request=10')
  yield one
  one.stop()


@pytest.fixture
def server(exports, tmp_path):
  base = tmp_path / 'models'
  base.mkdir()
  server_helpers.publish(exports['alexnet'], base, 1)
  started = []

  def start(*extra):
    started.append(server_helpers.Server(base, *extra))
    started[-1].base = base
    return started[-1]

  yield start
  for one in started:
    one.stop()


def _encoded(image, fmt):
  return serving_abuse.encoded(image, fmt)


@pytest.mark.parametrize('fmt,mode', [('PNG', 'L'), ('PNG', 'RGBA'), ('JPEG', 'L'),
                                      ('JPEG', 'RGB'), ('GIF', 'L'), ('BMP', 'L'),
                                      ('BMP', 'RGB')])
def test_pixel_count_is_read_from_each_formats_header(fmt, mode):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.new(mode, (37, 23)).save(buffer, fmt)
  assert image_headers.pixel_count(buffer.getvalue(), 10 ** 9) == 37 * 23


def test_bomb_headers_are_refused_and_unknown_bytes_pass():
  bomb = serving_abuse.png_bomb(3000)
  assert image_headers.pixel_count(bomb, 10 ** 9) == 3000 * 3000
  with pytest.raises(image_headers.ImageSizeError, match='9000000 pixels.*limit of 1000000'):
    image_headers.check_pixels(bomb, 1000 * 1000)
  gif = serving_abuse.gif_bomb(side=1000, frames=5)
  assert image_headers.pixel_count(gif, 10 ** 9) == 5 * 1000 * 1000
  image_headers.check_pixels(b'not an image at all', 1)  # the decoder refuses those itself
  with pytest.raises(image_headers.ImageSizeError, match='truncated'):
    image_headers.check_pixels(image_headers.PNG_MAGIC + b'\x00\x00', 10)


def _toy_export(path):
  """A SavedModel whose outputs do not come one row per input row: y = reshape(x, [-1, 1])."""
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    x = tf.compat.v1.placeholder(tf.float32, [None, None], name='x')
    y = tf.reshape(x, [-1, 1])
    builder = tf.compat.v1.saved_model.Builder(path)
    builder.add_meta_graph_and_variables(
        sess, [tf.compat.v1.saved_model.tag_constants.SERVING], signature_def_map={
            'serving_default': tf.compat.v1.saved_model.predict_signature_def(
                inputs={'x': x}, outputs={'y': y})})
    builder.save()


def _run_batcher(loaded, requests, max_batch_size=8):
  """Runs the (signature, feeds, rows) requests together through one Batcher."""
  async def scenario():
    executor = concurrent.futures.ThreadPoolExecutor(2)
    batcher = batching.Batcher(executor, max_batch_size=max_batch_size, batch_timeout_s=0.05,
                              num_batch_threads=1)
    results = await asyncio.gather(*[batcher.run(loaded, *r) for r in requests],
                                   return_exceptions=True)
    await batcher.close()
    executor.shutdown()
    return results, batcher.calls
  return asyncio.run(scenario())


def test_batcher_never_hands_a_request_another_requests_rows(tmp_path):
  path = str(tmp_path / 'toy')
  _toy_export(path)
  loaded = models.LoadedVersion(1, path)
  try:
    signature = loaded.signatures['serving_default']
    assert signature.batchable
    feeds = [np.array([[2 * i, 2 * i + 1]], np.float32) for i in range(6)]
    results, _ = _run_batcher(loaded, [(signature, {'x': f}, 1) for f in feeds])
  finally:
    loaded.close_when_drained()
  # Merged, the six requests give 12 rows for 6: the batcher must notice and run each alone.
  for feed, result in zip(feeds, results):
    np.testing.assert_array_equal(result['y'], feed.reshape(-1, 1))


def test_large_request_runs_in_parts_of_max_batch_size(exports):
  loaded = models.LoadedVersion(1, exports['alexnet'])
  try:
    signature = loaded.signatures['serving_default']
    images = server_helpers.images(20, seed=9)
    want = loaded.run(signature, {'images': images})
    results, calls = _run_batcher(loaded, [(signature, {'images': images}, 20)])
  finally:
    loaded.close_when_drained()
  assert calls == 3  # 8 + 8 + 4 rows
  np.testing.assert_allclose(results[0]['probabilities'], want['probabilities'], rtol=1e-5,
                             atol=1e-6)


class _SlowVersion(object):
  """Stands in for a loaded version: each call takes 0.1 s and echoes its rows."""

  def __init__(self):
    self.rows_computed = 0

  def run(self, signature, feeds):
    del signature
    time.sleep(0.1)
    self.rows_computed += len(feeds['x'])
    return {'y': feeds['x']}


class _Signature(object):
  name = 'serving_default'
  batchable = True


def test_a_cancelled_large_request_makes_no_further_calls():
  version = _SlowVersion()

  async def scenario():
    executor = concurrent.futures.ThreadPoolExecutor(2)
    batcher = batching.Batcher(executor, max_batch_size=8, batch_timeout_s=0.01,
                              num_batch_threads=1)
    task = asyncio.ensure_future(batcher.run(version, _Signature(),
                                             {'x': np.zeros((80, 1), np.float32)}, 80))
    await asyncio.sleep(0.25)  # two or three of its ten parts
    task.cancel()  # what aiohttp does when the client goes away
    with pytest.raises(asyncio.CancelledError):
      await task
    await asyncio.sleep(0.5)
    await batcher.close()
    executor.shutdown()
    return batcher.calls

  calls = asyncio.run(scenario())
  assert calls < 10 and version.rows_computed < 80


def test_image_bombs_are_refused_before_decoding(shared_server):
  s = shared_server
  png = serving_abuse.png_bomb(20000)
  gif = serving_abuse.gif_bomb(20000)
  before = _rss_mb(s.process.pid)
  for body in ([server_helpers.b64(png)], [server_helpers.b64(gif)],
               [server_helpers.b64(png), server_helpers.b64(png)]):
    status, answer = s.predict({'signature_name': server_helpers.BYTES_SIGNATURE, 'instances': body})
    assert status == 400, answer
    assert 'pixels' in answer['error'] and 'limit of 4194304' in answer['error']
  # Decoding one of them took 1.6 GB that stayed; refusing them costs nothing lasting.
  assert _rss_mb(s.process.pid) - before < 100


def test_gif_bmp_and_jpeg_digits_get_the_pngs_class(shared_server, exports, tmp_path):
  s = shared_server
  classes = {}
  for seed in range(3):
    image = serving_abuse.digit_image(seed)
    for fmt in ('PNG', 'GIF', 'BMP', 'JPEG'):
      status, answer = s.predict({'signature_name': server_helpers.BYTES_SIGNATURE,
                                  'instances': [server_helpers.b64(_encoded(image, fmt))]})
      assert status == 200, (fmt, answer)
      classes[seed, fmt] = answer['predictions'][0]['classes']
      path = tmp_path / ('digit%d.%s' % (seed, fmt.lower()))
      path.write_bytes(_encoded(image, fmt))
    assert len({classes[seed, fmt] for fmt in ('PNG', 'GIF', 'BMP', 'JPEG')}) == 1, classes
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.predict', '--export_dir=' + exports['alexnet']] +
      sorted(str(p) for p in tmp_path.glob('digit*')), capture_output=True, text=True,
      env=server_helpers.ENV, cwd=server_helpers.REPO, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  for line in result.stdout.strip().splitlines():
    name = os.path.basename(line.split(':')[0])
    seed = int(name[len('digit')])
    assert 'class %d ' % classes[seed, 'PNG'] in line, line


@pytest.mark.slow
def test_predict_cli_refuses_a_bomb_from_its_header(exports, tmp_path):
  bomb = tmp_path / 'bomb.png'
  bomb.write_bytes(serving_abuse.png_bomb(20000))
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.predict', '--export_dir=' + exports['alexnet'],
       str(bomb)], capture_output=True, text=True, env=server_helpers.ENV, cwd=server_helpers.REPO,
      timeout=300)
  assert result.returncode == 1
  assert 'bomb.png: error: the image has 400000000 pixels' in result.stdout


@pytest.mark.parametrize('body,path,message', [
    (serving_abuse.nested(33), PATH, 'lists nest more than 31 deep'),
    (serving_abuse.nested(1000), PATH, 'lists nest more than 31 deep'),
    ({'instances': [[None] + [0.0] * 783]}, PATH, 'null is not of expected type: float32'),
    ({'instances': [[True] + [0.0] * 783]}, PATH, 'true is not of expected type: float32'),
    ({'instances': [['0.5'] + [0.0] * 783]}, PATH, '"0.5" is not of expected type: float32'),
    ({'instances': [['NaN'] + [0.0] * 783]}, PATH, '"NaN" is not of expected type: float32'),
    ({'inputs': [[0.0] * 783 + [{}]]}, PATH, '{} is not of expected type: float32'),
    ({'instances': [[0.0] * 784] * 11}, PATH, 'holds 11 instances; this server takes at most 10'),
    ({'instances': [[0.0] * 784]}, '/v1/models/mnist/versions/%s:predict' % ('9' * 5000),
     'Failed to convert version: 999'),
    ({'instances': [[0.0] * 784]}, '/v1/models/mnist/versions/%s:predict' % ('9' * 19),
     'Failed to convert version: 9999999999999999999 to numeric.'),
])
def test_malformed_values_get_400_naming_the_problem(shared_server, body, path, message):
  status, answer = shared_server.predict(body, path=path)
  assert status == 400, answer
  assert message in answer['error'], answer


@pytest.mark.parametrize('raw', [
    b'GET /v1/models/mnist HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n',
    b'GET /' + b'a' * 20000 + b' HTTP/1.1\r\nHost: x\r\n\r\n',
    b'GET /v1/models/mnist HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'b' * 20000 + b'\r\n\r\n',
])
def test_malformed_http_gets_a_json_error(shared_server, raw):
  status, content_type, _ = serving_abuse.raw_request(shared_server.port, raw)
  assert status == '400' and content_type.startswith('application/json')
  assert shared_server.request('GET', '/v1/models/mnist')[0] == 200


# A request line and one header, never finished.
_STALLED_HEADERS = b'POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\n'


def _wait_closed(sockets, timeout, want=None):
  """Indices of the sockets the server closed, once `want` (default: all) are or at timeout."""
  return set(serving_abuse.wait_closed(sockets, time.monotonic(), timeout, want))


@pytest.mark.slow
def test_stalled_connections_are_closed_and_others_served(server):
  s = server('--header_timeout_s=1')
  sockets, _ = serving_abuse.open_stalled(s.port, 50, _STALLED_HEADERS)
  try:
    assert s.request('GET', '/v1/models/mnist')[0] == 200  # others are served meanwhile
    # Generous bound: the point is that they close at all (aiohttp alone never closed them).
    assert len(_wait_closed(sockets, 60)) == 50
  finally:
    for sock in sockets:
      sock.close()
  # A keep-alive connection that goes quiet after its request is closed the same way.
  sock = socket.create_connection(('127.0.0.1', s.port), timeout=10)
  sock.sendall(b'GET /v1/models/mnist HTTP/1.1\r\nHost: x\r\n\r\n')
  assert b'200 OK' in sock.recv(65536)
  sock.setblocking(False)
  assert _wait_closed([sock], 60) == {0}
  sock.close()
  assert s.stop() == 0
  assert 'closed 51 connections for slow headers' in ''.join(s.output) or \
      'closed 50 connections for slow headers' in ''.join(s.output)


@pytest.mark.slow
def test_a_body_that_never_arrives_gets_408_and_the_connection_closes(server):
  s = server('--request_timeout_s=1')
  with socket.create_connection(('127.0.0.1', s.port), timeout=60) as sock:
    sock.sendall(b'POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\n'
                 b'Content-Length: 5000\r\n\r\n{"instances": ')
    received = b''
    while True:
      chunk = sock.recv(65536)
      if not chunk:
        break  # closed by the server after its answer
      received += chunk
  head, body = received.split(b'\r\n\r\n', 1)
  assert head.startswith(b'HTTP/1.1 408') and b'application/json' in head
  assert 'did not arrive within 1.0 s' in json.loads(body)['error']


@pytest.mark.slow
def test_connections_over_the_cap_are_closed_at_once(server):
  s = server('--max_connections=5', '--header_timeout_s=600')
  sockets, _ = serving_abuse.open_stalled(s.port, 12, _STALLED_HEADERS)
  try:
    # Over the cap, closed at once; the first five wait for their (long) header timeout.
    assert len(_wait_closed(sockets, 60, want=7)) >= 7
  finally:
    for sock in sockets:
      sock.close()
  assert s.stop() == 0
  output = ''.join(s.output)
  assert output.count('closed a connection over --max_connections=5') == 1  # rate-limited
  assert '7 over the cap' in output


def test_repeated_log_messages_are_held_back_and_counted():
  lines, now = [], [0.0]
  log = rest_api.RateLimitedLog(interval_s=60, log=lines.append, clock=lambda: now[0])
  for _ in range(100):
    log('accept', 'socket.accept() out of system resource')
  now[0] = 61.0
  log('accept', 'socket.accept() out of system resource')
  log('other', 'something else')
  assert lines == ['socket.accept() out of system resource',
                   'socket.accept() out of system resource (and 99 more like it in the last '
                   '60 s)', 'something else']


@pytest.mark.slow
def test_stray_unicode_digit_directory_does_not_stop_version_polling(server, exports):
  s = server()
  (s.base / '\u00b2').mkdir()
  server_helpers.publish(exports['alexnet_2'], s.base, 2)
  server_helpers.wait_for_version(s, '2')


@pytest.mark.slow
def test_half_copied_version_is_retried_and_a_deleted_one_unloaded(server, exports):
  s = server()
  partial = s.base / '2'
  partial.mkdir()
  shutil.copy(os.path.join(exports['alexnet_2'], 'saved_model.pb'), str(partial))
  deadline = time.monotonic() + 60
  while 'cannot load version 2' not in ''.join(s.output) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert 'cannot load version 2' in ''.join(s.output)
  assert s.request('GET', '/v1/models/mnist')[1]['model_version_status'][0]['version'] == '1'
  for name in os.listdir(exports['alexnet_2']):
    source = os.path.join(exports['alexnet_2'], name)
    if os.path.isdir(source):
      shutil.copytree(source, str(partial / name))
  server_helpers.wait_for_version(s, '2')
  shutil.rmtree(str(partial))
  server_helpers.wait_for_version(s, '1')
  assert 'retiring version 2' in ''.join(s.output)
  shutil.rmtree(str(s.base / '1'))
  deadline = time.monotonic() + 60
  while s.request('GET', '/v1/models/mnist')[0] != 404 and time.monotonic() < deadline:
    time.sleep(0.1)
  status, answer = s.request('GET', '/v1/models/mnist')
  assert (status, answer['error']) == (404, 'Could not find any versions of model mnist')
