"""The REST server over real HTTP on 127.0.0.1, the predict CLI, and the exports they serve.

Models are tiny and trained for a few steps; the server runs as its own process, as a user
starts it.
"""

import asyncio
import base64
import concurrent.futures
import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import serving
from official.utils import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
BYTES_SIGNATURE = export.alternative_signature(export.IMAGE_BYTES_INPUT)


def _images(count, seed=0, shape=(28, 28, 1)):
  return np.random.RandomState(seed).rand(count, *shape).astype(np.float32)


def _png(seed, shape=(28, 28, 1)):
  pixels = np.random.RandomState(seed).randint(0, 256, size=shape).astype(np.uint8)
  return tf.io.encode_png(pixels).numpy()


def _b64(data):
  return {'b64': base64.b64encode(data).decode('ascii')}


class Server(object):
  """`python -m mnist_cnn.serve` in a subprocess on a free port."""

  def __init__(self, base_path, *extra):
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'mnist_cnn.serve', '--model_base_path=' + str(base_path),
         '--port=0', '--file_system_poll_wait_seconds=0.2'] + list(extra),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO)
    self.lines = queue.Queue()
    self.output = []
    threading.Thread(target=self._read, daemon=True).start()
    self.port = None
    deadline = time.time() + 120
    while self.port is None and time.time() < deadline:
      try:
        line = self.lines.get(timeout=1)
      except queue.Empty:
        assert self.process.poll() is None, ''.join(self.output)
        continue
      match = re.search(r'REST API at http://127\.0\.0\.1:(\d+)/', line)
      if match:
        self.port = int(match.group(1))
    assert self.port, ''.join(self.output)

  def _read(self):
    for line in self.process.stdout:
      self.output.append(line)
      self.lines.put(line)

  def request(self, method, path, body=None, connection=None):
    """Returns (status, parsed JSON body)."""
    own = connection is None
    connection = connection or http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
    try:
      if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
      connection.request(method, path, body=body)
      response = connection.getresponse()
      return response.status, json.loads(response.read())
    finally:
      if own:
        connection.close()

  def predict(self, body, path='/v1/models/mnist:predict', connection=None):
    return self.request('POST', path, body, connection)

  def stop(self):
    if self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM)
      self.process.wait(timeout=60)
    return self.process.returncode


@pytest.fixture
def serve_dir(tmp_path):
  """A model base path holding the AlexNet export as version 1, plus a non-version dir."""
  base = tmp_path / 'models'
  base.mkdir()
  (base / 'not-a-version').mkdir()
  return base


def _publish(source, base, version):
  """Copies an export in as a new version the way exports appear: whole, by a rename."""
  staging = base / ('.tmp-%d' % version)
  shutil.copytree(source, str(staging))
  os.rename(str(staging), str(base / str(version)))


@pytest.fixture
def alexnet_server(exports, serve_dir):
  _publish(exports['alexnet'], serve_dir, 1)
  server = Server(serve_dir)
  yield server
  server.stop()


def _in_process(version_dir, signature_name, feeds):
  loaded = serving.LoadedVersion(0, version_dir)
  try:
    return loaded.run(loaded.signatures[signature_name], feeds)
  finally:
    loaded.close_when_drained()


################################################################################
# Exports
################################################################################


@pytest.mark.parametrize('model', ['alexnet', 'resnet'])
def test_exports_have_both_signatures_with_the_same_outputs(exports, model):
  path = exports[model]
  assert os.path.basename(path).isdigit()
  assert sorted(os.listdir(path)) == ['assets.extra', 'saved_model.pb', 'variables']
  info = export.read_serving_info(path)
  assert info['compute_dtype'] == 'fp32'
  loaded = serving.LoadedVersion(0, path)
  try:
    default = loaded.signatures[export.DEFAULT_SIGNATURE]
    by_bytes = loaded.signatures[BYTES_SIGNATURE]
    assert list(default.inputs) == ['images'] and list(by_bytes.inputs) == ['image_bytes']
    for signature in (default, by_bytes):
      assert sorted(signature.outputs) == ['classes', 'probabilities']
    images = _images(3)
    from_floats = loaded.run(default, {'images': images})
    assert from_floats['classes'].dtype == np.int64
    assert from_floats['probabilities'].shape == (3, 10)
    assert from_floats['probabilities'].dtype == np.float32
    pngs = [tf.io.encode_png(tf.cast(tf.round(i * 255), tf.uint8)).numpy() for i in images]
    from_pngs = loaded.run(by_bytes, {'image_bytes': np.array(pngs, dtype=object)})
    np.testing.assert_allclose(from_pngs['probabilities'], from_floats['probabilities'],
                               atol=0.02)  # the PNGs round pixels to 1/255
    if model == 'alexnet':  # flat [N, 784] rows as well, as the report fed them
      flat = loaded.run(default, {'images': images.reshape(3, 784)})
      np.testing.assert_allclose(flat['probabilities'], from_floats['probabilities'], rtol=1e-6)
  finally:
    loaded.close_when_drained()


