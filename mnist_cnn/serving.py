"""The model side of the REST server: loaded SavedModel versions, request tensors and batching.

Kept apart from the HTTP layer (mnist_cnn/serve.py) so that each half can be tested alone. The
JSON conventions are TensorFlow Serving's REST API v1 (tensorflow/serving, api_rest.md): row
format (`instances`) and columnar format (`inputs`), binary values as {"b64": ...}.
"""

import asyncio
import base64
import collections
import math
import os
import threading

import numpy as np
import orjson
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import config_pb2

from mnist_cnn import image_headers
from official.utils import export

SAVED_MODEL_FILES = ('saved_model.pb', 'saved_model.pbtxt')
# numpy's limit on dimensions: deeper JSON lists cannot be a tensor.
MAX_RANK = 32

# What one request may ask of the server (serve.py's flags; README "Reliability").
Limits = collections.namedtuple('Limits', ['max_images_per_request', 'max_image_pixels'])
DEFAULT_LIMITS = Limits(max_images_per_request=1000, max_image_pixels=2048 * 2048)


class ServingError(Exception):
  """A request the model cannot answer; `status` is the HTTP status TF Serving would give."""

  def __init__(self, status, message):
    super().__init__(message)
    self.status = status
    self.message = message


def bad_request(message):
  return ServingError(400, message)


def not_found(message):
  return ServingError(404, message)


################################################################################
# Versions on disk and loaded
################################################################################


def find_versions(base_path):
  """Integer version directories under base_path that hold a SavedModel, ascending."""
  return [v for v in export.existing_versions(base_path) if any(
      os.path.exists(os.path.join(base_path, str(v), f)) for f in SAVED_MODEL_FILES)]


def op_error_message(error):
  """The line of a TensorFlow OpError that says what is wrong, without graph-execution noise."""
  lines = [line.strip() for line in error.message.splitlines()]
  meaningful = [line for line in lines if line and not line.startswith(
      ('Graph execution error', 'Detected at node', 'File "', '[[', 'Node:'))]
  return meaningful[0] if meaningful else error.message.strip()


class TensorSpec(object):
  """One signature input or output: graph tensor name, dtype and shape (None = unknown rank).

  Shapes are not checked against requests: as in TF Serving, the graph decides what it accepts
  (an input of [-1, 1] takes [1.0, 2.0, 5.0]; ResNet's [-1, 28, 28, 1] takes [N, 784] rows that
  its graph reshapes), and the batcher's row check keeps every client's answer its own.
  """

  def __init__(self, tensor_info):
    self.tensor_name = tensor_info.name
    self.dtype = tf.dtypes.as_dtype(tensor_info.dtype)
    if tensor_info.tensor_shape.unknown_rank:
      self.shape = None
    else:
      self.shape = [d.size for d in tensor_info.tensor_shape.dim]

  @property
  def batched(self):
    """True when the first dimension is free, so requests can be stacked along it."""
    return self.shape is None or (len(self.shape) >= 1 and self.shape[0] == -1)


class Signature(object):
  """A predict signature of a loaded version."""

  def __init__(self, name, signature_def):
    self.name = name
    self.method_name = signature_def.method_name
    self.inputs = {k: TensorSpec(v) for k, v in signature_def.inputs.items()}
    self.outputs = {k: v.name for k, v in signature_def.outputs.items()}
    self.output_specs = {k: TensorSpec(v) for k, v in signature_def.outputs.items()}
    self.batchable = all(s.batched for s in self.inputs.values()) and all(
        s.batched for s in self.output_specs.values())


