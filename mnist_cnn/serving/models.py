"""The model side of the server: SavedModel versions on disk, loaded and swapped.

`ModelManager` keeps the versions under a base path that its `VersionPolicy` names loaded
(the highest one by default) and retires those it replaces once drained; a `LoadedVersion` is
one SavedModel in a Session, with its signatures and a callable per signature. Request JSON
is json_tensors.py's, merging requests batching.py's, the HTTP side rest_api.py's, the gRPC
side grpc_api.py's, what memory a swap gives back memory.py's.
"""

import asyncio
import os
import threading
import time
import weakref

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import config_pb2

from mnist_cnn.serving import inference_graph
from mnist_cnn.serving import memory
from official.utils import export
from official.utils import precision


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


def check_method(signature, verb, kind):
  """TF Serving's 400 unless `signature` is a tensorflow/serving/<verb> one; `kind` names the
  expected signature in the message (REST says the verb, gRPC 'prediction', 'classification')."""
  wanted = 'tensorflow/serving/%s' % verb
  if signature.method_name != wanted:
    raise bad_request('Expected %s signature method_name to be %s. Was: %s' % (
        kind, wanted, signature.method_name))


def parse_version(version):
  """The int a request's version text names (None for none), or TF Serving's 400."""
  if version is None:
    return None
  number = export.version_number(version)
  if number is None:
    shown = version if len(version) <= 30 else version[:27] + '...'
    raise bad_request('Failed to convert version: %s to numeric.' % shown)
  return number


