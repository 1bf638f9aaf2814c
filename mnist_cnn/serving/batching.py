"""Merging requests in flight into one model call, as TF Serving's batching does, without
ever handing one client's rows to another.
"""

import asyncio
import collections

import numpy as np
import tensorflow as tf

from mnist_cnn.serving import models
from mnist_cnn.serving import text_proto

Settings = collections.namedtuple('Settings', ['max_batch_size', 'batch_timeout_micros',
                                               'num_batch_threads'])
# BatchingParameters fields TF Serving has and this batcher has no use for: read, not applied.
_IGNORED_PARAMETERS = ('max_enqueued_batches', 'thread_pool_name', 'allowed_batch_sizes',
                       'pad_variable_length_inputs', 'max_execution_batch_size',
                       'enable_large_batch_splitting')


def read_parameters(path, settings):
  """`settings` with what TF Serving's --batching_parameters_file (BatchingParameters, text
  format: `max_batch_size { value: 32 }` ...) sets; a one-line ValueError naming the file."""
  where = '--batching_parameters_file %s' % path
  try:
    with open(path, encoding='utf-8') as f:
      message = text_proto.parse(f.read())
    text_proto.check_fields(message, set(Settings._fields) | set(_IGNORED_PARAMETERS), where)
    values = {}
    for field in Settings._fields:
      wrapper = text_proto.single(message, field, None, dict, where)
      if wrapper is not None:
        text_proto.check_fields(wrapper, {'value'}, '%s: %s' % (where, field))
        values[field] = text_proto.single(wrapper, 'value', 0, int, '%s: %s' % (where, field))
  except OSError as e:
    raise ValueError('%s cannot be read: %s' % (where, e.strerror or e)) from None
  except (text_proto.TextProtoError, UnicodeDecodeError) as e:
    raise ValueError('%s: %s' % (where, e)) from None
  for field, value in values.items():
    if value < (0 if field == 'batch_timeout_micros' else 1):
      raise ValueError('%s: %s of %d is out of range' % (where, field, value))
  return settings._replace(**values)


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

  A batch is ready when it holds max_batch_size rows, batch_timeout_s after its first request,
  or as soon as no other request is arriving (between its body being read and its handing to
  the batcher; the HTTP side counts them with arriving()/arrived()): a lone request does not
  wait for company that is not coming, and under load a batch takes every request already on
  its way. num_batch_threads workers take ready batches in order. A ready batch that waits for
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
    self._arriving = 0

  def arriving(self):
    """A request's body is being read or parsed: open batches may wait for it."""
    self._arriving += 1

  def arrived(self):
    """That request is handed over (or failed): when none is left arriving, open batches go."""
    self._arriving -= 1
    if self._arriving == 0 and self._ready is not None:
      for batch in list(self._open.values()):
        self._queue(batch)  # still open to requests until a worker takes it

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
    elif self._arriving == 0:
      self._queue(batch)
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
      del batch  # waiting for the next one must not keep this one's version (and feeds) alive

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
      except (models.ServingError, tf.errors.OpError):
        lined_up = False  # find the bad request(s); the others still get their answer
      if not lined_up:
        for p in pending:
          if p.future.done():
            continue
          try:
            _resolve(p.future, result=await self._call(version, signature, p.feeds))
          except (models.ServingError, tf.errors.OpError) as e:
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