class LoadedVersion(object):
  """One SavedModel version in its own graph and session, with a count of calls in flight so
  that a replaced version is closed only once drained."""

  def __init__(self, version, path, session_config=None):
    self.version = version
    self.path = path
    self._graph = tf.Graph()
    self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
    try:
      with self._graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(
            self._session, [tf.compat.v1.saved_model.tag_constants.SERVING], path)
    except Exception as e:  # pylint: disable=broad-except
      self._session.close()
      message = op_error_message(e) if isinstance(e, tf.errors.OpError) else str(e)
      raise ValueError('cannot load the SavedModel at %s: %s' % (
          path, message.strip().split('\n')[0])) from None
    self.signature_defs = dict(meta_graph.signature_def)
    self.signatures = {name: Signature(name, sd) for name, sd in self.signature_defs.items()}
    self._callables = {}
    self._lock = threading.Lock()
    self._in_flight = 0
    self._drained = threading.Event()
    self._drained.set()
    self._closed = False

  def acquire(self):
    with self._lock:
      if self._closed:
        return False
      self._in_flight += 1
      self._drained.clear()
      return True

  def release(self):
    with self._lock:
      self._in_flight -= 1
      if self._in_flight == 0:
        self._drained.set()

  def close_when_drained(self, timeout=None):
    """Waits for calls in flight (at most timeout seconds), then frees the session."""
    self._drained.wait(timeout)
    with self._lock:
      self._closed = True
    self._session.close()

  def signature(self, name):
    if name not in self.signatures:
      raise not_found('Serving signature name: "%s" not found in signature def' % name)
    return self.signatures[name]

  def _callable(self, signature, names):
    """A callable running the signature on feeds in `names` order, made once.

    Session callables skip the Python client's check of a feed against its placeholder's
    static shape, as TF Serving's C++ session run does: the graph decides.
    """
    key = (signature.name, names)
    if key not in self._callables:
      options = config_pb2.CallableOptions(
          feed=[signature.inputs[k].tensor_name for k in names],
          fetch=[signature.outputs[k] for k in sorted(signature.outputs)])
      self._callables[key] = self._session._make_callable_from_options(options)  # pylint: disable=protected-access
    return self._callables[key]

  def run(self, signature, feeds):
    """Runs a signature on numpy feeds {input key: array}; returns {output key: array}.

    TensorFlow's InvalidArgumentError (an undecodable image, a shape the graph cannot take)
    becomes a 400.
    """
    names = tuple(sorted(feeds))
    try:
      values = self._callable(signature, names)(*[feeds[k] for k in names])
    except tf.errors.InvalidArgumentError as e:
      raise bad_request(op_error_message(e)) from None
    # Scalars come back as Python values, strings as bytes: arrays, strings of dtype object.
    return {k: np.asarray(v, dtype=object if signature.output_specs[k].dtype == tf.string
                          else None) for k, v in zip(sorted(signature.outputs), values)}

  def metadata(self, model_name):
    """The body of GET /v1/models/{name}/metadata, as TF Serving writes it: proto3 JSON with
    field names as in the protos and default-valued fields kept (dim names, `unknown_rank:
    false`), no `@type`."""
    signature_defs = {name: json_format.MessageToDict(sd, preserving_proto_field_name=True,
                                                      including_default_value_fields=True)
                      for name, sd in sorted(self.signature_defs.items())}
    return {'model_spec': {'name': model_name, 'signature_name': '',
                           'version': str(self.version)},
            'metadata': {'signature_def': {'signature_def': signature_defs}}}


################################################################################
# JSON <-> tensors
################################################################################


_FLOAT_LEAVES = frozenset([int, float])
_INTEGER_LEAVES = frozenset([int])


def _leaf_json(value):
  """A JSON value as the client wrote it, cut to 40 characters, for error messages."""
  try:
    text = orjson.dumps(value).decode('utf-8', 'replace')
  except (TypeError, orjson.JSONEncodeError):
    text = repr(value)
  return text if len(text) <= 40 else text[:37] + '...'


