"""The HTTP side of the REST server: TF Serving's paths and statuses, JSON errors, and the
guards every connection passes (header timeout, connection cap, request size).
"""

import asyncio
import collections
import json
import math
import re
import time

from aiohttp import web
from aiohttp import web_protocol
from aiohttp import web_server
import orjson

from mnist_cnn.serving import json_tensors
from mnist_cnn.serving import memory
from mnist_cnn.serving import metrics
from mnist_cnn.serving import models

# /v1/models/{name}[/versions/{digits} | /labels/{label}][:verb | /metadata]: TF Serving's paths.
# Another path under /v1/ is a malformed request (400), one outside it is not found (404).
_MODEL_PATH = re.compile(r'^/v1/models/(?P<name>[^/:]+)'
                         r'(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?'
                         r'(?::(?P<verb>[A-Za-z]+)|/(?P<metadata>metadata))?/?$')


def _json(status, body):
  # orjson: JSON of 784-pixel images is most of a request's CPU time, and orjson parses it
  # about five times faster than the json module.
  return web.Response(status=status, body=orjson.dumps(body), content_type='application/json')


def _error(status, message):
  return _json(status, {'error': message})


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
    raise models.bad_request('JSON Parse error: %s' % error) from None


class RestApi(object):
  """The aiohttp handlers."""

  # Bodies larger than this are parsed in a thread, so one large request cannot hold the event
  # loop (and every other client) for the tenths of a second its JSON takes.
  INLINE_PARSE_BYTES = 64 * 1024

  def __init__(self, served, batcher, request_timeout_s, limits=json_tensors.DEFAULT_LIMITS,
               parse_executor=None, metrics=None, metrics_path=None):
    self.served = served  # a served_models.ServedModels
    self.batcher = batcher
    self.request_timeout_s = request_timeout_s
    self.limits = limits
    self.parse_executor = parse_executor
    self.metrics = metrics  # a metrics.Metrics, or None
    self.metrics_path = metrics_path  # where they are served (None: not served)
    self.requests = 0

  async def handle(self, request):
    self.requests += 1
    if self.metrics_path is not None and request.path == self.metrics_path:
      if request.method != 'GET':
        return _error(405, 'Malformed request: %s %s; use GET' % (request.method,
                                                                   request.path))
      return web.Response(status=200, body=self.metrics.render().encode('utf-8'),
                          headers={'Content-Type': metrics.CONTENT_TYPE})
    if self.metrics is None:
      return await self._handle(request, {})
    started, seen = time.monotonic(), {}
    response = await self._handle(request, seen)
    if seen:  # a model's path: counted under its model and API
      self.metrics.request(seen['model'], seen['api'], 'REST', response.status,
                           time.monotonic() - started)
    return response

  async def _handle(self, request, seen):
    match = _MODEL_PATH.match(request.path)
    if not match:
      return _error(400 if request.path.startswith('/v1/') else 404,
                    'Malformed request: %s %s' % (request.method, request.path[:200]))
    name, version, label = match.group('name'), match.group('version'), match.group('label')
    # Names this server does not serve count under '': made-up names must not grow the metrics.
    seen.update(model=name if self.served.serves(name) else '', api=match.group('verb') or (
        'metadata' if match.group('metadata') else 'status'))
    verb, metadata = match.group('verb'), match.group('metadata')
    state = {'reading': False}
    try:
      if verb is None:
        if request.method != 'GET':
          return _error(405, 'Malformed request: %s %s; use GET' % (request.method,
                                                                     request.path))
        if metadata:
          return _json(200, self.served.resolve(name, version, label).metadata(name))
        return _json(200, {'model_version_status': [{
            'version': str(number), 'state': 'AVAILABLE',
            'status': {'error_code': 'OK', 'error_message': ''}}
            for number in self.served.status(name, version, label)]})
      if request.method != 'POST':
        return _error(405, 'Malformed request: %s %s; use POST' % (request.method,
                                                                    request.path))
      if verb not in ('predict', 'classify', 'regress'):
        return _error(404, 'Malformed request: %s %s' % (request.method, request.path))
      return await asyncio.wait_for(self._infer(request, (name, version, label), verb, state),
                                    self.request_timeout_s)
    except models.ServingError as e:
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

  async def _parse(self, size, fn, *args):
    if size <= self.INLINE_PARSE_BYTES or self.parse_executor is None:
      return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(self.parse_executor, fn, *args)

  async def _infer(self, request, names, verb, state):
    if request.content_length is not None and request.content_length > request.client_max_size:
      return _error(413, 'Request body of %d bytes is larger than the limit of %d bytes' % (
          request.content_length, request.client_max_size))
    self.served.resolve(*names)  # the URL is checked before the body is read
    self.batcher.arriving()
    state['arriving'] = True
    try:
      state['reading'] = True
      raw = await request.read()
      state['reading'] = False
      size = len(raw)
      try:
        return await self._infer_body(names, verb, raw, state)
      finally:
        memory.release_after_request(size, self.parse_executor)
    finally:
      self._arrived(state)

  def _arrived(self, state):
    """Tells the batcher once that this request is no longer on its way to it."""
    if state.pop('arriving', False):
      self.batcher.arrived()

  async def _infer_body(self, names, verb, raw, state):
    size = len(raw)
    body = await self._parse(size, _load_json, raw)
    del raw
    if not isinstance(body, dict):
      return _error(400, 'the request body must be a JSON object')
    signature_name = body.get('signature_name') or 'serving_default'  # "" is the default too
    if not isinstance(signature_name, str):
      return _error(400, '\'signature_name\' key must be a string value')
    loaded = self.served.acquire(*names)
    try:
      signature = loaded.signature(signature_name)
      models.check_method(signature, verb, verb)
      feeds, row_format, rows = await self._parse(
          size, json_tensors.parse_request, body, signature, self.limits)
      del body
      self._arrived(state)
      outputs = await self.batcher.run(loaded, signature, feeds, rows)
      return web.Response(status=200, body=json_tensors.format_response(outputs, row_format),
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
    models.log('error in %s %s: %s: %s' % (request.method, request.path[:200], type(e).__name__, e))
    return _error(500, 'Internal error: %s' % type(e).__name__)


class RateLimitedLog(object):
  """Logs a message at most once per interval_s for each key, then how many were held back.

  With its file descriptors used up, a server's accept loop fails once a second per socket
  for as long as that lasts; logging each failure grew the log by 142 MB a minute.
  """

  def __init__(self, interval_s=60.0, log=None, clock=time.monotonic):
    self._interval_s = interval_s
    self._log = log or models.log
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


class GuardedServer(web_server.Server):

  guard = None

  def __call__(self):
    return _GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


def make_app(api, max_request_bytes):
  application = web.Application(client_max_size=max_request_bytes, middlewares=[_never_crash])
  application.router.add_route('*', '/{tail:.*}', api.handle)
  return application


