"""Serves exports over TensorFlow Serving's gRPC and REST APIs, without TF Serving; its
command line is tensorflow_model_server's.

  python -m mnist_cnn.serve --model_base_path=EXPORT_DIR [--model_name=mnist]
      [--port=8500 (gRPC)] [--rest_api_port=8501]
  python -m mnist_cnn.serve --model_config_file=models.config   # several models, versions, labels

Serves the highest integer version under --model_base_path (or what each model's version
policy in --model_config_file names) and switches to newer ones when they appear (polled every
--file_system_poll_wait_seconds), letting requests on the old version finish first; a retired
version's memory is freed once its last request ends. gRPC: tensorflow.serving's
PredictionService and ModelService (grpc_api.py). REST: endpoints, request and response
bodies and error statuses are TF Serving's (see api_rest.md in tensorflow/serving), so the
same client code works against either:

  GET  /v1/models/{name}[/versions/{v} | /labels/{l}]              version status
  GET  /v1/models/{name}[/versions/{v} | /labels/{l}]/metadata     signature defs
  POST /v1/models/{name}[/versions/{v} | /labels/{l}]:predict      {"instances": [...]} ...
  GET  /monitoring/prometheus/metrics                with --monitoring_config_file enabling it

Requests in flight together are merged into one model call (--max_batch_size,
--batch_timeout_micros, --num_batch_threads, as TF Serving's batching parameters). Binds
127.0.0.1 unless --host says otherwise; SIGTERM or Ctrl-C stops it after the requests in
flight.
"""

import asyncio
import concurrent.futures
import os
import signal
import sys

from absl import app
from absl import flags
from aiohttp import web
import tensorflow as tf

from mnist_cnn.serving import batching
from mnist_cnn.serving import grpc_api
from mnist_cnn.serving import inference_graph
from mnist_cnn.serving import json_tensors
from mnist_cnn.serving import memory
from mnist_cnn.serving import metrics
from mnist_cnn.serving import model_config
from mnist_cnn.serving import models
from mnist_cnn.serving import rest_api
from mnist_cnn.serving import served_models


def define_serve_flags(flag_values=flags.FLAGS):
  """The server's flags: tensorflow_model_server's names with its meanings, and ours."""
  fv = {'flag_values': flag_values}
  _define_model_flags(fv)
  _define_limit_flags(fv)
  _register_validators(fv)


def _define_model_flags(fv):
  flags.DEFINE_string('model_base_path', None,
                      'Directory of integer version subdirectories, each a SavedModel (one '
                      'model; --model_config_file for several).', **fv)
  flags.DEFINE_string('model_name', 'mnist', 'The {name} in /v1/models/{name}.', **fv)
  flags.DEFINE_string('model_config_file', None,
                      'TF Serving\'s ModelServerConfig in text format: several models, version '
                      'policies and labels (mnist_cnn/serving/model_config.py).', **fv)
  flags.DEFINE_integer('model_config_file_poll_wait_seconds', 0,
                       'Reread --model_config_file this often and apply it when it changed; 0: '
                       'read it once (TF Serving\'s default).', **fv)
  flags.DEFINE_boolean('allow_version_labels_for_unavailable_models', False,
                       'Let a label name a version that is not served (yet); by default such a '
                       'configuration is refused, as in TF Serving.', **fv)


