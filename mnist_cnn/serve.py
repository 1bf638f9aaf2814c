"""Serves an export directory over TensorFlow Serving's REST API v1, without TF Serving.

  python -m mnist_cnn.serve --model_base_path=EXPORT_DIR [--model_name=mnist] [--port=8501]

Serves the highest integer version under --model_base_path and switches to a newer one when it
appears (polled every --file_system_poll_wait_seconds), letting requests on the old version
finish first. Endpoints, request and response bodies and error statuses are TF Serving's (see
api_rest.md in tensorflow/serving), so the same client code works against either:

  GET  /v1/models/{name}[/versions/{v}]              version status
  GET  /v1/models/{name}[/versions/{v}]/metadata     signature defs
  POST /v1/models/{name}[/versions/{v}]:predict      {"instances": [...]} or {"inputs": ...}

Requests in flight together are merged into one model call (--max_batch_size,
--batch_timeout_micros, --num_batch_threads, as TF Serving's batching parameters). Binds
127.0.0.1 unless --host says otherwise; SIGTERM or Ctrl-C stops it after the requests in
flight.
"""

import asyncio
import collections
import concurrent.futures
import gc
import json
import math
import os
import re
import signal
import sys
import time

from absl import app
from absl import flags
from aiohttp import web
from aiohttp import web_protocol
from aiohttp import web_server
import orjson
import tensorflow as tf

from mnist_cnn import serving
from official.utils import export

