"""The gRPC side of the server: TF Serving's PredictionService and ModelService on the REST
side's event loop, with the same models, batcher, limits and error statuses.

TF Serving's official Python client (`tensorflow-serving-api`'s PredictionServiceStub with
`tf.make_tensor_proto`) works against it unchanged; the messages are tfs_protos.py's. An error
is the gRPC status TF Serving gives (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED...), the
code metrics.py maps each REST status to, so a request gets the same verdict on either API.
"""

import asyncio
import time

import grpc
from google.protobuf import message

from mnist_cnn.serving import memory
from mnist_cnn.serving import metrics
from mnist_cnn.serving import model_config
from mnist_cnn.serving import models
from mnist_cnn.serving import proto_tensors
from mnist_cnn.serving import served_models
from mnist_cnn.serving import tfs_protos

_METHOD_NAMES = {'classify': 'classification', 'regress': 'regression'}


class _Abort(Exception):
  """An answer other than OK: a gRPC status code name and its message."""

  def __init__(self, code, message):
    super().__init__(message)
    self.code = code
    self.message = message


def _abort_for(error):
  return _Abort(metrics.status_code(error.status), error.message)


def _time_out(task, seen):
  seen['timed_out'] = True
  task.cancel()


def _names(model_spec):
  """(name, version text or None, label or None) of a ModelSpec, as the REST path gives them."""
  choice = model_spec.WhichOneof('version_choice')
  return (model_spec.name,
          str(model_spec.version.value) if choice == 'version' else None,
          model_spec.version_label if choice == 'version_label' else None)


def _spec(response_spec, name, loaded, signature_name=None):
  response_spec.name = name
  response_spec.version.value = loaded.version
  if signature_name is not None:
    response_spec.signature_name = signature_name