def _define_limit_flags(fv):
  flags.DEFINE_string('host', '127.0.0.1', 'Address to bind; 0.0.0.0 for every interface.',
                      **fv)
  flags.DEFINE_integer('port', 8500, 'gRPC port, as TF Serving\'s --port (before 0.4.0 this '
                       'was the REST port); 0 picks a free one.', **fv)
  flags.DEFINE_integer('rest_api_port', 8501, 'REST port; 0 picks a free one.', **fv)
  flags.DEFINE_integer('max_batch_size', 64,
                       'Most rows merged into one model call; 1 turns batching off.', **fv)
  flags.DEFINE_integer('batch_timeout_micros', 0,
                       'Longest a batch waits for requests already arriving (read or parsed) '
                       'after its first; with none arriving it goes at once. 0: it goes to the '
                       'first free model call at once, and requests that arrive while the '
                       'calls are busy wait together for the next one.', **fv)
  flags.DEFINE_boolean('enable_batching', True,
                       'Merge requests in flight into one model call; false: each request is '
                       'its own call. (TF Serving\'s default is false; merging never hands '
                       'a request another\'s rows, so it is on here.)', **fv)
  flags.DEFINE_string('batching_parameters_file', None,
                      'TF Serving\'s BatchingParameters in text format; its max_batch_size, '
                      'batch_timeout_micros and num_batch_threads override the flags of '
                      'those names.', **fv)
  flags.DEFINE_integer('num_batch_threads', 1,
                       'Merged model calls that may run at once. One call already uses every '
                       'core; two at once served 7-10% fewer images/s on 2 cores.', **fv)
  flags.DEFINE_integer('max_request_bytes', 16 * 1024 * 1024,
                       'Largest request body accepted; larger ones get 413.', **fv)
  flags.DEFINE_integer('rest_api_timeout_in_ms', None,
                       'TF Serving\'s name for --request_timeout_s (in ms); overrides it, for '
                       'gRPC too.', **fv)
  flags.DEFINE_float('request_timeout_s', 30.0,
                     'Longest a request may take (reading the body and predicting): a body '
                     'still arriving then gets 408 and its connection is closed, a prediction '
                     '504.', **fv)
  flags.DEFINE_integer('max_images_per_request', json_tensors.DEFAULT_LIMITS.max_images_per_request,
                       'Most instances (rows) one request may hold; more get 400. TF Serving '
                       'refuses requests over its batching max_batch_size.',
                       **fv)
  flags.DEFINE_integer('max_image_pixels', json_tensors.DEFAULT_LIMITS.max_image_pixels,
                       'Most pixels an encoded image may declare (all frames of a GIF), read '
                       'from its header before decoding; larger ones get 400.', **fv)
  flags.DEFINE_float('header_timeout_s', 10.0,
                     'A connection whose request line and headers have not all arrived this '
                     'long after it opened (or after its last response) is closed.', **fv)
  flags.DEFINE_integer('max_connections', 1024,
                       'Most connections open at once; further ones are closed at once. Capped '
                       'below the process\'s file-descriptor limit.', **fv)
  flags.DEFINE_float('file_system_poll_wait_seconds', 1.0,
                     'How often to look for a new version under --model_base_path.', **fv)
  flags.DEFINE_string('monitoring_config_file', None,
                      'TF Serving\'s MonitoringConfig in text format; with prometheus_config '
                      '{ enable: true } the REST port serves Prometheus metrics at its path '
                      '(default %s; mnist_cnn/serving/metrics.py).' % metrics.DEFAULT_PATH,
                      **fv)
  flags.DEFINE_integer('intra_op_parallelism_threads', 0, 'TF intra-op threads (0: TF picks).',
                       **fv)
  flags.DEFINE_integer('inter_op_parallelism_threads', 0, 'TF inter-op threads (0: TF picks).',
                       **fv)
  flags.DEFINE_integer('tensorflow_intra_op_parallelism', None,
                       'TF Serving\'s name for --intra_op_parallelism_threads.', **fv)
  flags.DEFINE_integer('tensorflow_inter_op_parallelism', None,
                       'TF Serving\'s name for --inter_op_parallelism_threads.', **fv)
  inference_graph.define_flags(fv['flag_values'])