def _check_nesting(value, max_depth, leaf_types, dtype_name, where):
  """Walks nested JSON lists without recursion; raises a 400 naming the problem.

  Lists may nest at most max_depth deep (numpy's limit). With leaf_types, every leaf must
  be a JSON number of those Python types: true, null, "0.5" or objects are refused, as TF
  Serving refuses them, where numpy would quietly turn them into floats.
  """
  stack = [(value, 0)]
  while stack:
    item, depth = stack.pop()
    if type(item) is not list:  # pylint: disable=unidiomatic-typecheck
      if leaf_types is not None and type(item) not in leaf_types:
        raise bad_request('%s: %s is not of expected type: %s' % (
            where, _leaf_json(item), dtype_name))
      continue
    if depth >= max_depth:
      raise bad_request('%s: lists nest more than %d deep, deeper than any tensor can be' % (
          where, max_depth))
    if leaf_types is not None and item and set(map(type, item)) <= leaf_types:
      continue  # a row of numbers: the common case, checked without a Python loop
    stack.extend((child, depth + 1) for child in item)


_BASE64_WHITESPACE = str.maketrans('', '', ' \t\r\n')


def _b64decode(text):
  """Standard base64 as absl's Base64Unescape takes it (and so TF Serving): line breaks (what
  `base64` prints without -w0) and missing '=' padding are fine, other characters are not."""
  text = text.translate(_BASE64_WHITESPACE)
  return base64.b64decode(text + '=' * (-len(text) % 4), validate=True)


def _decode_b64(value, where, max_image_pixels):
  """Replaces {"b64": "..."} objects in a nested list by bytes, and str by utf-8 bytes; images
  over max_image_pixels are refused from their headers, before anything decodes them."""
  if isinstance(value, list):
    return [_decode_b64(v, where, max_image_pixels) for v in value]
  if isinstance(value, dict):
    if set(value) != {'b64'} or not isinstance(value['b64'], str):
      raise bad_request('%s: a binary value must be an object with one key "b64" holding a '
                        'base64 string' % where)
    try:
      data = _b64decode(value['b64'])
    except (ValueError, TypeError):
      raise bad_request('%s: "b64" does not hold valid base64 data' % where) from None
  elif isinstance(value, str):
    data = value.encode('utf-8')
  else:
    raise bad_request('%s: expected a string or {"b64": ...}, got %s' % (
        where, _leaf_json(value)))
  try:
    image_headers.check_pixels(data, max_image_pixels)
  except image_headers.ImageSizeError as e:
    raise bad_request('%s: %s' % (where, e)) from None
  return data


def _to_array(value, spec, where, limits, instance=False):
  """A JSON value -> numpy array of the input's dtype, or a 400 saying what is wrong."""
  max_depth = MAX_RANK - (1 if instance else 0)
  if spec.dtype == tf.string:
    _check_nesting(value, max_depth, None, spec.dtype.name, where)
    decoded = _decode_b64(value, where, limits.max_image_pixels)
    try:
      return np.array(decoded, dtype=object)
    except ValueError:
      raise bad_request('%s: nested lists of different lengths' % where) from None
  if spec.dtype.is_integer:
    leaves = _INTEGER_LEAVES
  elif spec.dtype.is_floating:
    leaves = _FLOAT_LEAVES
  else:
    leaves = _FLOAT_LEAVES | {bool} if spec.dtype == tf.bool else None
  _check_nesting(value, max_depth, leaves, spec.dtype.name, where)
  try:
    return np.array(value, dtype=spec.dtype.as_numpy_dtype)
  except (ValueError, TypeError, OverflowError) as e:
    raise bad_request('%s: not a %s tensor (%s)' % (where, spec.dtype.name, e)) from None


def _check_rows(count, limits, where):
  if count > limits.max_images_per_request:
    raise bad_request('%s holds %d instances; this server takes at most %d per request '
                      '(--max_images_per_request): split it' % (
                          where, count, limits.max_images_per_request))


def _is_named(instance):
  """An instance naming its inputs: an object other than a bare {"b64": ...}."""
  return isinstance(instance, dict) and not set(instance) <= {'b64'}