@pytest.mark.slow
def test_saved_model_cli_lists_and_runs_both_signatures(exports, tmp_path):
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  shown = subprocess.run([cli, 'show', '--dir', exports['alexnet'], '--all'], env=ENV,
                         capture_output=True, text=True, timeout=300)
  assert shown.returncode == 0, shown.stderr
  assert "signature_def['serving_default']" in shown.stdout
  assert "signature_def['image_bytes:serving_default']" in shown.stdout
  np.save(str(tmp_path / 'x.npy'), _images(2))
  ran = subprocess.run([cli, 'run', '--dir', exports['alexnet'], '--tag_set', 'serve',
                        '--signature_def', 'serving_default',
                        '--inputs', 'images=%s' % (tmp_path / 'x.npy')],
                       env=ENV, capture_output=True, text=True, timeout=300)
  assert ran.returncode == 0, ran.stderr
  assert 'probabilities' in ran.stdout and 'classes' in ran.stdout


################################################################################
# REST: predictions, status, metadata
################################################################################


@pytest.mark.parametrize('model', ['alexnet', 'resnet'])
def test_rest_predictions_equal_in_process_ones(exports, tmp_path, model):
  base = tmp_path / 'models'
  base.mkdir()
  _publish(exports[model], base, 7)
  server = Server(base, '--max_batch_size=1')
  try:
    images = _images(3, seed=4)
    want = _in_process(exports[model], 'serving_default', {'images': images})
    status, rows = server.predict({'instances': images.tolist()})
    assert status == 200, rows
    assert [r['classes'] for r in rows['predictions']] == want['classes'].tolist()
    np.testing.assert_allclose([r['probabilities'] for r in rows['predictions']],
                               want['probabilities'], rtol=1e-5, atol=1e-6)
    status, columns = server.predict({'inputs': {'images': images.tolist()}},
                                     path='/v1/models/mnist/versions/7:predict')
    assert status == 200, columns
    assert columns['outputs']['classes'] == want['classes'].tolist()
    np.testing.assert_allclose(columns['outputs']['probabilities'], want['probabilities'],
                               rtol=1e-5, atol=1e-6)
    pngs = [_png(seed) for seed in range(3)]
    want_png = _in_process(exports[model], BYTES_SIGNATURE,
                           {'image_bytes': np.array(pngs, dtype=object)})
    status, by_png = server.predict({'signature_name': BYTES_SIGNATURE,
                                     'instances': [_b64(p) for p in pngs]})
    assert status == 200, by_png
    np.testing.assert_allclose([r['probabilities'] for r in by_png['predictions']],
                               want_png['probabilities'], rtol=1e-5, atol=1e-6)
    status, named = server.predict({'signature_name': BYTES_SIGNATURE,
                                    'instances': [{'image_bytes': _b64(p)} for p in pngs]})
    assert status == 200 and named == by_png
  finally:
    assert server.stop() == 0


def test_status_and_metadata_are_tf_serving_shaped(alexnet_server):
  status, body = alexnet_server.request('GET', '/v1/models/mnist')
  assert status == 200
  assert body == {'model_version_status': [{
      'version': '1', 'state': 'AVAILABLE', 'status': {'error_code': 'OK', 'error_message': ''}}]}
  assert alexnet_server.request('GET', '/v1/models/mnist/versions/1') == (200, body)
  status, metadata = alexnet_server.request('GET', '/v1/models/mnist/versions/1/metadata')
  assert status == 200
  assert metadata['model_spec'] == {'name': 'mnist', 'signature_name': '', 'version': '1'}
  signature_defs = metadata['metadata']['signature_def']['signature_def']
  assert sorted(signature_defs) == ['image_bytes:serving_default', 'serving_default']
  default = signature_defs['serving_default']
  assert default['method_name'] == 'tensorflow/serving/predict'
  assert default['inputs']['images']['dtype'] == 'DT_FLOAT'
  assert default['outputs']['classes']['dtype'] == 'DT_INT64'
  assert default['outputs']['probabilities']['tensor_shape']['dim'][1]['size'] == '10'
  assert signature_defs['image_bytes:serving_default']['inputs']['image_bytes']['dtype'] == (
      'DT_STRING')


