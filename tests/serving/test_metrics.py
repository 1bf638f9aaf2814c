"""Prometheus metrics at TF Serving's path and names (--monitoring_config_file), and the text
format of TF Serving's configuration files they are enabled by."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from mnist_cnn.serving import metrics
from mnist_cnn.serving import text_proto
from tests import server_helpers

# One sample line of the text format 0.0.4: name, optional {labels}, value.
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? '
                     r'(?P<value>[-+]?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|\+Inf|NaN))$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_exposition(text):
  """{(name, frozenset of label pairs): value}, checking every line's syntax and that every
  sample's family was declared with # TYPE first."""
  samples, declared = {}, set()
  for line in text.splitlines():
    if line.startswith('# TYPE '):
      declared.add(line.split()[2])
      continue
    if line.startswith('# HELP ') or not line:
      continue
    match = _SAMPLE.match(line)
    assert match, 'not a sample line: %r' % line
    labels = _LABEL.findall(match.group('labels') or '')
    assert ','.join('%s="%s"' % pair for pair in labels) == (match.group('labels') or '')
    name = match.group('name')
    assert re.sub(r'_(bucket|sum|count)$', '', name) in declared or name in declared, name
    samples[(name, frozenset(labels))] = float(match.group('value'))
  return samples


def value(samples, name, **labels):
  return samples.get((name, frozenset(labels.items())), 0.0)


def test_text_proto_reads_tf_serving_config_syntax():
  message = text_proto.parse('''
      # a comment
      model_config_list {
        config { name: 'a' base_path: "/m/a" model_platform: "tensorflow"
                 model_version_policy { specific { versions: 1, versions: 2; } } }
        config: < name: "b\\"q" base_path: '/m/' 'b' >
      }
      prometheus_config { enable: true path: "/p" ratio: -1.5e3 n: 7 }''')
  configs = message['model_config_list'][0]['config']
  assert [c['name'] for c in configs] == [['a'], ['b"q']]
  assert configs[1]['base_path'] == ['/m/b']  # adjacent strings join
  assert configs[0]['model_version_policy'][0]['specific'][0]['versions'] == [1, 2]
  prometheus = message['prometheus_config'][0]
  assert prometheus == {'enable': [True], 'path': ['/p'], 'ratio': [-1500.0], 'n': [7]}


@pytest.mark.parametrize('text, message', [
    ('a { b: 1', "ends inside a message: '}' is missing"),
    ('a: 1\nb: }', 'line 2: field b has no value'),
    ('a: 1\n\n  = 2', "line 3: unexpected '= 2'"),
    ('a: "open', 'line 1: unexpected'),
    ('{ a: 1 }', 'line 1: expected a field name'),
])
def test_text_proto_errors_name_the_line(text, message):
  with pytest.raises(text_proto.TextProtoError, match=re.escape(message)):
    text_proto.parse(text)


def _config(tmp_path, text):
  path = tmp_path / 'monitoring.config'
  path.write_text(text)
  return str(path)


def test_the_monitoring_config_is_tf_serving_s(tmp_path):
  read = lambda text: metrics.read_config(_config(tmp_path, text))
  assert read('prometheus_config { enable: true }') == metrics.DEFAULT_PATH
  assert read('prometheus_config { enable: true, path: "/m" }') == '/m'
  assert read('prometheus_config { enable: false path: "/m" }') is None
  assert read('') is None
  for text, message in [('prometheus_config { enable: true path: "m" }', 'must start with /'),
                        ('prometheus_config { enabled: true }', 'unknown field enabled'),
                        ('prometheus { enable: true }', 'unknown field prometheus'),
                        ('prometheus_config { enable: 1 }', 'wrong kind'),
                        ('prometheus_config { enable: true', 'is missing')]:
    with pytest.raises(ValueError, match=message):
      read(text)
  with pytest.raises(ValueError, match='cannot be read'):
    metrics.read_config(str(tmp_path / 'missing'))


def test_latency_lands_in_tf_serving_s_buckets_and_labels_are_escaped():
  collected = metrics.Metrics()
  collected.request('m"x', 'predict', 'REST', 200, 25e-6)  # 25 us: the (18, 32.4] bucket
  collected.request('m"x', 'predict', 'REST', 503, 1e4)  # beyond the last bound
  samples = parse_exposition(collected.render())
  labels = {'model_name': 'm\\"x', 'API': 'predict', 'entrypoint': 'REST'}
  bucket = ':tensorflow:serving:request_latency_bucket'
  assert value(samples, bucket, le='18.0', **labels) == 0
  assert value(samples, bucket, le='32.4', **labels) == 1
  assert value(samples, bucket, le='+Inf', **labels) == 2
  assert value(samples, ':tensorflow:serving:request_count', model_name='m\\"x',
               status='UNAVAILABLE') == 1
  assert value(samples, ':tensorflow:serving:request_latency_sum', **labels) == pytest.approx(
      25 + 1e10)