# /v1/models/{name}[/versions/{digits} | /labels/{label}][:verb | /metadata]: TF Serving's paths.
# Another path under /v1/ is a malformed request (400), one outside it is not found (404).
_MODEL_PATH = re.compile(r'^/v1/models/(?P<name>[^/:]+)'
                         r'(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?'
                         r'(?::(?P<verb>[A-Za-z]+)|/(?P<metadata>metadata))?/?$')


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
  flags.DEFINE_integer('batch_timeout_micros', 2000,
                       'How long a batch waits for more requests after its first.', **fv)
  flags.DEFINE_integer('num_batch_threads', 2, 'Model calls that may run at once.', **fv)
  flags.DEFINE_integer('max_request_bytes', 16 * 1024 * 1024,
                       'Largest request body accepted; larger ones get 413.', **fv)
  flags.DEFINE_float('request_timeout_s', 30.0,
                     'Longest a request may take (reading the body and predicting): a body '
                     'still arriving then gets 408 and its connection is closed, a prediction '
                     '504.', **fv)
  flags.DEFINE_integer('max_images_per_request', serving.DEFAULT_LIMITS.max_images_per_request,
                       'Most instances (rows) one request may hold; more get 400. TF Serving '
                       'refuses requests over its batching max_batch_size.',
                       **fv)
  flags.DEFINE_integer('max_image_pixels', serving.DEFAULT_LIMITS.max_image_pixels,
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
  flags.DEFINE_integer('intra_op_parallelism_threads', 0, 'TF intra-op threads (0: TF picks).',
                       **fv)
  flags.DEFINE_integer('inter_op_parallelism_threads', 0, 'TF inter-op threads (0: TF picks).',
                       **fv)
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


def _log(message):
  print('[serve %s] %s' % (time.strftime('%H:%M:%S'), message), flush=True)


class ModelManager(object):
  """Keeps the highest loadable version under base_path loaded; retires replaced versions once
  drained.

  A version that fails to load (copied in without a rename, say, saved_model.pb before its
  variables) is retried after RETRY_FIRST_S, doubling up to RETRY_MAX_S. A version deleted from
  disk is unloaded, and the highest remaining one served instead.
  """

  RETRY_FIRST_S = 1.0
  RETRY_MAX_S = 60.0

  def __init__(self, name, base_path, executor, session_config=None):
    self.name = name
    self.base_path = base_path
    self.current = None
    self._executor = executor
    self._session_config = session_config
    self._failed = {}  # version -> (attempts, monotonic time of the next try)

  def _due(self, version):
    return time.monotonic() >= self._failed.get(version, (0, 0.0))[1]

  def _record_failure(self, version, path, error):
    attempts = self._failed.get(version, (0, 0.0))[0] + 1
    wait = min(self.RETRY_MAX_S, self.RETRY_FIRST_S * 2 ** (attempts - 1))
    self._failed[version] = (attempts, time.monotonic() + wait)
    _log('cannot load version %d from %s (attempt %d; retrying in %.0f s): %s' % (
        version, path, attempts, wait, str(error).split('\n')[0]))

  async def poll(self):
    """Serves the highest version that loads; returns True when the served version changed."""
    loop = asyncio.get_running_loop()
    try:
      versions = await loop.run_in_executor(self._executor, serving.find_versions,
                                            self.base_path)
    except OSError as e:
      _log('cannot list %s: %s' % (self.base_path, e))
      return False
    self._failed = {v: f for v, f in self._failed.items() if v in versions}
    present = self.current is not None and self.current.version in versions
    floor = self.current.version if present else -1
    for version in reversed(versions):
      if version <= floor:
        break
      if not self._due(version):
        continue
      path = os.path.join(self.base_path, str(version))
      try:
        loaded = await loop.run_in_executor(
            self._executor, serving.LoadedVersion, version, path, self._session_config)
      except Exception as e:  # pylint: disable=broad-except
        self._record_failure(version, path, e)
        continue
      self._failed.pop(version, None)
      self._switch(loaded, 'serving %s version %d (%s), signatures: %s' % (
          self.name, version, path, ', '.join(sorted(loaded.signatures))))
      return True
    if self.current is not None and not present:
      self._switch(None, 'version %d was removed from %s and no other version loads: '
                   'serving nothing until one does' % (self.current.version, self.base_path))
      return True
    return False

  def _switch(self, loaded, message):
    old, self.current = self.current, loaded
    if loaded is not None:
      # A loaded graph is hundreds of thousands of long-lived Python objects; the JSON of every
      # request allocates enough to trigger collections that would walk them all again.
      # Freezing moves what exists now out of the collector's way (measured: JSON parsing 1.2
      # -> 0.1 ms).
      gc.freeze()
    _log(message)
    if old is not None:
      asyncio.get_running_loop().run_in_executor(self._executor, old.close_when_drained, 60.0)
      _log('retiring version %d once its requests finish' % old.version)

  def resolve(self, name, version):
    """The loaded version a request names, or a 404 as TF Serving words it."""
    spec = 'Latest(%s)' % name if version is None else 'Specific(%s, %s)' % (name, version)
    if version is not None and export.version_number(version) is None:
      shown = version if len(version) <= 30 else version[:27] + '...'
      raise serving.bad_request('Failed to convert version: %s to numeric.' % shown)
    current = self.current
    if name != self.name or current is None:
      raise serving.not_found('Servable not found for request: %s' % spec)
    if version is not None and int(version) != current.version:
      raise serving.not_found('Servable not found for request: %s' % spec)
    return current

  def close(self):
    if self.current is not None:
      self.current.close_when_drained(10.0)


def _json(status, body):
  # orjson: JSON of 784-pixel images is most of a request's CPU time, and orjson parses it
  # about five times faster than the json module.
  return web.Response(status=status, body=orjson.dumps(body), content_type='application/json')


def _error(status, message):
  return _json(status, {'error': message})


def _load_malloc_trim():
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    return ctypes.CDLL('libc.so.6').malloc_trim
  except (OSError, AttributeError):  # not glibc
    return None


_MALLOC_TRIM = _load_malloc_trim()


def release_memory():
  """Frees a large request's garbage and hands the pages back to the system.

  A 16 MiB request's JSON is ~80 MB of Python lists. A refused request's exception traceback
  holds them in a reference cycle, and having lived through the parse they sit in the oldest
  garbage-collector generation, which is rarely collected; once freed, glibc keeps the pages in
  its per-thread arenas. Two such requests left the server 25% larger for good (592 -> 737 MB).
  """
  gc.collect()
  if _MALLOC_TRIM is not None:
    _MALLOC_TRIM(0)


def _finite_float(text):
  value = float(text)
  if math.isinf(value):
    raise ValueError('Number too big to be stored in double')
  return value


# NaN and Infinity tokens are numbers; a literal too large for a double is an error.
_TOKENS_DECODER = json.JSONDecoder(parse_float=_finite_float)


def _load_json(raw):
  """A request body as TF Serving's parser reads it: `NaN`, `Infinity` and `-Infinity` tokens
  are numbers, and bytes after the JSON document are ignored. orjson (five times faster than
  the json module on images' JSON) reads everything else; the json module the rest."""
  try:
    return orjson.loads(raw)
  except orjson.JSONDecodeError as e:
    error = e
  try:
    text = raw.decode('utf-8')
    return _TOKENS_DECODER.raw_decode(text, len(text) - len(text.lstrip()))[0]
  except (ValueError, RecursionError):
    raise serving.bad_request('JSON Parse error: %s' % error) from None


class RestApi(object):
  """The aiohttp handlers."""

  # Bodies larger than this are parsed in a thread, so one large request cannot hold the event
  # loop (and every other client) for the tenths of a second its JSON takes.
  INLINE_PARSE_BYTES = 64 * 1024

  def __init__(self, manager, batcher, request_timeout_s, limits=serving.DEFAULT_LIMITS,
               parse_executor=None):
    self.manager = manager
    self.batcher = batcher
    self.request_timeout_s = request_timeout_s
    self.limits = limits
    self.parse_executor = parse_executor
    self.requests = 0

  async def handle(self, request):
    self.requests += 1
    match = _MODEL_PATH.match(request.path)
    if not match:
      return _error(400 if request.path.startswith('/v1/') else 404,
                    'Malformed request: %s %s' % (request.method, request.path[:200]))
    name, version = match.group('name'), match.group('version')
    if match.group('label') is not None:  # this server keeps no version labels
      return _error(400, 'Unrecognized servable version label: %s' % match.group('label'))
    verb, metadata = match.group('verb'), match.group('metadata')
    state = {'reading': False}
    try:
      if verb is None:
        if request.method != 'GET':
          return _error(405, 'Malformed request: %s %s; use GET' % (request.method,
                                                                     request.path))
        loaded = self.manager.resolve(name, version)
        if metadata:
          return _json(200, loaded.metadata(name))
        return _json(200, {'model_version_status': [{
            'version': str(loaded.version), 'state': 'AVAILABLE',
            'status': {'error_code': 'OK', 'error_message': ''}}]})
      if request.method != 'POST':
        return _error(405, 'Malformed request: %s %s; use POST' % (request.method,
                                                                    request.path))
      if verb not in ('predict', 'classify', 'regress'):
        return _error(404, 'Malformed request: %s %s' % (request.method, request.path))
      return await asyncio.wait_for(self._infer(request, name, version, verb, state),
                                    self.request_timeout_s)
    except serving.ServingError as e:
      return _error(e.status, e.message)
    except asyncio.TimeoutError:
      if state['reading']:
        response = _error(408, 'The request body did not arrive within %.1f s' %
                          self.request_timeout_s)
        response.force_close()
        return response
      return _error(504, 'Request timed out after %.1f s' % self.request_timeout_s)
    except web.HTTPRequestEntityTooLarge as e:
      return _error(413, 'Request body is larger than the limit of %d bytes' % (
          e.max_size if hasattr(e, 'max_size') else request.client_max_size))

  # After a body this large, freed memory is handed back (release_memory).
  RELEASE_AFTER_BYTES = 1024 * 1024

  async def _parse(self, size, fn, *args):
    if size <= self.INLINE_PARSE_BYTES or self.parse_executor is None:
      return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(self.parse_executor, fn, *args)

  async def _infer(self, request, name, version, verb, state):
    if request.content_length is not None and request.content_length > request.client_max_size:
      return _error(413, 'Request body of %d bytes is larger than the limit of %d bytes' % (
          request.content_length, request.client_max_size))
    self.manager.resolve(name, version)  # the URL is checked before the body is read
    state['reading'] = True
    raw = await request.read()
    state['reading'] = False
    if len(raw) >= self.RELEASE_AFTER_BYTES:
      try:
        return await self._infer_body(request, name, version, verb, raw)
      finally:
        # Later, once this request's frames and tasks are gone too.
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, loop.run_in_executor, self.parse_executor, release_memory)
    return await self._infer_body(request, name, version, verb, raw)

  async def _infer_body(self, request, name, version, verb, raw):
    size = len(raw)
    body = await self._parse(size, _load_json, raw)
    del raw
    if not isinstance(body, dict):
      return _error(400, 'the request body must be a JSON object')
    signature_name = body.get('signature_name') or 'serving_default'  # "" is the default too
    if not isinstance(signature_name, str):
      return _error(400, '\'signature_name\' key must be a string value')
    loaded = self.manager.resolve(name, version)
    if not loaded.acquire():  # retired between resolve and now: take the new one
      loaded = self.manager.resolve(name, version)
      if not loaded.acquire():
        return _error(503, 'the model is being replaced; retry')
    try:
      signature = loaded.signature(signature_name)
      wanted = 'tensorflow/serving/%s' % verb
      if signature.method_name != wanted:
        return _error(400, 'Expected %s signature method_name to be %s. Was: %s' % (
            verb, wanted, signature.method_name))
      feeds, row_format, rows = await self._parse(
          size, serving.parse_request, body, signature, self.limits)
      del body
      outputs = await self.batcher.run(loaded, signature, feeds, rows)
      return web.Response(status=200, body=serving.format_response(outputs, row_format),
                          content_type='application/json')
    finally:
      loaded.release()


