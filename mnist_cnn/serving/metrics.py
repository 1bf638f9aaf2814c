"""Prometheus metrics at TF Serving's path and names, when --monitoring_config_file enables them.

The file is TF Serving's MonitoringConfig in text format:

  prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }

and the metrics are served on the REST port at that path (the default one above), in
Prometheus's text format 0.0.4. TF Serving's names where it has the metric, so its dashboards
read ours:

  :tensorflow:serving:request_count{model_name, status}          counter
  :tensorflow:serving:request_latency{model_name, API, entrypoint}  histogram, microseconds,
                                                                  TF Serving's buckets
  :tensorflow:cc:saved_model:load_attempt_count{model_path, status}  counter (success, fail)
  :tensorflow:cc:saved_model:load_latency{model_path}            counter, microseconds in all

and this server's own where it has none:

  :mnist_cnn:serving:requests{model_name, API, entrypoint, status}  counter
  :mnist_cnn:serving:loaded_versions{model_name}   gauge: versions in memory, retiring included
  process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
  process_start_time_seconds                       the Prometheus client libraries' names

Statuses are TF Serving's error codes (OK, INVALID_ARGUMENT, NOT_FOUND...), from the HTTP
status answered. Labels stay bounded over a server's months: a request for a model this server
does not serve counts under model_name="" (each made-up name would otherwise be a series
kept forever), and model_path is the model's base path, not each version's directory.
"""

import bisect
import os
import threading
import time

from mnist_cnn.serving import text_proto

DEFAULT_PATH = '/monitoring/prometheus/metrics'
CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'
# TF Serving's request-latency buckets: exponential from 10 us by 1.8, 33 of them (to ~2.4e9 us).
LATENCY_BUCKETS_US = tuple(float('%.6g' % (10.0 * 1.8 ** i)) for i in range(33))
# The error code TF Serving reports for what this server answers with each HTTP status.
STATUS_CODES = {200: 'OK', 400: 'INVALID_ARGUMENT', 404: 'NOT_FOUND', 405: 'UNIMPLEMENTED',
                408: 'DEADLINE_EXCEEDED', 413: 'RESOURCE_EXHAUSTED', 429: 'RESOURCE_EXHAUSTED',
                500: 'INTERNAL', 503: 'UNAVAILABLE', 504: 'DEADLINE_EXCEEDED'}
_START_TIME = time.time()


def status_code(status):
  """TF Serving's error code name for an HTTP status (gRPC answers give the name itself)."""
  if isinstance(status, str):
    return status
  return STATUS_CODES.get(status, 'UNKNOWN')


def read_config(path):
  """The metrics path --monitoring_config_file enables (None: metrics off).

  Raises:
    ValueError: the file cannot be read or is not a MonitoringConfig (one line, naming it).
  """
  try:
    with open(path) as f:
      message = text_proto.parse(f.read())
  except OSError as e:
    raise ValueError('--monitoring_config_file %s cannot be read: %s' % (
        path, e.strerror or e)) from None
  except text_proto.TextProtoError as e:
    raise ValueError('--monitoring_config_file %s: %s' % (path, e)) from None
  where = '--monitoring_config_file %s' % path
  try:
    text_proto.check_fields(message, {'prometheus_config'}, where)
    prometheus = text_proto.single(message, 'prometheus_config', {}, dict, where)
    inner = where + ': prometheus_config'
    text_proto.check_fields(prometheus, {'enable', 'path'}, inner)
    enable = text_proto.single(prometheus, 'enable', False, bool, inner)
    path_value = text_proto.single(prometheus, 'path', '', str, inner) or DEFAULT_PATH
  except text_proto.TextProtoError as e:
    raise ValueError(str(e)) from None
  if not path_value.startswith('/') or path_value.startswith('/v1/'):
    raise ValueError('%s: path must start with / and not /v1/, not %r' % (where, path_value))
  return path_value if enable else None


def _labels(names, values):
  return ','.join('%s="%s"' % (name, str(value).replace('\\', '\\\\').replace('"', '\\"')
                                .replace('\n', '\\n')) for name, value in zip(names, values))


def _number(value):
  if value == float('inf'):
    return '+Inf'
  return repr(float(value)) if isinstance(value, float) else str(value)


