"""The REST server over real HTTP on 127.0.0.1 and the predict CLI.

Models are tiny and trained for a few steps; the server runs as its own process, as a user
starts it."""

import asyncio
import concurrent.futures
import http.client
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.serving import batching
from mnist_cnn.serving import models
from tests import server_helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
_ONE_IMAGE = np.zeros((28, 28, 1)).tolist()


@pytest.fixture(scope='module')
def read_only_server(exports, tmp_path_factory):
  """One AlexNet server for the tests that only send requests and check the answers."""
  base = tmp_path_factory.mktemp('read_only_models')
  server_helpers.publish(exports['alexnet'], base, 1)
  one = server_helpers.Server(base)
  yield one
  one.stop()


@pytest.mark.parametrize('model', ['alexnet', pytest.param('resnet', marks=pytest.mark.slow),
                                   pytest.param('googlenet', marks=pytest.mark.slow)])
def test_rest_predictions_equal_in_process_ones(exports, tmp_path, model):
  base = tmp_path / 'models'
  base.mkdir()
  server_helpers.publish(exports[model], base, 7)
  server = server_helpers.Server(base, '--max_batch_size=1')
  try:
    images = server_helpers.images(3, seed=4)
    want = server_helpers.in_process(exports[model], 'serving_default', {'images': images})
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
    pngs = [server_helpers.png(seed) for seed in range(3)]
    want_png = server_helpers.in_process(exports[model], server_helpers.BYTES_SIGNATURE,
                           {'image_bytes': np.array(pngs, dtype=object)})
    status, by_png = server.predict({'signature_name': server_helpers.BYTES_SIGNATURE,
                                     'instances': [server_helpers.b64(p) for p in pngs]})
    assert status == 200, by_png
    np.testing.assert_allclose([r['probabilities'] for r in by_png['predictions']],
                               want_png['probabilities'], rtol=1e-5, atol=1e-6)
    status, named = server.predict({'signature_name': server_helpers.BYTES_SIGNATURE,
                                    'instances': [{'image_bytes': server_helpers.b64(p)} for p in pngs]})
    assert status == 200 and named == by_png
  finally:
    assert server.stop() == 0