class GrpcApi(object):
  """The servicer methods; `served` is a served_models.ServedModels."""

  def __init__(self, served, batcher, request_timeout_s, limits, max_request_bytes,
               metrics_=None):
    self.served = served
    self.batcher = batcher
    self.request_timeout_s = request_timeout_s
    self.limits = limits
    self.max_request_bytes = max_request_bytes
    self.metrics = metrics_
    self.requests = 0

  def handlers(self):
    """The generic handlers of both services, for grpc.aio.server.add_generic_rpc_handlers."""
    methods = {'Predict': self._predict, 'GetModelMetadata': self._metadata,
               'Classify': self._classify, 'Regress': self._regress,
               'MultiInference': self._multi_inference, 'GetModelStatus': self._status,
               'HandleReloadConfigRequest': self._reload}
    generic = []
    for service, calls in tfs_protos.SERVICES.items():
      table = {}
      for method, request, response in calls:
        # Requests are parsed in the call, not by gRPC: bytes that are no such message get
        # INVALID_ARGUMENT (REST's 400 for a body that is no JSON), not gRPC's UNKNOWN.
        table[method] = grpc.unary_unary_rpc_method_handler(
            self._wrap(method, methods[method], tfs_protos.message(request),
                       tfs_protos.message(response)),
            response_serializer=tfs_protos.message(response).SerializeToString)
      generic.append(grpc.method_handlers_generic_handler(
          '%s.%s' % (tfs_protos.PACKAGE, service), table))
    return generic

  def _wrap(self, api, method, request_class, response_class):
    async def call(request_bytes, context):
      self.requests += 1
      started, seen = time.monotonic(), {}
      response, error = response_class(), None
      # A timer cancelling this task, not asyncio.wait_for: that runs the call in a task of
      # its own, one more for every request.
      # Reloads are not timed: they take as long as their loads (as in TF Serving).
      timer = None if api == 'HandleReloadConfigRequest' else asyncio.get_running_loop(
          ).call_later(self.request_timeout_s, _time_out, asyncio.current_task(), seen)
      try:
        try:
          request = request_class.FromString(request_bytes)
        except message.DecodeError as e:
          raise _Abort('INVALID_ARGUMENT', 'the request is not a %s: %s' % (
              request_class.DESCRIPTOR.name, e)) from None
        await method(request, response, seen)
      except asyncio.CancelledError:
        if not seen.get('timed_out'):
          raise  # the client went away
        error = _Abort('DEADLINE_EXCEEDED', 'Request timed out after %.1f s' %
                       self.request_timeout_s)
      except models.ServingError as e:
        error = _abort_for(e)
      except _Abort as e:
        error = e
      except Exception as e:  # pylint: disable=broad-except
        models.log('error in gRPC %s: %s: %s' % (api, type(e).__name__, e))
        error = _Abort('INTERNAL', 'Internal error: %s' % type(e).__name__)
      finally:
        if timer is not None:
          timer.cancel()
        memory.release_after_request(len(request_bytes))
      if self.metrics is not None and 'model' in seen:
        self.metrics.request(seen['model'], api, 'GRPC', error.code if error else 'OK',
                             time.monotonic() - started)
      if error is None:
        return response
      await context.abort(getattr(grpc.StatusCode, error.code), error.message)
    return call

  def _seen(self, seen, name):
    # Names this server does not serve count under '', as on REST.
    seen['model'] = name if self.served.serves(name) else ''

  async def _predict(self, request, response, seen):
    name, version, label = _names(request.model_spec)
    self._seen(seen, name)
    loaded = self.served.acquire(name, version, label)
    try:
      signature_name = request.model_spec.signature_name or 'serving_default'
      signature = loaded.signature(signature_name)
      models.check_method(signature, 'predict', 'prediction')
      feeds, rows = self._feeds(request, signature)
      fetch = list(request.output_filter) or sorted(signature.outputs)
      for alias in fetch:
        if alias not in signature.outputs:
          raise _Abort('INVALID_ARGUMENT', 'output tensor alias not found in signature: %s '
                       'Outputs expected to be in the set {%s}.' % (
                           alias, ','.join(sorted(signature.outputs))))
      if len(set(fetch)) != len(fetch):
        raise _Abort('INVALID_ARGUMENT', 'duplicate output tensor alias in output_filter')
      outputs = await self.batcher.run(loaded, signature, feeds, rows)
    finally:
      loaded.release()
    for alias in fetch:
      proto_tensors.fill(response.outputs[alias], outputs[alias])
    _spec(response.model_spec, name, loaded, signature_name)

  def _feeds(self, request, signature):
    """(feeds, rows) of a PredictRequest: every signature input, no other."""
    names = sorted(signature.inputs)
    extra = sorted(set(request.inputs) - set(names))
    missing = sorted(set(names) - set(request.inputs))
    if extra or missing:
      raise _Abort('INVALID_ARGUMENT', 'input size does not match signature: %d!=%d len({%s}) '
                   '!= len({%s}). Sent extra: {%s}. Missing but required: {%s}.' % (
                       len(request.inputs), len(names), ','.join(sorted(request.inputs)),
                       ','.join(names), ','.join(extra), ','.join(missing)))
    feeds = {name: proto_tensors.to_array(request.inputs[name], signature.inputs[name],
                                          'input %r' % name, self.limits,
                                          self.max_request_bytes)
             for name in names}
    batch_sizes = {a.shape[0] if a.ndim else None for a in feeds.values()}
    return feeds, batch_sizes.pop() if len(batch_sizes) == 1 else None

  async def _metadata(self, request, response, seen):
    name, version, label = _names(request.model_spec)
    self._seen(seen, name)
    fields = list(request.metadata_field)
    if not fields:
      raise _Abort('INVALID_ARGUMENT',
                   'GetModelMetadataRequest must specify at least one metadata_field')
    for field in fields:
      if field != 'signature_def':
        raise _Abort('INVALID_ARGUMENT', 'Metadata field %s is not supported' % field)
    loaded = self.served.resolve(name, version, label)
    signature_map = tfs_protos.SignatureDefMap()
    for key, signature_def in loaded.signature_defs.items():
      signature_map.signature_def[key].MergeFromString(signature_def.SerializeToString())
    response.metadata['signature_def'].Pack(signature_map)
    _spec(response.model_spec, name, loaded)

  async def _status(self, request, response, seen):
    name, version, label = _names(request.model_spec)
    self._seen(seen, name)
    for number in self.served.status(name, version, label):
      status = response.model_version_status.add(version=number)
      status.state = tfs_protos.ModelVersionStatus.State.Value('AVAILABLE')
      status.status.SetInParent()  # error_code OK: TF Serving prints `status {}`

  async def _check_method(self, model_spec, verb, seen):
    """Classify and Regress on an export: TF Serving's answer for a signature of another
    method. No export here has a classify or regress signature, and their tf.Example input is
    not read: one that has gets UNIMPLEMENTED rather than a wrong answer."""
    name, version, label = _names(model_spec)
    self._seen(seen, name)
    loaded = self.served.resolve(name, version, label)
    signature = loaded.signature(model_spec.signature_name or 'serving_default')
    models.check_method(signature, verb, _METHOD_NAMES[verb])
    raise _Abort('UNIMPLEMENTED', '%s signatures (tf.Example inputs) are not served by this '
                 'server; use Predict' % verb)

  async def _classify(self, request, response, seen):
    await self._check_method(request.model_spec, 'classify', seen)

  async def _regress(self, request, response, seen):
    await self._check_method(request.model_spec, 'regress', seen)

  async def _multi_inference(self, request, response, seen):
    if not request.tasks:
      raise _Abort('INVALID_ARGUMENT', 'Tasks is empty')
    if len({task.model_spec.name for task in request.tasks}) > 1:
      raise _Abort('INVALID_ARGUMENT', 'All ModelSpecs in a MultiInferenceRequest must access '
                   'the same model name.')
    for task in request.tasks:
      verb = task.method_name.rpartition('/')[2]
      if task.method_name != 'tensorflow/serving/%s' % verb or verb not in _METHOD_NAMES:
        raise _Abort('INVALID_ARGUMENT', 'Unsupported signature method_name: %s' %
                     task.method_name)
      await self._check_method(task.model_spec, verb, seen)

  async def _reload(self, request, response, seen):
    seen['model'] = ''  # not one model's request
    try:
      entries = model_config.from_proto(request.config, 'ReloadConfigRequest')
    except ValueError as e:
      raise _Abort('INVALID_ARGUMENT', str(e)) from None
    try:
      # Shielded: a client that goes away does not stop a configuration half-applied, or
      # leave a version loaded that no model holds.
      await asyncio.shield(self.served.apply(entries))
    except served_models.ConfigError as e:
      raise _Abort('FAILED_PRECONDITION', str(e)) from None
    models.log('configuration reloaded over gRPC: %s' % ', '.join(e.name for e in entries))
    response.status.SetInParent()


async def start(api, host, port, max_request_bytes, max_concurrent_rpcs, header_timeout_s):
  """Starts a grpc.aio server for `api` on host:port (0: a free one); returns (server, port).

  A connection must finish HTTP/2's preface and settings within header_timeout_s, as REST's
  headers must (gRPC's own default is 120 s: a slowloris holds a connection that long).
  """
  server = grpc.aio.server(
      options=[('grpc.max_receive_message_length', max_request_bytes),
               ('grpc.max_send_message_length', -1),
               ('grpc.so_reuseport', 0),
               ('grpc.server_handshake_timeout_ms', int(header_timeout_s * 1000))],
      maximum_concurrent_rpcs=max_concurrent_rpcs)
  server.add_generic_rpc_handlers(api.handlers())
  bound = server.add_insecure_port('%s:%d' % (host, port))
  if bound == 0:
    raise OSError('cannot listen for gRPC on %s:%d (in use?)' % (host, port))
  await server.start()
  return server, bound