def not_found_for(name, version):
  """TF Serving's 404 for a model name and version text (None: the latest) not served."""
  return not_found('Servable not found for request: %s' % (
      'Latest(%s)' % name if version is None else 'Specific(%s, %s)' % (name, version)))


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
  that a replaced version is closed only once drained.

  With optimize (the default) the signatures run on the frozen graph of inference_graph.py,
  in `serving_precision` ('auto', 'fp32', 'bf16'; what it became is `self.precision`). A
  SavedModel that cannot be frozen is served as loaded, and says why in `self.optimized`.
  """

  def __init__(self, version, path, session_config=None, optimize=True,
               serving_precision='auto', cpu_has_bf16=None):
    self.version = version
    self.path = path
    if cpu_has_bf16 is None:
      cpu_has_bf16 = precision.cpu_supports_bf16()
    self._cpu_has_bf16 = cpu_has_bf16
    self.serving_info = export.read_serving_info(path)
    self.precision = inference_graph.choose_precision(serving_precision, self.serving_info,
                                                      cpu_has_bf16)
    config = inference_graph.session_config(session_config, self.precision)
    self._session, meta_graph = _load(path, config)
    self.signature_defs = dict(meta_graph.signature_def)
    self.signatures = {name: Signature(name, sd) for name, sd in self.signature_defs.items()}
    self._callables = {}
    self.optimized = 'no: not asked'
    if optimize:
      self._optimize(meta_graph, config)
    self._lock = threading.Lock()
    self._in_flight = 0
    self._drained = threading.Event()
    self._drained.set()
    self._closed = False

  def _optimize(self, meta_graph, config):
    """Swaps the loaded session for one on the frozen graph (see inference_graph.py)."""
    if not inference_graph.can_freeze(meta_graph):
      self.optimized = 'no: the SavedModel needs an initialisation step (tables or assets)'
      return
    try:
      graph_def = inference_graph.freeze(self._session, self.signature_defs)
      frozen = inference_graph.load_frozen(graph_def, config)
    except (ValueError, TypeError, KeyError, tf.errors.OpError) as e:
      self.optimized = 'no: cannot freeze the graph (%s)' % str(e).split('\n')[0]
      return
    callables = {}
    differs = self._differs(frozen, callables)
    if differs:
      frozen.close()
      self.optimized = 'no: %s' % differs
      return
    self._session.close()
    self._session = frozen
    self._callables.update(callables)  # made and warmed up: first requests pay nothing
    self.optimized = 'yes'

  def _differs(self, frozen, callables):
    """Why the frozen graph cannot replace the loaded one, or None: every signature must run
    there, and (in fp32) answer a random image as the loaded graph does; that call is also
    its warm-up. Fills `callables` as _callable keys them."""
    for signature in self.signatures.values():
      names = tuple(sorted(signature.inputs))
      key = _callable_key(signature, names)
      try:
        frozen_call = _make_callable(frozen, key)
      except (ValueError, TypeError, KeyError, tf.errors.OpError) as e:
        return 'signature %s does not run on the frozen graph (%s)' % (
            signature.name, str(e).split('\n')[0])
      callables[key] = frozen_call
      feeds = _random_feeds(signature, names, self.serving_info.get('image_shape'))
      if feeds is None:
        continue
      try:
        answer = frozen_call(*feeds)
        if self.precision == 'fp32':  # bf16 answers may differ by rounding: it must run
          loaded_call = _make_callable(self._session, key)
          if not all(np.allclose(a, b, rtol=1e-3, atol=1e-5)
                     for a, b in zip(answer, loaded_call(*feeds))):
            return 'signature %s answers differently on the frozen graph' % signature.name
      except tf.errors.InvalidArgumentError:
        continue  # the graph wants other inputs than random rows: nothing to compare
      except tf.errors.OpError as e:
        return 'signature %s fails on the frozen graph (%s)' % (
            signature.name, op_error_message(e))
    return None

  @property
  def graph(self):
    """The graph the signatures run on (the frozen one when optimized)."""
    return self._session.graph

  def describe(self):
    """What the server logs about how this version computes."""
    slow = (' (this CPU has no native bfloat16: expect it to be several times slower than '
            'fp32)' if self.precision == 'bf16' and not self._cpu_has_bf16 else '')
    return 'precision %s%s, frozen graph: %s' % (self.precision, slow, self.optimized)

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

  def stop_taking_calls(self):
    """From now on acquire() refuses: requests resolve to the version that replaced this one."""
    with self._lock:
      self._closed = True

  @property
  def drained(self):
    """No call in flight."""
    return self._drained.is_set()

  def close_when_drained(self, timeout=None):
    """Takes no new calls, waits for those in flight (at most timeout seconds), then frees the
    session and the callables; returns False when calls were still running at the timeout.

    Closed first, then drained: a call acquired between the drain and the close would run on a
    closed session.
    """
    self.stop_taking_calls()
    drained = self._drained.wait(timeout)
    self._callables.clear()  # each holds an executor with its own copy of the constants
    self._session.close()
    return drained

  def signature(self, name):
    if name not in self.signatures:
      raise not_found('Serving signature name: "%s" not found in signature def' % name)
    return self.signatures[name]

  def _callable(self, signature, names):
    """A callable running the signature on feeds in `names` order, made once.

    Session callables skip the Python client's check of a feed against its placeholder's
    static shape, as TF Serving's C++ session run does: the graph decides.
    """
    key = _callable_key(signature, names)
    if key not in self._callables:
      self._callables[key] = _make_callable(self._session, key)
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


def _callable_key(signature, names):
  """(feed tensor names in `names` order, fetch tensor names in output-key order).

  Callables are kept per feed and fetch tensors, not per signature: `predict` and
  `serving_default` run the same tensors, and each callable holds its own executor with its
  own copy of the constants (the frozen AlexNet: 22 MB each)."""
  return (tuple(signature.inputs[k].tensor_name for k in names),
          tuple(signature.outputs[k] for k in sorted(signature.outputs)))


def _make_callable(session, key):
  """A session callable for a _callable_key: no feed-shape check in Python, as TF Serving's
  C++ session run."""
  feed, fetch = key
  options = config_pb2.CallableOptions(feed=feed, fetch=fetch)
  return session._make_callable_from_options(options)  # pylint: disable=protected-access


def _random_feeds(signature, names, image_shape=None):
  """One random row for each input of a float signature of known row shape, else None. An
  `images` input of no fixed shape (AlexNet's takes [N, h, w, c] and [N, h*w*c]) gets a row of
  the image shape its export records.

  One row, because this is also the frozen graph's first call, and oneDNN lays out the
  constant weights it caches for the batch size of that call. Measured on AlexNet (fp32):
  first called with 1 image, batch-1 calls take 2.2 ms and batches of 16 1,600 images/s;
  first called with 64, 4.5 ms and 2,160 images/s. Serving is tuned for the one-image call.
  """
  rng = np.random.RandomState(0)
  feeds = []
  for name in names:
    spec = signature.inputs[name]
    row_shape = None if spec.shape is None or not spec.batched else spec.shape[1:]
    if row_shape is None and name == export.IMAGES_INPUT and image_shape:
      row_shape = image_shape
    if not spec.dtype.is_floating or row_shape is None or any(d < 0 for d in row_shape):
      return None
    feeds.append(rng.rand(1, *row_shape).astype(spec.dtype.as_numpy_dtype))
  return feeds


def _load(path, session_config):
  """(session, meta graph) of the SavedModel at path; one-line ValueError if it does not load."""
  graph = tf.Graph()
  session = tf.compat.v1.Session(graph=graph, config=session_config)
  try:
    with graph.as_default():
      meta_graph = tf.compat.v1.saved_model.loader.load(
          session, [tf.compat.v1.saved_model.tag_constants.SERVING], path)
  except Exception as e:  # pylint: disable=broad-except
    session.close()
    message = op_error_message(e) if isinstance(e, tf.errors.OpError) else str(e)
    raise ValueError('cannot load the SavedModel at %s: %s' % (
        path, message.strip().split('\n')[0])) from None
  return session, meta_graph


def load_version(*args):
  """LoadedVersion(*args), loaded inside loading()."""
  with memory.loading():
    return LoadedVersion(*args)


def retire(holder):
  """Closes the version in `holder` (no longer taking calls), then frees it; returns (drained,
  freed): whether no call was in flight, and whether it is gone.

  One job: a pool thread that ran close_when_drained keeps the version (its work item holds
  the bound method) until it takes its next job, so a collection started from another thread
  could miss it. Freed means that, once collected, neither the version nor its graph (full of
  reference cycles, so freed only by a collection) is alive: anything else means something
  still holds it.
  """
  version = holder.pop()
  drained = version.close_when_drained(0)
  alive = [weakref.ref(version), weakref.ref(version.graph)]
  del version
  for attempt in range(3):  # a thread finishing the last call may hold it a moment longer
    time.sleep(0.1 * attempt)
    memory.collect_all()
    if all(ref() is None for ref in alive):
      return drained, True
  return drained, False


def log(message):
  print('[serve %s] %s' % (time.strftime('%H:%M:%S'), message), flush=True)


class VersionPolicy(object):
  """Which loadable versions a model serves: TF Serving's ServableVersionPolicy.

  kind 'latest' serves the `count` highest versions that load, 'all' every one, 'specific' the
  `versions` listed that exist. TF Serving's default is latest with 1.
  """

  def __init__(self, kind='latest', count=1, versions=()):
    self.kind = kind
    self.count = count
    self.versions = frozenset(versions)

  def wanted(self, versions):
    """The versions to serve of those on disk (ascending), highest first."""
    highest_first = sorted(versions, reverse=True)
    if self.kind == 'specific':
      return [v for v in highest_first if v in self.versions]
    return highest_first

  def enough(self, served):
    return self.kind == 'latest' and served >= self.count

  def __eq__(self, other):
    return isinstance(other, VersionPolicy) and (self.kind, self.count, self.versions) == (
        other.kind, other.count, other.versions)

  def __repr__(self):
    return {'latest': 'latest %d' % self.count, 'all': 'all'}.get(
        self.kind, 'specific %s' % sorted(self.versions))


class ModelManager(object):
  """Keeps the versions under base_path that its policy names loaded (by default the highest
  one that loads); retires the others once drained. `labels` maps version labels to versions.

  A version that fails to load (copied in without a rename, say, saved_model.pb before its
  variables) is retried after RETRY_FIRST_S, doubling up to RETRY_MAX_S, and meanwhile a
  latest-N policy serves the next highest that loads. A version deleted from disk is unloaded.
  New versions are loaded before those they replace are retired, so a swap never serves
  nothing.
  """

  RETRY_FIRST_S = 1.0
  RETRY_MAX_S = 60.0
  DRAIN_TIMEOUT_S = 60.0

  def __init__(self, name, base_path, executor, session_config=None, optimize=True,
               serving_precision='auto', metrics=None, policy=None):
    self.name = name
    self.base_path = base_path
    self.policy = policy or VersionPolicy()
    self.labels = {}  # label -> version, set by served_models.ServedModels.apply
    self.versions = {}  # version -> LoadedVersion, served
    self.metrics = metrics  # a metrics.Metrics told of each load, or None
    self._executor = executor
    self._load_args = (session_config, optimize, serving_precision)
    self._failed = {}  # version -> (attempts, monotonic time of the next try)
    self._retiring = set()  # tasks of _retire
    self.retired = []  # (version, freed) of each retirement done, for logs and tests

  @property
  def current(self):
    """The highest version served, or None."""
    return self.versions[max(self.versions)] if self.versions else None

  def _due(self, version):
    return time.monotonic() >= self._failed.get(version, (0, 0.0))[1]

  def _record_failure(self, version, path, error):
    attempts = self._failed.get(version, (0, 0.0))[0] + 1
    wait = min(self.RETRY_MAX_S, self.RETRY_FIRST_S * 2 ** (attempts - 1))
    self._failed[version] = (attempts, time.monotonic() + wait)
    log('cannot load version %d of %s from %s (attempt %d; retrying in %.0f s): %s' % (
        version, self.name, path, attempts, wait, str(error).split('\n')[0]))

  async def poll(self):
    """Loads what the policy wants and retires what it no longer does; returns True when the
    versions served changed."""
    loop = asyncio.get_running_loop()
    try:
      on_disk = await loop.run_in_executor(self._executor, export.loadable_versions,
                                           self.base_path)
    except OSError as e:
      log('cannot list %s: %s' % (self.base_path, e))
      return False
    self._failed = {v: f for v, f in self._failed.items() if v in on_disk}
    keep, loaded = [], {}
    for version in self.policy.wanted(on_disk):
      if self.policy.enough(len(keep)):
        break
      if version in self.versions:
        keep.append(version)
      elif self._due(version):
        new = await self._load(version)
        if new is not None:
          keep.append(version)
          loaded[version] = new
    gone = [self.versions[v] for v in sorted(set(self.versions) - set(keep))]
    if not loaded and not gone:
      return False
    self.versions = {v: self.versions.get(v) or loaded[v] for v in keep}
    for version in sorted(loaded):
      new = loaded[version]
      log('serving %s version %d (%s), signatures: %s; %s' % (
          self.name, version, new.path, ', '.join(sorted(new.signatures)), new.describe()))
    if not self.versions:
      log('%s: no version under %s loads: serving nothing until one does' % (
          self.name, self.base_path))
    self._retire_versions(gone)
    return True

  async def _load(self, version):
    """The LoadedVersion of `version`, or None (logged, retried later)."""
    loop = asyncio.get_running_loop()
    path = os.path.join(self.base_path, str(version))
    started = time.monotonic()
    try:
      loaded = await loop.run_in_executor(
          self._executor, load_version, version, path, *self._load_args)
    except Exception as e:  # pylint: disable=broad-except
      self._loaded(False, started)
      self._record_failure(version, path, e)
      return None
    self._loaded(True, started)
    self._failed.pop(version, None)
    await loop.run_in_executor(self._executor, memory.release_memory)
    return loaded

  def _loaded(self, succeeded, started):
    if self.metrics is not None:
      self.metrics.load(self.base_path, succeeded, time.monotonic() - started)

  def versions_in_memory(self):
    """The versions served and those still retiring."""
    return len(self.versions) + len(self._retiring)

  def _retire_versions(self, old_versions):
    """Retires LoadedVersions no longer served (taken out of self.versions already)."""
    memory.keep_out_of_collections()
    for old in old_versions:
      log('retiring version %d of %s once its requests finish' % (old.version, self.name))
      task = asyncio.ensure_future(self._retire([old]))
      self._retiring.add(task)
      task.add_done_callback(self._retiring.discard)

  def retire_all(self):
    """Stops serving every version (the model left the configuration)."""
    old, self.versions = list(self.versions.values()), {}
    self._retire_versions(old)

  async def _retire(self, holder):
    """Retires the version in `holder` (a list, so that no frame of ours keeps it): waits for
    its calls here, on the event loop, so that retirements never hold the threads that those
    calls need, then closes and frees it in one executor job (see retire())."""
    loop = asyncio.get_running_loop()
    holder[0].stop_taking_calls()
    version = holder[0].version
    deadline = loop.time() + self.DRAIN_TIMEOUT_S
    while not holder[0].drained and loop.time() < deadline:
      await asyncio.sleep(0.05)
    drained, freed = await loop.run_in_executor(self._executor, retire, holder)
    memory.keep_out_of_collections()
    self.retired.append((version, freed))
    log('retired version %d of %s%s: %s' % (
        version, self.name, '' if drained else ' (requests still running after %.0f s were '
        'cut off)' % self.DRAIN_TIMEOUT_S, 'its memory is freed' if freed else
        'it is still referenced, so its memory is not freed (a bug: please report it)'))

  def resolve(self, version=None, label=None):
    """The loaded version a request names (a version number as text, a label, or neither for
    the highest), or the error TF Serving gives."""
    if label is not None:
      if label not in self.labels:
        raise bad_request('Unrecognized servable version label: %s' % label)
      version = str(self.labels[label])
    number = parse_version(version)
    found = self.current if version is None else self.versions.get(number)
    if found is None:
      raise not_found_for(self.name, version)
    return found

  def close(self):
    for version in self.versions.values():
      version.close_when_drained(10.0)