def test_status_and_metadata_are_tf_serving_shaped(read_only_server):
  status, body = read_only_server.request('GET', '/v1/models/mnist')
  assert status == 200
  assert body == {'model_version_status': [{
      'version': '1', 'state': 'AVAILABLE', 'status': {'error_code': 'OK', 'error_message': ''}}]}
  assert read_only_server.request('GET', '/v1/models/mnist/versions/1') == (200, body)
  status, metadata = read_only_server.request('GET', '/v1/models/mnist/versions/1/metadata')
  assert status == 200
  assert metadata['model_spec'] == {'name': 'mnist', 'signature_name': '', 'version': '1'}
  signature_defs = metadata['metadata']['signature_def']['signature_def']
  assert sorted(signature_defs) == ['image_bytes:predict', 'image_bytes:serving_default',
                                    'predict', 'serving_default']
  default = signature_defs['serving_default']
  assert default['method_name'] == 'tensorflow/serving/predict'
  assert default['inputs']['images']['dtype'] == 'DT_FLOAT'
  assert default['outputs']['classes']['dtype'] == 'DT_INT64'
  assert default['outputs']['probabilities']['tensor_shape']['dim'][1]['size'] == '10'
  assert signature_defs['image_bytes:serving_default']['inputs']['image_bytes']['dtype'] == (
      'DT_STRING')


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
    ('POST', '/v1/models/mnist:predict', {'instances': [server_helpers.b64(b'x')]}, 400,
     '{"b64":"eA=="} is not of expected type: float32'),
    ('POST', '/v1/models/mnist:predict', {'signature_name': server_helpers.BYTES_SIGNATURE,
                                          'instances': [server_helpers.b64(b'not an image')]},
     400, 'Unknown image file format'),
    ('POST', '/v1/models/mnist:predict', {'signature_name': server_helpers.BYTES_SIGNATURE,
                                          'instances': [{'b64': '%%%'}]}, 400, 'valid base64'),
    ('POST', '/v1/models/mnist:predict', {'signature_name': server_helpers.BYTES_SIGNATURE,
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
def test_bad_requests_get_tf_serving_errors(read_only_server, method, path, body, status,
                                            message):
  got_status, got = read_only_server.request(method, path, body)
  assert got_status == status, got
  assert list(got) == ['error'] and message in got['error'], got
  assert read_only_server.request('GET', '/v1/models/mnist')[0] == 200


def test_body_over_the_limit_gets_413_and_the_server_goes_on(exports, serve_dir):
  server_helpers.publish(exports['alexnet'], serve_dir, 1)
  server = server_helpers.Server(serve_dir, '--max_request_bytes=20000')
  try:
    big = {'instances': server_helpers.images(4).tolist()}  # ~60 kB of JSON
    status, body = server.predict(big)
    assert status == 413 and 'larger than the limit of 20000 bytes' in body['error']
    status, body = server.predict({'instances': server_helpers.images(1).tolist()})
    assert status == 200 and len(body['predictions']) == 1
  finally:
    assert server.stop() == 0


@pytest.mark.slow
def test_new_version_is_picked_up_while_requests_keep_succeeding(exports, serve_dir):
  server = server_helpers.Server(serve_dir)
  try:
    status, body = server.request('GET', '/v1/models/mnist')
    # Nothing to serve yet: TF Serving's GetModelStatus words it so.
    assert (status, body['error']) == (404, 'Could not find any versions of model mnist')
    (serve_dir / '5').mkdir()  # an integer directory without a SavedModel is no version
    server_helpers.publish(exports['alexnet'], serve_dir, 3)
    server_helpers.wait_for_version(server, '3')
    images = server_helpers.images(4, seed=9)
    want = {version: server_helpers.in_process(exports[name], 'serving_default', {'images': images})
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
    server_helpers.publish(exports['alexnet_2'], serve_dir, 8)
    server_helpers.wait_for_version(server, '8')
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


@pytest.mark.slow
def test_sixteen_clients_mixed_valid_and_invalid_requests(exports, alexnet_server):
  images = server_helpers.images(32, seed=3)
  want = server_helpers.in_process(exports['alexnet'], 'serving_default', {'images': images})['classes']
  # One instance holding two images' floats: answered as two predictions, it used to hand its
  # second one to another client of the same merged batch.
  two_images = {'instances': [images[0].ravel().tolist() + images[1].ravel().tolist()]}
  invalid = [
      '{"instances": [',
      {'instances': [[0.0] * 5]},
      {'signature_name': server_helpers.BYTES_SIGNATURE, 'instances': [server_helpers.b64(b'junk')]},
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
       '--port=0', '--rest_api_port=0'], capture_output=True, text=True, env=ENV, cwd=REPO,
      timeout=120)
  assert result.returncode == 1
  assert 'is not a directory' in result.stderr


def test_batcher_merges_concurrent_requests_and_isolates_a_bad_one(exports):
  loaded = models.LoadedVersion(1, exports['alexnet'])
  images = server_helpers.images(12, seed=5)
  want = loaded.run(loaded.signatures['serving_default'], {'images': images})
  signature = loaded.signatures[server_helpers.BYTES_SIGNATURE]
  pngs = [server_helpers.png(seed) for seed in range(6)]
  want_png = loaded.run(signature, {'image_bytes': np.array(pngs, dtype=object)})

  async def scenario():
    executor = concurrent.futures.ThreadPoolExecutor(2)
    batcher = batching.Batcher(executor, max_batch_size=8, batch_timeout_s=0.05,
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
  assert isinstance(png_results[6], models.ServingError) and png_results[6].status == 400


def test_predict_cli_classifies_image_files(exports, tmp_path):
  grey = tmp_path / 'grey.png'
  colour = tmp_path / 'colour.png'
  photo = tmp_path / 'photo.jpg'
  grey.write_bytes(server_helpers.png(1))
  colour.write_bytes(server_helpers.png(2, shape=(56, 40, 3)))
  photo.write_bytes(tf.io.encode_jpeg(
      np.random.RandomState(3).randint(0, 256, (30, 30, 3)).astype(np.uint8)).numpy())
  files = [grey, colour, photo]
  want = server_helpers.in_process(exports['alexnet'], server_helpers.BYTES_SIGNATURE, {'image_bytes': np.array(
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


@pytest.mark.slow
def test_predict_cli_reports_files_that_are_not_images(exports, tmp_path):
  text = tmp_path / 'notes.txt'
  text.write_text('not an image')
  good = tmp_path / 'digit.png'
  good.write_bytes(server_helpers.png(4))
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.predict', '--export_dir=' + exports['alexnet'],
       str(text), str(good), str(tmp_path / 'missing.png')],
      capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
  assert result.returncode == 1
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith('%s: error: not a PNG/JPEG/GIF/BMP image' % text)
  assert lines[1].startswith('%s: class ' % good)
  assert lines[2].startswith('%s: error: cannot read' % (tmp_path / 'missing.png'))
