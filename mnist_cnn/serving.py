"""The model side of the REST server: loaded SavedModel versions, request tensors and batching.

Kept apart from the HTTP layer (mnist_cnn/serve.py) so that each half can be tested alone. The
JSON conventions are TensorFlow Serving's REST API v1 (tensorflow/serving, api_rest.md): row
format (`instances`) and columnar format (`inputs`), binary values as {"b64": ...}.
"""

import asyncio
import base64
import os
import threading

import numpy as np
import tensorflow as tf
from google.protobuf import json_format

SAVED_MODEL_FILES = ('saved_model.pb', 'saved_model.pbtxt')
SIGNATURE_MAP_TYPE = 'type.googleapis.com/tensorflow.serving.SignatureDefMap'


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
  versions = []
  for name in os.listdir(base_path):
    path = os.path.join(base_path, name)
    if name.isdigit() and os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
      versions.append(int(name))
  return sorted(versions)


def op_error_message(error):
  """The line of a TensorFlow OpError that says what is wrong, without graph-execution noise."""
  lines = [line.strip() for line in error.message.splitlines()]
  meaningful = [line for line in lines if line and not line.startswith(
      ('Graph execution error', 'Detected at node', 'File "', '[[', 'Node:'))]
  return meaningful[0] if meaningful else error.message.strip()


class TensorSpec(object):
  """One signature input: graph tensor name, numpy dtype and shape (None = unknown rank)."""

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

  def check(self, name, array):
    """Raises a 400 ServingError unless array fits this input's rank and known sizes."""
    if self.shape is None:
      if array.ndim < 1:
        raise bad_request('input %r must have a batch dimension; got a scalar' % name)
      return
    if array.ndim != len(self.shape) or any(
        want not in (-1, got) for want, got in zip(self.shape, array.shape)):
      raise bad_request('input %r has shape %s but the signature expects %s (-1: any size)' % (
          name, list(array.shape), self.shape))


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

  def run(self, signature, feeds):
    """Runs a signature on numpy feeds {input key: array}; returns {output key: array}.

    TensorFlow's InvalidArgumentError (an undecodable image, say) becomes a 400.
    """
    feed_dict = {signature.inputs[k].tensor_name: v for k, v in feeds.items()}
    try:
      return self._session.run(signature.outputs, feed_dict=feed_dict)
    except tf.errors.InvalidArgumentError as e:
      raise bad_request(op_error_message(e)) from None

  def metadata(self, model_name):
    """The body of GET /v1/models/{name}/metadata, as TF Serving writes it."""
    signature_defs = {name: json_format.MessageToDict(sd, preserving_proto_field_name=True)
                      for name, sd in sorted(self.signature_defs.items())}
    return {'model_spec': {'name': model_name, 'signature_name': '',
                           'version': str(self.version)},
            'metadata': {'signature_def': {'signature_def': signature_defs,
                                           '@type': SIGNATURE_MAP_TYPE}}}


################################################################################
# JSON <-> tensors
################################################################################


def _decode_b64(value, where):
  """Replaces {"b64": "..."} objects in a nested list by bytes, and str by utf-8 bytes."""
  if isinstance(value, list):
    return [_decode_b64(v, where) for v in value]
  if isinstance(value, dict):
    if set(value) != {'b64'} or not isinstance(value['b64'], str):
      raise bad_request('%s: a binary value must be an object with one key "b64" holding a '
                        'base64 string' % where)
    try:
      return base64.b64decode(value['b64'], validate=True)
    except (ValueError, TypeError):
      raise bad_request('%s: "b64" does not hold valid base64 data' % where) from None
  if isinstance(value, str):
    return value.encode('utf-8')
  raise bad_request('%s: expected a string or {"b64": ...}, got %s' % (
      where, type(value).__name__))


def _to_array(value, spec, where):
  """A JSON value -> numpy array of the input's dtype, or a 400 saying what is wrong."""
  if spec.dtype == tf.string:
    decoded = _decode_b64(value, where)
    try:
      return np.array(decoded, dtype=object)
    except ValueError:
      raise bad_request('%s: nested lists of different lengths' % where) from None
  try:
    array = np.array(value, dtype=spec.dtype.as_numpy_dtype)
  except (ValueError, TypeError) as e:
    # Only failed conversions pay for walking the value to say what is wrong with it.
    if _holds_object(value):
      raise bad_request('%s: {"b64": ...} or other objects are only for string inputs; this '
                        'input is %s' % (where, spec.dtype.name)) from None
    raise bad_request('%s: not a %s tensor (%s)' % (where, spec.dtype.name, e)) from None
  if spec.dtype.is_integer and not _all_integral(value):
    raise bad_request('%s: expected integers for a %s input' % (where, spec.dtype.name))
  return array