_ONE_IMAGE = np.zeros((28, 28, 1)).tolist()


@pytest.mark.parametrize('method, path, body, status, message', [
    ('POST', '/v1/models/mnist:predict', '{"instances": [1,', 400, 'JSON Parse error'),
    ('POST', '/v1/models/mnist:predict', '[1, 2]', 400, 'JSON object'),
    ('POST', '/v1/models/mnist:predict', {'instances': [_ONE_IMAGE], 'inputs': [_ONE_IMAGE]},
     400, 'both'),
    ('POST', '/v1/models/mnist:predict', {'signature_name': 'serving_default'}, 400,
     "Missing 'inputs' or 'instances'"),
    ('POST', '/v1/models/mnist:predict', {'instances': []}, 400, 'non-empty'),
    ('POST', '/v1/models/mnist:predict', {'instances': [[[1.0, 2.0], [3.0]]]}, 400,
     'not a float32 tensor'),
    ('POST', '/v1/models/mnist:predict', {'instances': [_ONE_IMAGE, [0.0] * 784]}, 400,
     'different shapes'),
    ('POST', '/v1/models/mnist:predict', {'instances': [[0.5] * 100]}, 400,
     'Input to reshape is a tensor with 100 values'),
    ('POST', '/v1/models/mnist:predict', {'instances': [['a'] * 784]}, 400,
     '"a" is not of expected type: float32'),
    ('POST', '/v1/models/mnist:predict', {'instances': [_b64(b'x')]}, 400,
     '{"b64":"eA=="} is not of expected type: float32'),
    ('POST', '/v1/models/mnist:predict', {'signature_name': BYTES_SIGNATURE,
                                          'instances': [_b64(b'not an image')]},
     400, 'Unknown image file format'),
    ('POST', '/v1/models/mnist:predict', {'signature_name': BYTES_SIGNATURE,
                                          'instances': [{'b64': '%%%'}]}, 400, 'valid base64'),
    ('POST', '/v1/models/mnist:predict', {'signature_name': BYTES_SIGNATURE,
                                          'instances': [['a', 'b']]}, 400,
     'from a tensor with shape [2]'),  # the graph decides, as in TF Serving
    ('POST', '/v1/models/mnist:predict', {'signature_name': 'nope', 'instances': [_ONE_IMAGE]},
     404, 'Serving signature name: "nope" not found'),
    ('POST', '/v1/models/other:predict', {'instances': [_ONE_IMAGE]}, 404,
     'Servable not found for request: Latest(other)'),
    ('POST', '/v1/models/mnist/versions/2:predict', {'instances': [_ONE_IMAGE]}, 404,
     'Servable not found for request: Specific(mnist, 2)'),
    ('GET', '/v1/models/mnist/versions/99/metadata', None, 404, 'Specific(mnist, 99)'),
    ('POST', '/v1/models/mnist:classify', {'instances': [_ONE_IMAGE]}, 400,
     'Expected classify signature method_name'),
    ('GET', '/v1/models/mnist:predict', None, 405, 'use POST'),
    ('POST', '/v1/models/mnist', '{}', 405, 'use GET'),
    ('GET', '/v2/models/mnist', None, 404, 'Malformed request'),
])
def test_bad_requests_get_tf_serving_errors(alexnet_server, method, path, body, status,
                                            message):
  got_status, got = alexnet_server.request(method, path, body)
  assert got_status == status, got
  assert list(got) == ['error'] and message in got['error'], got
  assert alexnet_server.request('GET', '/v1/models/mnist')[0] == 200


def test_body_over_the_limit_gets_413_and_the_server_goes_on(exports, serve_dir):
  _publish(exports['alexnet'], serve_dir, 1)
  server = Server(serve_dir, '--max_request_bytes=20000')
  try:
    big = {'instances': _images(4).tolist()}  # ~60 kB of JSON
    status, body = server.predict(big)
    assert status == 413 and 'larger than the limit of 20000 bytes' in body['error']
    status, body = server.predict({'instances': _images(1).tolist()})
    assert status == 200 and len(body['predictions']) == 1
  finally:
    assert server.stop() == 0


################################################################################
# Versions, load, shutdown
################################################################################