@web.middleware
async def _never_crash(request, handler):
  """Whatever goes wrong in one request becomes a JSON 500 for that request alone."""
  try:
    return await handler(request)
  except web.HTTPException as e:
    return _error(e.status, e.reason)
  except Exception as e:  # pylint: disable=broad-except
    _log('error in %s %s: %s: %s' % (request.method, request.path[:200], type(e).__name__, e))
    return _error(500, 'Internal error: %s' % type(e).__name__)


class RateLimitedLog(object):
  """Logs a message at most once per interval_s for each key, then how many were held back.

  With its file descriptors used up, a server's accept loop fails once a second per socket
  for as long as that lasts; logging each failure grew the log by 142 MB a minute.
  """

  def __init__(self, interval_s=60.0, log=None, clock=time.monotonic):
    self._interval_s = interval_s
    self._log = log or _log
    self._clock = clock
    self._last = {}
    self._held = collections.Counter()

  def __call__(self, key, message):
    now = self._clock()
    if key in self._last and now - self._last[key] < self._interval_s:
      self._held[key] += 1
      return
    held = self._held.pop(key, 0)
    self._log(message + (' (and %d more like it in the last %.0f s)' % (held, self._interval_s)
                         if held else ''))
    self._last[key] = now


class ConnectionGuard(object):
  """What every connection must keep to: headers within header_timeout_s, at most
  max_connections open. Counts what it closed, for the log and the tests."""

  def __init__(self, header_timeout_s, max_connections, log):
    self.header_timeout_s = header_timeout_s
    self.max_connections = max_connections
    self.log = log
    self.open = 0
    self.refused = 0
    self.timed_out = 0


