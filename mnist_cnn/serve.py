"""Serves an export directory over TensorFlow Serving's REST API v1, without TF Serving.

  python -m mnist_cnn.serve --model_base_path=EXPORT_DIR [--model_name=mnist] [--port=8501]

Serves the highest integer version under --model_base_path and switches to a newer one when it
appears (polled every --file_system_poll_wait_seconds), letting requests on the old version
finish first; a retired version's memory is freed once its last request ends. Endpoints,
request and response bodies and error statuses are TF Serving's (see api_rest.md in
tensorflow/serving), so the same client code works against either:

  GET  /v1/models/{name}[/versions/{v}]              version status
  GET  /v1/models/{name}[/versions/{v}]/metadata     signature defs
  POST /v1/models/{name}[/versions/{v}]:predict      {"instances": [...]} or {"inputs": ...}
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
from mnist_cnn.serving import inference_graph
from mnist_cnn.serving import json_tensors
from mnist_cnn.serving import memory
from mnist_cnn.serving import metrics
from mnist_cnn.serving import models
from mnist_cnn.serving import rest_api

def define_serve_flags(flag_values=flags.FLAGS):
  fv = {'flag_values': flag_values}
  flags.DEFINE_string('model_base_path', None,
                      'Directory of integer version subdirectories, each a SavedModel.', **fv)
  flags.DEFINE_string('model_name', 'mnist', 'The {name} in /v1/models/{name}.', **fv)
  flags.DEFINE_string('host', '127.0.0.1', 'Address to bind; 0.0.0.0 for every interface.',
                      **fv)
  flags.DEFINE_integer('port', 8501, 'REST port (TF Serving\'s default); 0 picks a free one.',
                       **fv)
  flags.DEFINE_integer('max_batch_size', 64,
                       'Most rows merged into one model call; 1 turns batching off.', **fv)
  flags.DEFINE_integer('batch_timeout_micros', 0,
                       'Longest a batch waits for requests already arriving (read or parsed) '
                       'after its first; with none arriving it goes at once. 0: it goes to the '
                       'first free model call at once, and requests that arrive while the '
                       'calls are busy wait together for the next one.', **fv)
  flags.DEFINE_integer('num_batch_threads', 1,
                       'Merged model calls that may run at once. One call already uses every '
                       'core; two at once served 7-10% fewer images/s on 2 cores.', **fv)
  flags.DEFINE_integer('max_request_bytes', 16 * 1024 * 1024,
                       'Largest request body accepted; larger ones get 413.', **fv)
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
  inference_graph.define_flags(flag_values)
  flags.mark_flag_as_required('model_base_path', **fv)
  flags.register_validator('port', lambda v: 0 <= v < 65536, message='--port must be 0-65535',
                           **fv)
  for name in ('max_batch_size', 'num_batch_threads', 'max_request_bytes',
               'max_images_per_request', 'max_image_pixels', 'max_connections'):
    flags.register_validator(name, lambda v: v >= 1, message='--%s must be at least 1' % name,
                             **fv)
  for name in ('batch_timeout_micros',):
    flags.register_validator(name, lambda v: v >= 0, message='--%s must be >= 0' % name, **fv)
  for name in ('request_timeout_s', 'file_system_poll_wait_seconds', 'header_timeout_s'):
    flags.register_validator(name, lambda v: v > 0, message='--%s must be > 0' % name, **fv)


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


async def serve(flags_obj, ready=None):
  """Runs the server until SIGTERM/SIGINT (or until `ready`'s stop event, for tests)."""
  if not os.path.isdir(flags_obj.model_base_path):
    raise ValueError('--model_base_path %s is not a directory' % flags_obj.model_base_path)
  metrics_path = (metrics.read_config(flags_obj.monitoring_config_file)
                  if flags_obj.monitoring_config_file else None)
  server_metrics = metrics.Metrics() if metrics_path else None
  memory.map_large_blocks()  # before the first load: see there
  loop = asyncio.get_running_loop()
  log = rest_api.RateLimitedLog()
  # asyncio reports failed accepts (no file descriptors left) through this, once a second.
  loop.set_exception_handler(lambda _, context: log(
      context.get('message'), '%s: %s' % (context.get('message'), context.get('exception', ''))))
  executor = concurrent.futures.ThreadPoolExecutor(
      max_workers=flags_obj.num_batch_threads + 2, thread_name_prefix='model')
  parse_executor = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                         thread_name_prefix='parse')
  session_config = tf.compat.v1.ConfigProto(
      intra_op_parallelism_threads=flags_obj.intra_op_parallelism_threads,
      inter_op_parallelism_threads=flags_obj.inter_op_parallelism_threads)
  manager = models.ModelManager(flags_obj.model_name, flags_obj.model_base_path, executor,
                                session_config, flags_obj.optimize_graph,
                                flags_obj.serving_precision, server_metrics)
  if server_metrics is not None:
    server_metrics.gauge(':mnist_cnn:serving:loaded_versions',
                         'Versions in memory: the one served and those still retiring.',
                         ('model_name',), lambda: {(manager.name,): manager.versions_in_memory()})
  await manager.poll()
  if manager.current is None:
    models.log('no loadable version under %s yet; waiting for one' % flags_obj.model_base_path)
  batcher = batching.Batcher(executor, flags_obj.max_batch_size,
                             flags_obj.batch_timeout_micros / 1e6, flags_obj.num_batch_threads)
  limits = json_tensors.Limits(max_images_per_request=flags_obj.max_images_per_request,
                               max_image_pixels=flags_obj.max_image_pixels)
  api = rest_api.RestApi(manager, batcher, flags_obj.request_timeout_s, limits, parse_executor,
                         server_metrics, metrics_path)
  runner, guard, port = await _start_site(flags_obj, api, limits, log)
  stop = asyncio.Event()
  for signum in (signal.SIGTERM, signal.SIGINT):
    try:
      loop.add_signal_handler(signum, stop.set)
    except (RuntimeError, ValueError):  # not the main thread
      pass
  if ready is not None:
    ready(port, stop, api)
  poller = asyncio.ensure_future(_poll_forever(manager, flags_obj, log))
  try:
    await stop.wait()
  finally:
    models.log('stopping: finishing requests in flight')
    poller.cancel()
    await runner.cleanup()
    await batcher.close()
    manager.close()
    executor.shutdown(wait=True)
    parse_executor.shutdown(wait=True)
    models.log('stopped after %d requests, %d model calls, %d requests answered in merged '
               'batches; closed %d connections for slow headers, %d over the cap' % (
                   api.requests, batcher.calls, batcher.batched_requests, guard.timed_out,
                   guard.refused))


async def _start_site(flags_obj, api, limits, log):
  """Starts the HTTP side on --host:--port; returns (runner, connection guard, port)."""
  max_connections = _raise_file_limit(flags_obj.max_connections)
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
  site = web.TCPSite(runner, flags_obj.host, flags_obj.port, shutdown_timeout=10.0)
  await site.start()
  port = runner.addresses[0][1]
  models.log('REST API at http://%s:%d/v1/models/%s' % (flags_obj.host, port,
                                                        flags_obj.model_name))
  models.log('limits: %d images and %d bytes per request, %d pixels per image, headers within '
             '%g s, requests within %g s, %d connections' % (
                 limits.max_images_per_request, flags_obj.max_request_bytes,
                 limits.max_image_pixels, flags_obj.header_timeout_s,
                 flags_obj.request_timeout_s, max_connections))
  return runner, guard, port


async def _poll_forever(manager, flags_obj, log):
  while True:
    await asyncio.sleep(flags_obj.file_system_poll_wait_seconds)
    try:
      await manager.poll()
    except Exception as e:  # pylint: disable=broad-except
      log('poll', 'error while looking for versions under %s: %s: %s' % (
          flags_obj.model_base_path, type(e).__name__, e))


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