def _register_validators(fv):
  for name in ('port', 'rest_api_port'):
    flags.register_validator(name, lambda v: 0 <= v < 65536,
                             message='--%s must be 0-65535' % name, **fv)
  flags.register_multi_flags_validator(
      ['model_base_path', 'model_config_file'],
      lambda f: bool(f['model_base_path']) != bool(f['model_config_file']),
      message='give --model_base_path (one model) or --model_config_file (several), not both',
      **fv)
  for name in ('max_batch_size', 'num_batch_threads', 'max_request_bytes',
               'max_images_per_request', 'max_image_pixels', 'max_connections'):
    flags.register_validator(name, lambda v: v >= 1, message='--%s must be at least 1' % name,
                             **fv)
  for name in ('batch_timeout_micros',):
    flags.register_validator(name, lambda v: v >= 0, message='--%s must be >= 0' % name, **fv)
  for name in ('request_timeout_s', 'file_system_poll_wait_seconds', 'header_timeout_s'):
    flags.register_validator(name, lambda v: v > 0, message='--%s must be > 0' % name, **fv)
  flags.register_validator('model_config_file_poll_wait_seconds', lambda v: v >= 0,
                           message='--model_config_file_poll_wait_seconds must be >= 0', **fv)
  flags.register_validator('rest_api_timeout_in_ms', lambda v: v is None or v >= 1,
                           message='--rest_api_timeout_in_ms must be at least 1', **fv)


def _raise_file_limit(max_connections):
  """Raises the soft file-descriptor limit to the hard one; returns the connection cap that
  leaves room under it for the model's files and the server's own sockets."""
  try:
    import resource  # pylint: disable=g-import-not-at-top
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
      resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
      soft = hard
  except (ImportError, ValueError, OSError):
    return max_connections
  if soft == resource.RLIM_INFINITY:
    return max_connections
  return max(1, min(max_connections, soft - 128))


def _entries(flags_obj):
  """The models to serve, from --model_config_file or the one-model flags."""
  if flags_obj.model_config_file:
    return model_config.read_file(flags_obj.model_config_file)
  if not os.path.isdir(flags_obj.model_base_path):
    raise ValueError('--model_base_path %s is not a directory' % flags_obj.model_base_path)
  return model_config.from_flags(flags_obj.model_name, flags_obj.model_base_path)


def _check_ports(flags_obj):
  """The ports as TF Serving means them, and a notice where a command line may mean 0.3's
  --port (REST) instead."""
  if flags_obj.port == flags_obj.rest_api_port and flags_obj.port != 0:
    raise ValueError('--port and --rest_api_port are both %d: --port is the gRPC port (TF '
                     'Serving\'s meaning; it was the REST port before 0.4.0), so give REST '
                     'another with --rest_api_port' % flags_obj.port)
  if flags_obj['port'].present and not flags_obj['rest_api_port'].present:
    models.log('note: --port=%d is the gRPC port, as in TF Serving; before 0.4.0 it was the '
               'REST port, which is now --rest_api_port (%d)' % (flags_obj.port,
                                                                 flags_obj.rest_api_port))


def _batch_settings(flags_obj):
  """The batcher's settings: the flags, then --batching_parameters_file, then
  --enable_batching=false (no merging)."""
  settings = batching.Settings(flags_obj.max_batch_size, flags_obj.batch_timeout_micros,
                               flags_obj.num_batch_threads)
  if flags_obj.batching_parameters_file:
    settings = batching.read_parameters(flags_obj.batching_parameters_file, settings)
  if not flags_obj.enable_batching:
    settings = settings._replace(max_batch_size=1)
  return settings


def _settings(flags_obj):
  """(request timeout s, session config), TF Serving's flag names taking precedence."""
  timeout_s = (flags_obj.rest_api_timeout_in_ms / 1000.0 if flags_obj.rest_api_timeout_in_ms
               else flags_obj.request_timeout_s)
  intra = flags_obj.tensorflow_intra_op_parallelism
  inter = flags_obj.tensorflow_inter_op_parallelism
  return timeout_s, tf.compat.v1.ConfigProto(
      intra_op_parallelism_threads=(flags_obj.intra_op_parallelism_threads
                                    if intra is None else intra),
      inter_op_parallelism_threads=(flags_obj.inter_op_parallelism_threads
                                    if inter is None else inter))