class _GuardedRequestHandler(web_protocol.RequestHandler):
  """aiohttp's connection handler with a header timeout, a connection cap and JSON errors.

  aiohttp waits for a request's headers as long as the client likes (slowloris: 50 connections
  that send a header line every few seconds were all still open after 30 s), and answers
  malformed HTTP with text/plain.
  """

  def connection_made(self, transport):
    super().connection_made(transport)
    self._guard = self._manager.guard
    self._guard.open += 1
    self._header_timer = None
    if self._guard.open > self._guard.max_connections:
      self._guard.refused += 1
      self._guard.log('refused', 'closed a connection over --max_connections=%d' %
                      self._guard.max_connections)
      self.force_close()
      return
    self._header_timer = self._loop.call_later(self._guard.header_timeout_s,
                                               self._headers_overdue)

  def _headers_overdue(self):
    self._header_timer = None
    if self._request_count == 0 and self.transport is not None:
      self._guard.timed_out += 1
      self._guard.log('header_timeout', 'closed a connection whose headers did not arrive '
                      'within --header_timeout_s=%g' % self._guard.header_timeout_s)
      self.force_close()

  def data_received(self, data):
    super().data_received(data)
    if self._request_count and self._header_timer is not None:
      self._header_timer.cancel()
      self._header_timer = None

  def connection_lost(self, exc):
    if getattr(self, '_guard', None) is not None:
      self._guard.open -= 1
      if self._header_timer is not None:
        self._header_timer.cancel()
        self._header_timer = None
    super().connection_lost(exc)

  def handle_error(self, request, status=500, exc=None, message=None):
    """Malformed HTTP (bad headers, over-long lines) gets a JSON error body too."""
    if request.writer.output_size > 0:
      raise ConnectionError('Response is sent already, cannot send another response')
    if status >= 500:
      self._guard.log('error %d' % status, 'error handling a request: %s' % (exc or message))
      text = 'Internal error'
    else:
      text = 'Malformed HTTP request: %s' % (message or exc or 'bad request')
    response = _error(status, text)
    response.force_close()
    return response