@pytest.mark.slow
def test_new_version_is_picked_up_while_requests_keep_succeeding(exports, serve_dir):
  server = Server(serve_dir)
  try:
    status, body = server.request('GET', '/v1/models/mnist')
    assert status == 404 and 'Servable not found' in body['error']  # nothing to serve yet
    (serve_dir / '5').mkdir()  # an integer directory without a SavedModel is no version
    _publish(exports['alexnet'], serve_dir, 3)
    _wait_for_version(server, '3')
    images = _images(4, seed=9)
    want = {version: _in_process(exports[name], 'serving_default', {'images': images})
            for version, name in (('3', 'alexnet'), ('8', 'alexnet_2'))}
    stop = threading.Event()
    answers = []

    def client():
      connection = http.client.HTTPConnection('127.0.0.1', server.port, timeout=60)
      while not stop.is_set():
        status, body = server.predict({'instances': images.tolist()}, connection=connection)
        answers.append((status, body))
      connection.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
      thread.start()
    time.sleep(1.0)
    _publish(exports['alexnet_2'], serve_dir, 8)
    _wait_for_version(server, '8')
    time.sleep(1.0)
    stop.set()
    for thread in threads:
      thread.join(timeout=60)
    assert answers and all(status == 200 for status, _ in answers), [
        a for a in answers if a[0] != 200][:3]
    seen = set()
    for _, body in answers:
      probabilities = np.array([r['probabilities'] for r in body['predictions']])
      matches = [v for v, w in want.items()
                 if np.allclose(probabilities, w['probabilities'], rtol=1e-5, atol=1e-6)]
      assert len(matches) == 1  # every answer is wholly one version's
      seen.add(matches[0])
    assert seen == {'3', '8'}
    assert '8' in server.request('GET', '/v1/models/mnist/versions/8')[1][
        'model_version_status'][0]['version']
    assert server.request('GET', '/v1/models/mnist/versions/3')[0] == 404
  finally:
    assert server.stop() == 0
  assert 'retiring version 3' in ''.join(server.output)


def _wait_for_version(server, version, timeout=60):
  deadline = time.time() + timeout
  while time.time() < deadline:
    status, body = server.request('GET', '/v1/models/mnist')
    if status == 200 and body['model_version_status'][0]['version'] == version:
      return
    time.sleep(0.1)
  raise AssertionError('version %s never served; log:\n%s' % (version, ''.join(server.output)))


@pytest.mark.slow
def test_sixteen_clients_mixed_valid_and_invalid_requests(exports, alexnet_server):
  images = _images(32, seed=3)
  want = _in_process(exports['alexnet'], 'serving_default', {'images': images})['classes']
  # One instance holding two images' floats: answered as two predictions, it used to hand its
  # second one to another client of the same merged batch.
  two_images = {'instances': [images[0].ravel().tolist() + images[1].ravel().tolist()]}
  invalid = [
      '{"instances": [',
      {'instances': [[0.0] * 5]},
      {'signature_name': BYTES_SIGNATURE, 'instances': [_b64(b'junk')]},
      {'signature_name': 'missing', 'instances': [_ONE_IMAGE]},
      two_images,
      {'instances': [[None] * 784]},
  ]

  def client(index):
    connection = http.client.HTTPConnection('127.0.0.1', alexnet_server.port, timeout=60)
    wrong = []
    for n in range(200):
      if n % 4 == 3:
        body = invalid[(index + n) % len(invalid)]
        status, answer = alexnet_server.predict(body, connection=connection)
        if status not in (400, 404) or 'error' not in answer or (
            body is two_images and 'must hold exactly one image of 28x28x1 values' not in
            answer['error']):
          wrong.append((status, answer))
      else:
        image = (index * 200 + n) % len(images)
        status, answer = alexnet_server.predict({'instances': [images[image].tolist()]},
                                                connection=connection)
        if status != 200 or answer['predictions'][0]['classes'] != want[image]:
          wrong.append((status, answer))
    connection.close()
    return wrong

  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    results = list(pool.map(client, range(16)))
  assert [w for wrong in results for w in wrong] == []
  assert alexnet_server.request('GET', '/v1/models/mnist')[0] == 200
  assert alexnet_server.process.poll() is None


def test_sigterm_stops_cleanly(alexnet_server):
  assert alexnet_server.request('GET', '/v1/models/mnist')[0] == 200
  assert alexnet_server.stop() == 0
  assert 'stopped' in ''.join(alexnet_server.output)


def test_missing_base_path_is_a_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.serve', '--model_base_path=%s' % (tmp_path / 'none'),
       '--port=0'], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
  assert result.returncode == 1
  assert 'is not a directory' in result.stderr