class _Server(object):
  """What serve() starts, for stopping and its last log line."""

  def __init__(self, flags_obj, server_metrics, batch):
    self.timeout_s, session_config = _settings(flags_obj)
    self.executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=batch.num_batch_threads + 2, thread_name_prefix='model')
    self.parse_executor = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                                thread_name_prefix='parse')
    self.served = served_models.ServedModels(lambda entry: models.ModelManager(
        entry.name, entry.base_path, self.executor, session_config, flags_obj.optimize_graph,
        flags_obj.serving_precision, server_metrics, entry.policy),
        flags_obj.allow_version_labels_for_unavailable_models)
    self.batcher = batching.Batcher(self.executor, batch.max_batch_size,
                                    batch.batch_timeout_micros / 1e6, batch.num_batch_threads)
    self.limits = json_tensors.Limits(max_images_per_request=flags_obj.max_images_per_request,
                                      max_image_pixels=flags_obj.max_image_pixels)


async def serve(flags_obj, ready=None):
  """Runs the server until SIGTERM/SIGINT (or until `ready`'s stop event, for tests).

  ready(rest_port, stop, rest_api) is called once both APIs listen; rest_api.grpc_port is the
  gRPC port.
  """
  entries = _entries(flags_obj)
  _check_ports(flags_obj)
  batch = _batch_settings(flags_obj)
  metrics_path = (metrics.read_config(flags_obj.monitoring_config_file)
                  if flags_obj.monitoring_config_file else None)
  server_metrics = metrics.Metrics() if metrics_path else None
  memory.map_large_blocks()  # before the first load: see there
  loop = asyncio.get_running_loop()
  log = rest_api.RateLimitedLog()
  # asyncio reports failed accepts (no file descriptors left) through this, once a second.
  loop.set_exception_handler(lambda _, context: log(
      context.get('message'), '%s: %s' % (context.get('message'), context.get('exception', ''))))
  server = _Server(flags_obj, server_metrics, batch)
  served = server.served
  if server_metrics is not None:
    server_metrics.gauge(':mnist_cnn:serving:loaded_versions',
                         'Versions in memory: those served and those still retiring.',
                         ('model_name',), served.versions_in_memory)
  await _first_load(served, entries)
  api = rest_api.RestApi(served, server.batcher, server.timeout_s, server.limits,
                         server.parse_executor, server_metrics, metrics_path)
  grpc_side = grpc_api.GrpcApi(served, server.batcher, server.timeout_s, server.limits,
                               flags_obj.max_request_bytes, server_metrics)
  max_connections = _raise_file_limit(flags_obj.max_connections)
  # gRPC first: a client that waits for REST to answer finds gRPC up too.
  grpc_server, api.grpc_port = await grpc_api.start(
      grpc_side, flags_obj.host, flags_obj.port, flags_obj.max_request_bytes,
      max_connections, flags_obj.header_timeout_s)
  models.log('gRPC API at %s:%d (tensorflow.serving.PredictionService, ModelService)' % (
      flags_obj.host, api.grpc_port))
  try:
    runner, guard, port = await _start_site(flags_obj, api, server.limits, log,
                                            max_connections)
  except OSError:
    await grpc_server.stop(None)
    raise
  stop = asyncio.Event()
  for signum in (signal.SIGTERM, signal.SIGINT):
    try:
      loop.add_signal_handler(signum, stop.set)
    except (RuntimeError, ValueError):  # not the main thread
      pass
  if ready is not None:
    ready(port, stop, api)
  pollers = [asyncio.ensure_future(_poll_forever(served, flags_obj))]
  if flags_obj.model_config_file and flags_obj.model_config_file_poll_wait_seconds > 0:
    pollers.append(asyncio.ensure_future(_poll_config(served, flags_obj, entries, log)))
  try:
    await stop.wait()
  finally:
    models.log('stopping: finishing requests in flight')
    for poller in pollers:
      poller.cancel()
    await grpc_server.stop(10.0)
    await runner.cleanup()
    await server.batcher.close()
    served.close()
    server.executor.shutdown(wait=True)
    server.parse_executor.shutdown(wait=True)
    models.log('stopped after %d REST and %d gRPC requests, %d model calls, %d requests '
               'answered in merged batches; closed %d connections for slow headers, %d over '
               'the cap' % (api.requests, grpc_side.requests, server.batcher.calls,
                            server.batcher.batched_requests, guard.timed_out, guard.refused))