def parse_request(body, signature, limits=DEFAULT_LIMITS):
  """A predict request body (parsed JSON) -> (feeds, row_format, rows).

  rows is the common batch size of the feeds, or None when they disagree or one is a scalar
  (columnar requests may feed inputs of different first dimensions; those are never merged
  with others). Messages follow TF Serving's json_tensor.cc where it has one.
  """
  if not isinstance(body, dict):
    raise bad_request('the request body must be a JSON object')
  has_instances, has_inputs = 'instances' in body, 'inputs' in body
  if has_instances == has_inputs:
    raise bad_request('Missing \'inputs\' or \'instances\' key' if not has_instances else
                      'Request body has both \'inputs\' and \'instances\'; give one')
  names = sorted(signature.inputs)
  feeds = {}
  if has_instances:
    instances = body['instances']
    if not isinstance(instances, list) or not instances:
      raise bad_request('"instances" must be a non-empty list')
    _check_rows(len(instances), limits, '"instances"')
    named = _is_named(instances[0])
    for index, instance in enumerate(instances):
      if named and not isinstance(instance, dict):
        raise bad_request('Expecting object but got list at item %d of input list' % index)
      if not named and _is_named(instance):
        raise bad_request('Expecting value/list but got object at item %d of input list' %
                          index)
    if len(names) > 1 and not named:
      raise bad_request('this signature has inputs %s: every instance must be an object '
                        'naming all of them' % names)
    for name in names:
      rows = []
      for index, instance in enumerate(instances):
        if named:
          if set(instance) != set(names):
            raise bad_request('instances[%d] names %s; the signature\'s inputs are %s' % (
                index, sorted(instance), names))
          rows.append(instance[name])
        else:
          rows.append(instance)
      shapes = set()
      arrays = []
      for index, row in enumerate(rows):
        array = _to_array(row, signature.inputs[name], 'instances[%d]' % index, limits,
                          instance=True)
        shapes.add(array.shape)
        arrays.append(array)
      if len(shapes) > 1:
        raise bad_request('instances of input %r have different shapes %s; all must have the '
                          'same' % (name, sorted(shapes)))
      feeds[name] = np.stack(arrays)
  else:
    inputs = body['inputs']
    if _is_named(inputs):
      missing = set(names) - set(inputs)
      if missing:  # keys the signature does not have are ignored, as TF Serving does
        raise bad_request('"inputs" lacks %s; the signature\'s inputs are %s' % (
            sorted(missing), names))
      values = inputs
    elif len(names) == 1:
      values = {names[0]: inputs}
    else:
      raise bad_request('this signature has inputs %s: "inputs" must be an object naming all '
                        'of them' % names)
    for name in names:
      if isinstance(values[name], list):
        _check_rows(len(values[name]), limits, 'inputs[%r]' % name)
      feeds[name] = _to_array(values[name], signature.inputs[name], 'inputs[%r]' % name,
                              limits)
  batch_sizes = {a.shape[0] if a.ndim else None for a in feeds.values()}
  rows = batch_sizes.pop() if len(batch_sizes) == 1 else None
  return feeds, has_instances, rows


def _float32_text(value):
  """A float32 as TF Serving writes it: %g's 6 significant digits, or 9 where 6 do not give the
  same float32 back; a whole number keeps a '.0'; non-finite values are NaN/Infinity tokens."""
  if not math.isfinite(value):
    return 'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')
  text = '%.6g' % value
  if np.float32(text) != np.float32(value):
    text = '%.9g' % value
  if text.lstrip('-').isdigit():
    text += '.0'
  return text


def _value_text(value):
  """JSON text of a value from ndarray.tolist(); non-finite floats as NaN/Infinity tokens."""
  if isinstance(value, float) and not math.isfinite(value):
    return _float32_text(value)
  if isinstance(value, list):
    return '[%s]' % ','.join(_value_text(v) for v in value)
  return orjson.dumps(value).decode('utf-8')


def _array_text(array, name):
  """JSON text of one output tensor, TF Serving's way: float32 by _float32_text, strings as
  {"b64": ...} for outputs whose name ends in _bytes, else as UTF-8 text."""
  if array.dtype == object:
    if name.endswith('_bytes'):
      values = np.vectorize(lambda b: {'b64': base64.b64encode(b).decode('ascii')},
                            otypes=[object])(array).tolist()
    else:
      values = np.vectorize(lambda b: b.decode('utf-8', 'replace'), otypes=[object])(
          array).tolist()
    return orjson.dumps(values).decode('utf-8')
  if array.dtype == np.float32:
    if array.ndim == 0:
      return _float32_text(float(array))
    return '[%s]' % ','.join(_array_text(row, name) for row in array)
  values = array.tolist()
  if array.dtype.kind == 'f' and not np.isfinite(array).all():
    return _value_text(values)
  return orjson.dumps(values).decode('utf-8')