def _get(server, path):
  """(status, body text) of a GET."""
  return server.raw_get(path)


def _wait_for_output(server, text, timeout=60):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if text in ''.join(server.output):
      return
    time.sleep(0.1)
  raise AssertionError('%r never logged:\n%s' % (text, ''.join(server.output)))


@pytest.fixture(scope='module')
def monitored(exports, tmp_path_factory):
  base = tmp_path_factory.mktemp('monitored') / 'models'
  base.mkdir()
  server_helpers.publish(exports['alexnet'], base, 1)
  config = tmp_path_factory.mktemp('config') / 'monitoring.config'
  config.write_text('prometheus_config {\n  enable: true,\n  path: "/metrics/here"\n}\n')
  server = server_helpers.Server(base, '--monitoring_config_file=%s' % config)
  yield server, base
  server.stop()


def test_requests_loads_versions_and_memory_are_counted(monitored):
  server, base = monitored
  body = json.dumps({'instances': server_helpers.images(2).tolist()})
  assert server.predict(body)[0] == 200
  assert server.predict(body)[0] == 200
  assert server.predict('{"instances": [')[0] == 400
  assert _get(server, '/v1/models/mnist/metadata')[0] == 200
  for index in range(20):  # made-up names count under one empty name
    assert _get(server, '/v1/models/nope%d' % index)[0] == 404
  assert _get(server, '/not/a/model')[0] == 404  # not a model's path: not counted
  status, text = _get(server, '/metrics/here')
  assert status == 200
  samples = parse_exposition(text)
  count = ':tensorflow:serving:request_count'
  assert value(samples, count, model_name='mnist', status='OK') == 3
  assert value(samples, count, model_name='mnist', status='INVALID_ARGUMENT') == 1
  assert value(samples, count, model_name='', status='NOT_FOUND') == 20
  assert not [key for key in samples if 'nope' in str(key)]
  predict = {'model_name': 'mnist', 'API': 'predict', 'entrypoint': 'REST'}
  latency = ':tensorflow:serving:request_latency'
  assert value(samples, latency + '_count', **predict) == 3
  buckets = sorted((float(dict(key[1])['le']), v) for key, v in samples.items()
                   if key[0] == latency + '_bucket' and dict(key[1])['API'] == 'predict')
  assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
  assert buckets[-1] == (float('inf'), 3)
  assert value(samples, ':mnist_cnn:serving:requests', status='OK', **predict) == 2
  assert value(samples, ':tensorflow:cc:saved_model:load_attempt_count', model_path=str(base),
               status='success') == 1
  assert value(samples, ':tensorflow:cc:saved_model:load_latency', model_path=str(base)) > 0
  assert value(samples, ':mnist_cnn:serving:loaded_versions', model_name='mnist') == 1
  assert value(samples, 'process_resident_memory_bytes') > 50e6
  assert _get(server, '/monitoring/prometheus/metrics')[0] == 404  # the configured path only


def test_a_version_that_fails_to_load_is_counted(monitored):
  server, base = monitored
  broken = base / '5'
  broken.mkdir()
  (broken / 'saved_model.pb').write_bytes(b'not a SavedModel')
  try:
    _wait_for_output(server, 'cannot load version 5')
    samples = parse_exposition(_get(server, '/metrics/here')[1])
    assert value(samples, ':tensorflow:cc:saved_model:load_attempt_count',
                 model_path=str(base), status='fail') >= 1
    assert value(samples, ':mnist_cnn:serving:loaded_versions', model_name='mnist') == 1
  finally:
    for name in os.listdir(str(broken)):
      os.remove(str(broken / name))
    broken.rmdir()


def test_metrics_are_off_without_the_config(exports, tmp_path):
  base = tmp_path / 'models'
  base.mkdir()
  server_helpers.publish(exports['alexnet'], base, 1)
  server = server_helpers.Server(base)
  try:
    assert _get(server, metrics.DEFAULT_PATH)[0] == 404
  finally:
    server.stop()


def test_a_bad_config_stops_the_server_with_one_line(tmp_path):
  (tmp_path / 'models').mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.serve', '--model_base_path=%s' % (tmp_path / 'models'),
       '--monitoring_config_file=%s' % _config(tmp_path, 'prometheus_config { enable: yes }')],
      capture_output=True, text=True, env=server_helpers.ENV, cwd=server_helpers.REPO,
      timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --monitoring_config_file %s: prometheus_config: enable has a value of the wrong '
      "kind: 'yes'" % (tmp_path / 'monitoring.config'))