class Metrics(object):
  """The server's counters and histograms, safe to update from any thread."""

  def __init__(self):
    self._lock = threading.Lock()
    self._request_count = {}  # (model_name, status) -> n
    self._requests = {}  # (model_name, API, entrypoint, status) -> n
    self._latency = {}  # (model_name, API, entrypoint) -> [bucket counts..., sum]
    self._loads = {}  # (model_path, status) -> n
    self._load_latency = {}  # model_path -> microseconds
    self._gauges = []  # (name, help, fn() -> {labels tuple: value}, label names)

  def request(self, model_name, api, entrypoint, status, seconds):
    """Counts one request; status is the HTTP status answered or a gRPC code's name."""
    status = status_code(status)
    micros = seconds * 1e6
    with self._lock:
      key = (model_name, status)
      self._request_count[key] = self._request_count.get(key, 0) + 1
      key = (model_name, api, entrypoint, status)
      self._requests[key] = self._requests.get(key, 0) + 1
      counts = self._latency.setdefault((model_name, api, entrypoint),
                                        [0] * (len(LATENCY_BUCKETS_US) + 1) + [0.0])
      counts[bisect.bisect_left(LATENCY_BUCKETS_US, micros)] += 1
      counts[-1] += micros

  def load(self, model_path, succeeded, seconds):
    with self._lock:
      key = (model_path, 'success' if succeeded else 'fail')
      self._loads[key] = self._loads.get(key, 0) + 1
      self._load_latency[model_path] = self._load_latency.get(model_path, 0) + int(seconds * 1e6)

  def gauge(self, name, help_text, label_names, values_fn):
    """Adds a gauge read when the metrics are rendered: values_fn() -> {labels: value}."""
    self._gauges.append((name, help_text, tuple(label_names), values_fn))

  def render(self):
    """The metrics in Prometheus's text format."""
    with self._lock:
      request_count, requests = dict(self._request_count), dict(self._requests)
      latency = {key: list(value) for key, value in self._latency.items()}
      loads, load_latency = dict(self._loads), dict(self._load_latency)
    out = []
    _family(out, ':tensorflow:serving:request_count', 'counter',
            'The total number of requests.', ('model_name', 'status'), request_count)
    _histogram(out, ':tensorflow:serving:request_latency',
               'Distribution of wall time (in microseconds) for requests.',
               ('model_name', 'API', 'entrypoint'), latency)
    _family(out, ':tensorflow:cc:saved_model:load_attempt_count', 'counter',
            'The number of times a SavedModel was requested to be loaded.',
            ('model_path', 'status'), loads)
    _family(out, ':tensorflow:cc:saved_model:load_latency', 'counter',
            'Latency in microseconds for SavedModels that were successfully loaded.',
            ('model_path',), {(path,): value for path, value in load_latency.items()})
    _family(out, ':mnist_cnn:serving:requests', 'counter',
            'Requests answered, by model, API, entry point and status.',
            ('model_name', 'API', 'entrypoint', 'status'), requests)
    for name, help_text, label_names, values_fn in self._gauges:
      _family(out, name, 'gauge', help_text, label_names, values_fn())
    for name, help_text, value in _process():
      _family(out, name, 'gauge', help_text, (), {(): value})
    return ''.join(out)


def _family(out, name, kind, help_text, label_names, values):
  out.append('# HELP %s %s\n# TYPE %s %s\n' % (name, help_text, name, kind))
  for labels, value in sorted(values.items()):
    labels = _labels(label_names, labels)
    out.append('%s%s %s\n' % (name, '{%s}' % labels if labels else '', _number(value)))


def _histogram(out, name, help_text, label_names, values):
  out.append('# HELP %s %s\n# TYPE %s histogram\n' % (name, help_text, name))
  for labels, counts in sorted(values.items()):
    prefix = _labels(label_names, labels)
    total = 0
    for bound, count in zip(LATENCY_BUCKETS_US + (float('inf'),), counts[:-1]):
      total += count
      out.append('%s_bucket{%s,le="%s"} %d\n' % (name, prefix, _number(bound), total))
    out.append('%s_sum{%s} %s\n%s_count{%s} %d\n' % (name, prefix, _number(counts[-1]), name,
                                                     prefix, total))


def _process():
  """(name, help, value) of this process: memory, open files, start time (Linux /proc)."""
  page = os.sysconf('SC_PAGE_SIZE')
  facts = [('process_start_time_seconds', 'Start time of the process since the epoch.',
            _START_TIME)]
  try:
    with open('/proc/self/statm') as f:
      virtual, resident = (int(v) * page for v in f.read().split()[:2])
    facts += [('process_resident_memory_bytes', 'Resident memory size in bytes.', resident),
              ('process_virtual_memory_bytes', 'Virtual memory size in bytes.', virtual),
              ('process_open_fds', 'Number of open file descriptors.',
               len(os.listdir('/proc/self/fd')))]
  except OSError:
    pass
  return facts