def format_response(outputs, row_format):
  """{output key: array} -> the response body (bytes) TF Serving gives for the request's format.

  Written by hand rather than by a JSON library: TF Serving's float32 text (6 significant
  digits) and its NaN/Infinity tokens are not what any of them write.
  """
  if row_format:
    sizes = {a.shape[0] if a.ndim else None for a in outputs.values()}
    if len(sizes) != 1 or None in sizes:
      raise bad_request('outputs have different batch sizes; use the columnar "inputs" format')
    if len(outputs) == 1:
      (name, array), = outputs.items()
      return ('{"predictions":%s}' % _array_text(array, name)).encode('utf-8')
    count = sizes.pop()
    names = sorted(outputs)
    rows = ['{%s}' % ','.join('%s:%s' % (orjson.dumps(name).decode('utf-8'),
                                         _array_text(outputs[name][i], name))
                              for name in names) for i in range(count)]
    return ('{"predictions":[%s]}' % ','.join(rows)).encode('utf-8')
  if len(outputs) == 1:
    (name, array), = outputs.items()
    return ('{"outputs":%s}' % _array_text(array, name)).encode('utf-8')
  return ('{"outputs":{%s}}' % ','.join(
      '%s:%s' % (orjson.dumps(name).decode('utf-8'), _array_text(outputs[name], name))
      for name in sorted(outputs))).encode('utf-8')


################################################################################
# Batching
################################################################################


class _Pending(object):

  def __init__(self, feeds, rows, future):
    self.feeds = feeds
    self.rows = rows
    self.future = future


class _Batch(object):
  """Requests of one version, signature and per-row shape waiting for one model call."""

  def __init__(self, key, version, signature):
    self.key = key
    self.version = version
    self.signature = signature
    self.pending = []
    self.rows = 0
    self.timer = None
    self.queued = False