################################################################################
# Batching, in process
################################################################################


def test_batcher_merges_concurrent_requests_and_isolates_a_bad_one(exports):
  loaded = serving.LoadedVersion(1, exports['alexnet'])
  images = _images(12, seed=5)
  want = loaded.run(loaded.signatures['serving_default'], {'images': images})
  signature = loaded.signatures[BYTES_SIGNATURE]
  pngs = [_png(seed) for seed in range(6)]
  want_png = loaded.run(signature, {'image_bytes': np.array(pngs, dtype=object)})

  async def scenario():
    executor = concurrent.futures.ThreadPoolExecutor(2)
    batcher = serving.Batcher(executor, max_batch_size=8, batch_timeout_s=0.05,
                              num_batch_threads=1)
    float_calls = [batcher.run(loaded, loaded.signatures['serving_default'],
                               {'images': images[i:i + 1]}, 1) for i in range(12)]
    results = await asyncio.gather(*float_calls)
    calls_for_floats = batcher.calls
    feeds = [np.array([p], dtype=object) for p in pngs] + [np.array([b'bad'], dtype=object)]
    png_calls = [batcher.run(loaded, signature, {'image_bytes': f}, 1) for f in feeds]
    png_results = await asyncio.gather(*png_calls, return_exceptions=True)
    await batcher.close()
    executor.shutdown()
    return results, calls_for_floats, png_results

  results, calls, png_results = asyncio.run(scenario())
  loaded.close_when_drained()
  assert calls == 2  # 12 one-row requests in batches of at most 8
  np.testing.assert_allclose(np.concatenate([r['probabilities'] for r in results]),
                             want['probabilities'], rtol=1e-5, atol=1e-6)
  for result, expected in zip(png_results[:6], want_png['probabilities']):
    np.testing.assert_allclose(result['probabilities'][0], expected, rtol=1e-5, atol=1e-6)
  assert isinstance(png_results[6], serving.ServingError) and png_results[6].status == 400


################################################################################
# The predict CLI
################################################################################


def test_predict_cli_classifies_image_files(exports, tmp_path):
  grey = tmp_path / 'grey.png'
  colour = tmp_path / 'colour.png'
  photo = tmp_path / 'photo.jpg'
  grey.write_bytes(_png(1))
  colour.write_bytes(_png(2, shape=(56, 40, 3)))
  photo.write_bytes(tf.io.encode_jpeg(
      np.random.RandomState(3).randint(0, 256, (30, 30, 3)).astype(np.uint8)).numpy())
  files = [grey, colour, photo]
  want = _in_process(exports['alexnet'], BYTES_SIGNATURE, {'image_bytes': np.array(
      [f.read_bytes() for f in files], dtype=object)})
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.predict', '--export_dir=%s' %
       os.path.dirname(exports['alexnet'])] + [str(f) for f in files],
      capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 3
  for line, path, probabilities in zip(lines, files, want['probabilities']):
    best = int(np.argmax(probabilities))
    assert line.startswith('%s: class %d (%.4f); top 3: ' % (path, best, probabilities[best]))


def test_predict_cli_reports_files_that_are_not_images(exports, tmp_path):
  text = tmp_path / 'notes.txt'
  text.write_text('not an image')
  good = tmp_path / 'digit.png'
  good.write_bytes(_png(4))
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.predict', '--export_dir=' + exports['alexnet'],
       str(text), str(good), str(tmp_path / 'missing.png')],
      capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
  assert result.returncode == 1
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith('%s: error: not a PNG/JPEG/GIF/BMP image' % text)
  assert lines[1].startswith('%s: class ' % good)
  assert lines[2].startswith('%s: error: cannot read' % (tmp_path / 'missing.png'))


@pytest.mark.slow
def test_serving_benchmark_runs_in_smoke_mode(exports):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'serving.py'),
       '--export_dir=' + os.path.dirname(exports['alexnet']), '--rounds=1',
       '--latency_requests=5', '--clients=4', '--requests_per_client=3', '--seconds=0.3',
       '--large_batch=8'], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split('|')[1].strip() for line in result.stdout.splitlines()
          if line.startswith('| ') and not line.startswith('| path')]
  assert rows == ['in process (Session on the export)', 'in process, larger batches',
                  'REST server, 1 client', 'REST server, 4 clients, batching',
                  'REST server, 4 clients, no batching']
  assert re.search(r'in-process throughput in batches of 4: \d+\.\d\d', result.stdout)