def _holds_object(value):
  if isinstance(value, dict):
    return True
  if isinstance(value, list):
    return any(_holds_object(v) for v in value)
  return False


def _all_integral(value):
  if isinstance(value, list):
    return all(_all_integral(v) for v in value)
  return isinstance(value, int) and not isinstance(value, bool)


def parse_request(body, signature):
  """A predict request body (parsed JSON) -> (feeds, row_format, rows).

  rows is the common batch size of the feeds, or None when they disagree (columnar requests
  may feed inputs of different first dimensions; those are never merged with others).
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
    named = all(isinstance(i, dict) and not set(i) <= {'b64'} for i in instances)
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
        array = _to_array(row, signature.inputs[name], 'instances[%d]' % index)
        shapes.add(array.shape)
        arrays.append(array)
      if len(shapes) > 1:
        raise bad_request('instances of input %r have different shapes %s; all must have the '
                          'same' % (name, sorted(shapes)))
      feeds[name] = np.stack(arrays)
  else:
    inputs = body['inputs']
    if isinstance(inputs, dict) and not set(inputs) <= {'b64'}:
      if set(inputs) != set(names):
        raise bad_request('"inputs" names %s; the signature\'s inputs are %s' % (
            sorted(inputs), names))
      values = inputs
    elif len(names) == 1:
      values = {names[0]: inputs}
    else:
      raise bad_request('this signature has inputs %s: "inputs" must be an object naming all '
                        'of them' % names)
    for name in names:
      feeds[name] = _to_array(values[name], signature.inputs[name], 'inputs[%r]' % name)
  for name, array in feeds.items():
    signature.inputs[name].check(name, array)
  batch_sizes = {a.shape[0] for a in feeds.values() if a.ndim}
  rows = batch_sizes.pop() if len(batch_sizes) == 1 else None
  return feeds, has_instances, rows


def _json_value(array, name):
  if array.dtype == object:  # strings: b64 for *_bytes outputs, as TF Serving does
    if name.endswith('_bytes'):
      return np.vectorize(lambda b: {'b64': base64.b64encode(b).decode('ascii')},
                          otypes=[object])(array).tolist()
    return np.vectorize(lambda b: b.decode('utf-8', 'replace'), otypes=[object])(
        array).tolist()
  return array.tolist()


def format_response(outputs, row_format):
  """{output key: array} -> the response body TF Serving gives for the request's format."""
  if row_format:
    sizes = {a.shape[0] if a.ndim else None for a in outputs.values()}
    if len(sizes) != 1 or None in sizes:
      raise bad_request('outputs have different batch sizes; use the columnar "inputs" format')
    if len(outputs) == 1:
      (name, array), = outputs.items()
      return {'predictions': _json_value(array, name)}
    columns = {name: _json_value(array, name) for name, array in outputs.items()}
    count = sizes.pop()
    return {'predictions': [{name: columns[name][i] for name in sorted(columns)}
                            for i in range(count)]}
  if len(outputs) == 1:
    (name, array), = outputs.items()
    return {'outputs': _json_value(array, name)}
  return {'outputs': {name: _json_value(array, name) for name, array in outputs.items()}}


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
  queueing up small. Only requests of one version, signature and per-row shape are merged. If
  a merged call fails on bad input, each request is rerun alone so that one bad request cannot
  fail the others.
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
    """The outputs of one request, computed alone or in a batch with others."""
    self._start()
    if self._max_rows <= 1 or rows is None or not signature.batchable or rows >= self._max_rows:
      async with self._slots:
        return await self._call(version, signature, feeds)
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
    try:
      if len(pending) == 1:
        outputs = await self._call(version, signature, pending[0].feeds)
        _resolve(pending[0].future, result=outputs)
        return
      merged = {k: np.concatenate([p.feeds[k] for p in pending]) for k in pending[0].feeds}
      self.batched_requests += len(pending)
      try:
        outputs = await self._call(version, signature, merged)
      except ServingError:
        for p in pending:  # find the bad request(s); the others still get their answer
          try:
            _resolve(p.future, result=await self._call(version, signature, p.feeds))
          except ServingError as e:
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


def _resolve(future, result=None, error=None):
  if future.done():  # the request gave up (timeout, client gone)
    return
  if error is not None:
    future.set_exception(error)
  else:
    future.set_result(result)