async def _first_load(served, entries):
  try:
    await served.apply(entries)
  except served_models.ConfigError as e:
    raise ValueError(str(e)) from None
  for entry in entries:
    if not served.manager(entry.name).versions:
      models.log('no loadable version of %s under %s yet; waiting for one' % (
          entry.name, entry.base_path))


async def _start_site(flags_obj, api, limits, log, max_connections):
  """Starts the HTTP side on --host:--rest_api_port; returns (runner, connection guard, port)."""
  # handler_cancellation: a request whose client has gone is cancelled, so it makes no more
  # model calls; keepalive_timeout: an idle keep-alive connection must send its next request's
  # headers within the header timeout too.
  runner = web.AppRunner(rest_api.make_app(api, flags_obj.max_request_bytes), access_log=None,
                         handle_signals=False, handler_cancellation=True,
                         keepalive_timeout=flags_obj.header_timeout_s)
  await runner.setup()
  runner.server.__class__ = rest_api.GuardedServer
  guard = rest_api.ConnectionGuard(flags_obj.header_timeout_s, max_connections, log)
  runner.server.guard = guard
  site = web.TCPSite(runner, flags_obj.host, flags_obj.rest_api_port, shutdown_timeout=10.0)
  await site.start()
  port = runner.addresses[0][1]
  for name in sorted(api.served.managers) or ['']:
    models.log('REST API at http://%s:%d/v1/models/%s' % (
        flags_obj.host, port, name or ' (no model configured)'))
  models.log('limits: %d images and %d bytes per request, %d pixels per image, headers within '
             '%g s, requests within %g s, %d connections' % (
                 limits.max_images_per_request, flags_obj.max_request_bytes,
                 limits.max_image_pixels, flags_obj.header_timeout_s,
                 api.request_timeout_s, max_connections))
  return runner, guard, port


async def _poll_forever(served, flags_obj):
  while True:
    await asyncio.sleep(flags_obj.file_system_poll_wait_seconds)
    await served.poll()


async def _poll_config(served, flags_obj, applied, log):
  """Rereads --model_config_file; applies it when it changed. A file that does not read is
  logged and the configuration served stays as it is."""
  while True:
    await asyncio.sleep(flags_obj.model_config_file_poll_wait_seconds)
    try:
      entries = await asyncio.get_running_loop().run_in_executor(
          None, model_config.read_file, flags_obj.model_config_file)
    except ValueError as e:
      log('config', 'keeping the models served: %s' % e)
      continue
    if entries == applied:
      continue
    applied = entries
    try:
      await served.apply(entries)
      models.log('applied the changed %s' % flags_obj.model_config_file)
    except served_models.ConfigError as e:
      log('config', 'applied the changed %s except its labels: %s' % (
          flags_obj.model_config_file, e))


def main(_):
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  try:
    asyncio.run(serve(flags.FLAGS))
  except (ValueError, OSError) as e:
    sys.exit('error: %s' % e)


def run_command():
  """The `mnist-cnn-serve` console command (setup.py), as `python -m` runs this module."""
  define_serve_flags()
  app.run(main)


if __name__ == '__main__':
  run_command()