class Batcher(object):
  """Merges requests in flight at the same time into one model call, as TF Serving's batching.

  A batch is ready when it holds max_batch_size rows or batch_timeout_s after its first
  request; num_batch_threads workers take ready batches in order. A ready batch that waits for
  a worker keeps taking requests until it is full, so under load the batches grow instead of
  queueing up small. Only requests of one version, signature and per-row shape are merged.

  Outputs go back by what each request put in, checked: a merged call must answer exactly one
  output row per input row, else each request is rerun alone, so no request ever gets another's
  rows. If a merged call fails on bad input, each request is rerun alone too, so that one bad
  request cannot fail the others. A request of more than max_batch_size rows runs as calls of
  at most max_batch_size rows, one at a time, so its memory stays that of one batch, and a
  request whose client is gone (cancelled) makes no further calls.
  """

  def __init__(self, executor, max_batch_size, batch_timeout_s, num_batch_threads):
    self._executor = executor
    self._max_rows = max_batch_size
    self._timeout = batch_timeout_s
    self._num_workers = max(1, num_batch_threads)
    self._slots = None  # for calls that are not batched; made in the serving loop
    self._open = {}  # batch key -> the _Batch still taking requests
    self._ready = None
    self._workers = []
    self.calls = 0  # model calls made (for tests and benchmarks)
    self.batched_requests = 0

  def _start(self):
    if self._ready is None:
      self._ready = asyncio.Queue()
      self._slots = asyncio.Semaphore(self._num_workers)
      self._workers = [asyncio.ensure_future(self._work()) for _ in range(self._num_workers)]

  async def run(self, version, signature, feeds, rows):
    """The outputs of one request, computed alone, in a batch with others, or in parts."""
    self._start()
    if rows is None or not signature.batchable or self._max_rows <= 1 or rows == self._max_rows:
      return await self._alone(version, signature, feeds)
    if rows > self._max_rows:
      return await self._in_parts(version, signature, feeds, rows)
    loop = asyncio.get_running_loop()
    key = (id(version), signature.name,
           tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in feeds.items())))
    batch = self._open.get(key)
    if batch is not None and batch.rows + rows > self._max_rows:
      self._close(batch)  # this request would overfill it: it goes as it is
      batch = None
    if batch is None:
      batch = _Batch(key, version, signature)
      batch.timer = loop.call_later(self._timeout, self._queue, batch)
      self._open[key] = batch
    future = loop.create_future()
    batch.pending.append(_Pending(feeds, rows, future))
    batch.rows += rows
    if batch.rows >= self._max_rows:
      self._close(batch)
    return await future

  async def _alone(self, version, signature, feeds):
    async with self._slots:
      return await self._call(version, signature, feeds)

  async def _in_parts(self, version, signature, feeds, rows):
    """Runs a large request max_batch_size rows at a time; a cancelled request stops between
    parts. Outputs that do not come one row per input row make it run whole, as it would alone."""
    parts = []
    for start in range(0, rows, self._max_rows):
      part = {k: v[start:start + self._max_rows] for k, v in feeds.items()}
      outputs = await self._alone(version, signature, part)
      if not _rows_match(outputs, min(self._max_rows, rows - start)):
        return await self._alone(version, signature, feeds)
      parts.append(outputs)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def _close(self, batch):
    """No more requests join the batch; it goes to the workers."""
    if self._open.get(batch.key) is batch:
      del self._open[batch.key]
    self._queue(batch)

  def _queue(self, batch):
    if not batch.queued:
      batch.queued = True
      self._ready.put_nowait(batch)

  async def _work(self):
    while True:
      batch = await self._ready.get()
      if self._open.get(batch.key) is batch:
        del self._open[batch.key]  # taken by a worker: later requests start a new batch
      batch.timer.cancel()
      await self._run_batch(batch.version, batch.signature, batch.pending)

  async def _run_batch(self, version, signature, pending):
    # A request whose client is gone (timed out, disconnected) is not computed.
    pending = [p for p in pending if not p.future.done()]
    if not pending:
      return
    try:
      if len(pending) == 1:
        outputs = await self._call(version, signature, pending[0].feeds)
        _resolve(pending[0].future, result=outputs)
        return
      merged = {k: np.concatenate([p.feeds[k] for p in pending]) for k in pending[0].feeds}
      self.batched_requests += len(pending)
      try:
        outputs = await self._call(version, signature, merged)
        lined_up = _rows_match(outputs, sum(p.rows for p in pending))
      except (ServingError, tf.errors.OpError):
        lined_up = False  # find the bad request(s); the others still get their answer
      if not lined_up:
        for p in pending:
          if p.future.done():
            continue
          try:
            _resolve(p.future, result=await self._call(version, signature, p.feeds))
          except (ServingError, tf.errors.OpError) as e:
            _resolve(p.future, error=e)
        return
      start = 0
      for p in pending:
        _resolve(p.future, result={k: v[start:start + p.rows] for k, v in outputs.items()})
        start += p.rows
    except Exception as e:  # pylint: disable=broad-except
      for p in pending:
        _resolve(p.future, error=e)

  async def _call(self, version, signature, feeds):
    self.calls += 1
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(self._executor, version.run, signature, feeds)

  async def close(self):
    for worker in self._workers:
      worker.cancel()
    await asyncio.gather(*self._workers, return_exceptions=True)


def _rows_match(outputs, rows):
  """True when every output has exactly `rows` rows, one per input row."""
  return all(getattr(v, 'ndim', 0) >= 1 and v.shape[0] == rows for v in outputs.values())


def _resolve(future, result=None, error=None):
  if future.done():  # the request gave up (timeout, client gone)
    return
  if error is not None:
    future.set_exception(error)
  else:
    future.set_result(result)