class _GuardedServer(web_server.Server):

  guard = None

  def __call__(self):
    return _GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


def make_app(api, max_request_bytes):
  application = web.Application(client_max_size=max_request_bytes, middlewares=[_never_crash])
  application.router.add_route('*', '/{tail:.*}', api.handle)
  return application


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
  loop = asyncio.get_running_loop()
  log = RateLimitedLog()
  # asyncio reports failed accepts (no file descriptors left) through this, once a second.
  loop.set_exception_handler(lambda _, context: log(
      context.get('message'), '%s: %s' % (context.get('message'), context.get('exception', ''))))
  max_connections = _raise_file_limit(flags_obj.max_connections)
  executor = concurrent.futures.ThreadPoolExecutor(
      max_workers=flags_obj.num_batch_threads + 2, thread_name_prefix='model')
  parse_executor = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                         thread_name_prefix='parse')
  session_config = tf.compat.v1.ConfigProto(
      intra_op_parallelism_threads=flags_obj.intra_op_parallelism_threads,
      inter_op_parallelism_threads=flags_obj.inter_op_parallelism_threads)
  manager = ModelManager(flags_obj.model_name, flags_obj.model_base_path, executor,
                         session_config)
  await manager.poll()
  if manager.current is None:
    _log('no loadable version under %s yet; waiting for one' % flags_obj.model_base_path)
  batcher = serving.Batcher(executor, flags_obj.max_batch_size,
                            flags_obj.batch_timeout_micros / 1e6, flags_obj.num_batch_threads)
  limits = serving.Limits(max_images_per_request=flags_obj.max_images_per_request,
                          max_image_pixels=flags_obj.max_image_pixels)
  api = RestApi(manager, batcher, flags_obj.request_timeout_s, limits, parse_executor)
  # handler_cancellation: a request whose client has gone is cancelled, so it makes no more
  # model calls; keepalive_timeout: an idle keep-alive connection must send its next request's
  # headers within the header timeout too.
  runner = web.AppRunner(make_app(api, flags_obj.max_request_bytes), access_log=None,
                         handle_signals=False, handler_cancellation=True,
                         keepalive_timeout=flags_obj.header_timeout_s)
  await runner.setup()
  runner.server.__class__ = _GuardedServer
  guard = ConnectionGuard(flags_obj.header_timeout_s, max_connections, log)
  runner.server.guard = guard
  site = web.TCPSite(runner, flags_obj.host, flags_obj.port, shutdown_timeout=10.0)
  await site.start()
  port = runner.addresses[0][1]
  _log('REST API at http://%s:%d/v1/models/%s' % (flags_obj.host, port, flags_obj.model_name))
  _log('limits: %d images and %d bytes per request, %d pixels per image, headers within %g s, '
       'requests within %g s, %d connections' % (
           limits.max_images_per_request, flags_obj.max_request_bytes, limits.max_image_pixels,
           flags_obj.header_timeout_s, flags_obj.request_timeout_s, max_connections))

  stop = asyncio.Event()
  for signum in (signal.SIGTERM, signal.SIGINT):
    try:
      loop.add_signal_handler(signum, stop.set)
    except (RuntimeError, ValueError):  # not the main thread
      pass
  if ready is not None:
    ready(port, stop, api)

  async def poll_forever():
    while True:
      await asyncio.sleep(flags_obj.file_system_poll_wait_seconds)
      try:
        await manager.poll()
      except Exception as e:  # pylint: disable=broad-except
        log('poll', 'error while looking for versions under %s: %s: %s' % (
            flags_obj.model_base_path, type(e).__name__, e))

  poller = asyncio.ensure_future(poll_forever())
  try:
    await stop.wait()
  finally:
    _log('stopping: finishing requests in flight')
    poller.cancel()
    await runner.cleanup()
    await batcher.close()
    manager.close()
    executor.shutdown(wait=True)
    parse_executor.shutdown(wait=True)
    _log('stopped after %d requests, %d model calls, %d requests answered in merged batches; '
         'closed %d connections for slow headers, %d over the cap' % (
             api.requests, batcher.calls, batcher.batched_requests, guard.timed_out,
             guard.refused))


def main(_):
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  try:
    asyncio.run(serve(flags.FLAGS))
  except (ValueError, OSError) as e:
    sys.exit('error: %s' % e)


if __name__ == '__main__':
  define_serve_flags()
  app.run(main)
