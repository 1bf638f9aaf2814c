"""TF Serving's gRPC API, called with TF Serving's official client (`tensorflow-serving-api`)
over loopback, and the model configuration it shares with REST: several models, version
policies, labels, reloads."""

import importlib
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2

from mnist_cnn import serve
from mnist_cnn.serving import json_tensors
from mnist_cnn.serving import model_config
from mnist_cnn.serving import models
from mnist_cnn.serving import proto_tensors
from mnist_cnn.serving import tfs_protos
from official.utils import export
from benchmarks import serving_abuse
from tests import server_helpers
from tests.conftest import parse_flags
from tests.serving import test_metrics

try:
  from tensorflow_serving.apis import classification_pb2
  from tensorflow_serving.apis import get_model_metadata_pb2
  from tensorflow_serving.apis import get_model_status_pb2
  from tensorflow_serving.apis import inference_pb2
  from tensorflow_serving.apis import model_management_pb2
  from tensorflow_serving.apis import model_service_pb2_grpc
  from tensorflow_serving.apis import predict_pb2
  from tensorflow_serving.apis import prediction_service_pb2_grpc
except ImportError as e:
  raise ImportError('these tests call the server with TF Serving\'s own client: install it '
                    'with `.venv/bin/pip install --no-deps -c constraints.txt '
                    'tensorflow-serving-api` (README, set-up command 1): %s' % e) from None

CONFIG = '''
model_config_list {
  config {
    name: "digits"  base_path: "%(digits)s"  model_platform: "tensorflow"
    model_version_policy { all {} }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "resnet"  base_path: "%(resnet)s" }
  config { name: "googlenet"  base_path: "%(googlenet)s" }
}
'''
MODELS = ('digits', 'resnet', 'googlenet')


def _model_spec(spec, name, version, label):
  spec.name = name
  if version is not None:
    spec.version.value = version
  if label is not None:
    spec.version_label = label


class Client(object):
  """The official stubs on one channel."""

  def __init__(self, port):
    self.channel = grpc.insecure_channel('127.0.0.1:%d' % port, options=[
        ('grpc.max_send_message_length', 64 * 1024 * 1024)])
    self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
    self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

  def predict(self, name, inputs, version=None, label=None, signature_name='',
              output_filter=()):
    request = predict_pb2.PredictRequest()
    _model_spec(request.model_spec, name, version, label)
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
      request.inputs[key].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                   else tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return self.predict_stub.Predict(request, timeout=60)

  def status(self, name, version=None, label=None):
    request = get_model_status_pb2.GetModelStatusRequest()
    _model_spec(request.model_spec, name, version, label)
    return self.model_stub.GetModelStatus(request, timeout=60)

  def reload(self, text):
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return self.model_stub.HandleReloadConfigRequest(request, timeout=120)


def _code(call, *args, **kwargs):
  """(gRPC status code, details) of a call expected to fail."""
  with pytest.raises(grpc.RpcError) as info:
    call(*args, **kwargs)
  return info.value.code(), info.value.details()


@pytest.fixture(scope='module')
def config_server(exports, tmp_path_factory):
  """The three export kinds from one --model_config_file; 'digits' has versions 1 and 2 (two
  different AlexNets) under the labels stable and canary, all served."""
  root = tmp_path_factory.mktemp('grpc')
  bases = {name: root / name for name in MODELS}
  for base in bases.values():
    base.mkdir()
  server_helpers.publish(exports['alexnet'], bases['digits'], 1)
  server_helpers.publish(exports['alexnet_2'], bases['digits'], 2)
  server_helpers.publish(exports['resnet'], bases['resnet'], 1)
  server_helpers.publish(exports['googlenet'], bases['googlenet'], 1)
  config = root / 'models.config'
  config.write_text(CONFIG % {k: str(v) for k, v in bases.items()})
  monitoring = root / 'monitoring.config'
  monitoring.write_text('prometheus_config { enable: true }')
  server = server_helpers.Server(root, '--model_config_file=%s' % config,
                                 '--monitoring_config_file=%s' % monitoring,
                                 base_path_flag=False)
  server.client = Client(server.grpc_port)
  yield server
  server.stop()


def test_the_message_table_matches_tf_servings_own_protos():
  """Every field the server's messages declare has the official package's number, type, label
  and oneof: the wire format, and the names an Any and the text format use."""
  official = {}
  for module in ('apis.predict_pb2', 'apis.get_model_metadata_pb2',
                 'apis.get_model_status_pb2', 'apis.model_management_pb2',
                 'apis.classification_pb2', 'apis.regression_pb2', 'apis.inference_pb2',
                 'config.model_server_config_pb2'):
    files = [importlib.import_module('tensorflow_serving.' + module).DESCRIPTOR]
    files += list(files[0].dependencies)  # model.proto, status.proto, the version policy's
    stack = [m for f in files for m in f.message_types_by_name.values()]
    while stack:
      descriptor = stack.pop()
      official[descriptor.full_name] = descriptor
      stack.extend(descriptor.nested_types)

  def shape(field):
    kind = field.message_type or field.enum_type
    return (field.name, field.type, field.label, kind.full_name if kind else None,
            field.containing_oneof.name if field.containing_oneof else None)

  checked = 0
  for name in tfs_protos._MESSAGES:  # pylint: disable=protected-access
    ours = tfs_protos.POOL.FindMessageTypeByName(tfs_protos._full(name))  # pylint: disable=protected-access
    theirs = official[ours.full_name]
    for field in ours.fields:
      assert shape(field) == shape(theirs.fields_by_number[field.number]), (name, field.name)
      checked += 1
  assert checked >= 40
  for service, methods in tfs_protos.SERVICES.items():
    grpc_module = importlib.import_module('tensorflow_serving.apis.%s_pb2_grpc' % (
        'prediction_service' if service == 'PredictionService' else 'model_service'))
    source = open(grpc_module.__file__).read()
    for method, _, _ in methods:
      assert '/tensorflow.serving.%s/%s' % (service, method) in source


def test_grpc_predict_answers_as_rest_for_every_export_kind(config_server):
  images = server_helpers.images(3, seed=7)
  for name in MODELS:
    response = config_server.client.predict(name, {export.IMAGES_INPUT: images})
    grpc_outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    status, body = config_server.predict({'instances': images.tolist()},
                                         path='/v1/models/%s:predict' % name)
    assert status == 200, body
    rest = {k: np.array([p[k] for p in body['predictions']]) for k in grpc_outputs}
    assert set(grpc_outputs) == {'classes', 'probabilities'}
    np.testing.assert_array_equal(grpc_outputs['classes'], rest['classes'])
    np.testing.assert_allclose(grpc_outputs['probabilities'], rest['probabilities'],
                               atol=1e-6, rtol=0)
    assert (response.model_spec.name, response.model_spec.signature_name) == (
        name, 'serving_default')
    assert response.model_spec.version.value == (2 if name == 'digits' else 1)


def test_grpc_image_bytes_and_output_filter(config_server):
  pngs = [server_helpers.png(seed) for seed in (1, 2)]
  response = config_server.client.predict(
      'digits', {export.IMAGE_BYTES_INPUT: tf.make_tensor_proto(pngs)}, version=1,
      signature_name=server_helpers.BYTES_SIGNATURE, output_filter=['classes'])
  assert list(response.outputs) == ['classes']
  status, body = config_server.predict(
      {'signature_name': server_helpers.BYTES_SIGNATURE,
       'instances': [server_helpers.b64(p) for p in pngs]},
      path='/v1/models/digits/versions/1:predict')
  assert status == 200, body
  assert tf.make_ndarray(response.outputs['classes']).tolist() == [
      p['classes'] for p in body['predictions']]


def test_labels_resolve_to_their_versions_on_both_apis(config_server):
  images = server_helpers.images(2, seed=3)
  answers = {}
  for label, version in (('stable', 1), ('canary', 2)):
    by_label = config_server.client.predict('digits', {export.IMAGES_INPUT: images},
                                            label=label)
    by_version = config_server.client.predict('digits', {export.IMAGES_INPUT: images},
                                              version=version)
    assert by_label.model_spec.version.value == version
    answers[label] = tf.make_ndarray(by_label.outputs['probabilities'])
    np.testing.assert_array_equal(answers[label],
                                  tf.make_ndarray(by_version.outputs['probabilities']))
    status, body = config_server.predict({'instances': images.tolist()},
                                         path='/v1/models/digits/labels/%s:predict' % label)
    assert status == 200
    np.testing.assert_allclose([p['probabilities'] for p in body['predictions']],
                               answers[label], atol=1e-6)
    status, body = config_server.request('GET', '/v1/models/digits/labels/%s' % label)
    assert [s['version'] for s in body['model_version_status']] == [str(version)]
  assert not np.allclose(answers['stable'], answers['canary'])  # two different models
  assert _code(config_server.client.predict, 'digits', {export.IMAGES_INPUT: images},
               label='nope') == (grpc.StatusCode.INVALID_ARGUMENT,
                                 'Unrecognized servable version label: nope')
  assert config_server.request('POST', '/v1/models/digits/labels/nope:predict',
                               {'instances': images.tolist()}) == (
                                   400, {'error': 'Unrecognized servable version label: nope'})


def test_status_and_metadata_as_tf_serving_prints_them(config_server):
  status = config_server.client.status('digits')
  assert text_format.MessageToString(status) == (
      'model_version_status {\n  version: 1\n  state: AVAILABLE\n  status {\n  }\n}\n'
      'model_version_status {\n  version: 2\n  state: AVAILABLE\n  status {\n  }\n}\n')
  assert [s.version for s in config_server.client.status('digits', label='stable')
          .model_version_status] == [1]
  assert _code(config_server.client.status, 'nope') == (
      grpc.StatusCode.NOT_FOUND, 'Could not find any versions of model nope')
  assert _code(config_server.client.status, 'digits', version=7) == (
      grpc.StatusCode.NOT_FOUND, 'Could not find version 7 of model digits')
  request = get_model_metadata_pb2.GetModelMetadataRequest()
  request.model_spec.name = 'resnet'
  request.metadata_field.append('signature_def')
  response = config_server.client.predict_stub.GetModelMetadata(request, timeout=60)
  signature_map = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata['signature_def'].Unpack(signature_map)
  loaded = models.LoadedVersion(1, str(config_server.base_path / 'resnet' / '1'),
                                optimize=False)
  try:
    assert dict(signature_map.signature_def) == loaded.signature_defs
  finally:
    loaded.close_when_drained()
  assert response.model_spec.version.value == 1
  del request.metadata_field[:]
  assert _code(config_server.client.predict_stub.GetModelMetadata, request, timeout=60)[0] == (
      grpc.StatusCode.INVALID_ARGUMENT)


def test_classify_regress_and_multi_inference_answer_as_tf_serving(config_server):
  stub = config_server.client.predict_stub
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = 'digits'
  assert _code(stub.Classify, request, timeout=60) == (
      grpc.StatusCode.INVALID_ARGUMENT, 'Expected classification signature method_name to be '
      'tensorflow/serving/classify. Was: tensorflow/serving/predict')
  request.model_spec.name = 'nope'
  assert _code(stub.Classify, request, timeout=60)[0] == grpc.StatusCode.NOT_FOUND
  multi = inference_pb2.MultiInferenceRequest()
  assert _code(stub.MultiInference, multi, timeout=60) == (
      grpc.StatusCode.INVALID_ARGUMENT, 'Tasks is empty')
  task = multi.tasks.add(method_name='tensorflow/serving/regress')
  task.model_spec.name = 'digits'
  assert _code(stub.MultiInference, multi, timeout=60) == (
      grpc.StatusCode.INVALID_ARGUMENT, 'Expected regression signature method_name to be '
      'tensorflow/serving/regress. Was: tensorflow/serving/predict')


def test_hostile_grpc_requests_get_tf_servings_codes(config_server):
  client = config_server.client
  images = server_helpers.images(1)
  cases = [
      (('nope', {export.IMAGES_INPUT: images}), {}, grpc.StatusCode.NOT_FOUND),
      (('digits', {export.IMAGES_INPUT: images}), {'version': 99}, grpc.StatusCode.NOT_FOUND),
      (('digits', {export.IMAGES_INPUT: images.astype(np.float64)}), {},
       grpc.StatusCode.INVALID_ARGUMENT),
      (('digits', {'other': images}), {}, grpc.StatusCode.INVALID_ARGUMENT),
      (('digits', {export.IMAGES_INPUT: images}), {'output_filter': ['nope']},
       grpc.StatusCode.INVALID_ARGUMENT),
      (('digits', {export.IMAGES_INPUT: images}), {'signature_name': 'nope'},
       grpc.StatusCode.NOT_FOUND),
  ]
  # A shape of 10^9 floats with one value: expanded, 4 GB.
  bomb = tf.make_tensor_proto(0.5, dtype=tf.float32)
  bomb.tensor_shape.dim.add(size=10 ** 9)
  cases.append((('digits', {export.IMAGES_INPUT: bomb}), {}, grpc.StatusCode.INVALID_ARGUMENT))
  rows = tf.make_tensor_proto(np.zeros((1001, 784), np.float32))
  cases.append((('digits', {export.IMAGES_INPUT: rows}), {}, grpc.StatusCode.INVALID_ARGUMENT))
  short = tf.make_tensor_proto(images)
  short.tensor_content = short.tensor_content[:-4]
  cases.append((('digits', {export.IMAGES_INPUT: short}), {},
                grpc.StatusCode.INVALID_ARGUMENT))
  # A PNG header declaring 60000 x 60000 pixels in a string tensor.
  png_bomb = server_helpers.png(0)[:16] + (60000).to_bytes(4, 'big') * 2 + b'\x08\x00\x00\x00'
  cases.append((('digits', {export.IMAGE_BYTES_INPUT: tf.make_tensor_proto([png_bomb])}),
                {'signature_name': server_helpers.BYTES_SIGNATURE},
                grpc.StatusCode.INVALID_ARGUMENT))
  # Over --max_request_bytes (16 MB): refused by gRPC before it is parsed.
  cases.append((('digits', {export.IMAGES_INPUT: np.zeros((6000, 784), np.float32)}), {},
                grpc.StatusCode.RESOURCE_EXHAUSTED))
  for args, kwargs, code in cases:
    assert _code(client.predict, *args, **kwargs)[0] == code, (args[0], kwargs, code)
  garbage = client.channel.unary_unary('/tensorflow.serving.PredictionService/Predict')
  assert _code(garbage, b'\xff' * 64, timeout=60) == (
      grpc.StatusCode.INVALID_ARGUMENT,
      'the request is not a PredictRequest: Error parsing message')
  # The server still answers, and REST's verdicts for the same requests are the same codes.
  assert client.predict('digits', {export.IMAGES_INPUT: images}).outputs
  assert config_server.predict({'instances': images.tolist()},
                               path='/v1/models/nope:predict')[0] == 404
  assert config_server.predict({'instances': [[[['x']]]]},
                               path='/v1/models/digits:predict')[0] == 400


def test_grpc_requests_are_counted_in_the_metrics(config_server):
  config_server.client.predict('digits', {export.IMAGES_INPUT: server_helpers.images(1)})
  _code(config_server.client.predict, 'made-up', {export.IMAGES_INPUT: server_helpers.images(1)})
  status, text = config_server.raw_get('/monitoring/prometheus/metrics')
  assert status == 200
  samples = test_metrics.parse_exposition(text)
  assert test_metrics.value(samples, ':mnist_cnn:serving:requests', model_name='digits',
                            API='Predict', entrypoint='GRPC', status='OK') >= 1
  assert test_metrics.value(samples, ':mnist_cnn:serving:requests', model_name='',
                            API='Predict', entrypoint='GRPC', status='NOT_FOUND') >= 1
  for name in MODELS:
    assert test_metrics.value(samples, ':mnist_cnn:serving:loaded_versions',
                              model_name=name) == (2 if name == 'digits' else 1)


def test_reload_config_over_grpc_changes_models_and_labels(exports, tmp_path):
  base = tmp_path / 'digits'
  base.mkdir()
  server_helpers.publish(exports['alexnet'], base, 1)
  server_helpers.publish(exports['alexnet_2'], base, 2)
  server = server_helpers.Server(base)  # the one-model shorthand: 'mnist', latest version
  try:
    client = Client(server.grpc_port)
    assert [s.version for s in client.status('mnist').model_version_status] == [2]
    client.reload('model_config_list { config { name: "digits" base_path: "%s" '
                  'model_version_policy { specific { versions: 1 } } '
                  'version_labels { key: "stable" value: 1 } } }' % base)
    assert [s.version for s in client.status('digits', label='stable')
            .model_version_status] == [1]
    assert _code(client.status, 'mnist')[0] == grpc.StatusCode.NOT_FOUND
    code, details = _code(client.reload, 'model_config_list { config { name: "digits" '
                          'base_path: "%s" version_labels { key: "next" value: 1 } } }' % base)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and 'label next' in details
    # The rest of that config was applied: the latest version, 2, alone.
    assert [s.version for s in client.status('digits').model_version_status] == [2]
    assert _code(client.reload, 'model_config_list { config { name: "x" base_path: "%s" } }'
                 % (tmp_path / 'missing'))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert server.request('GET', '/v1/models/digits')[0] == 200
  finally:
    server.stop()


def test_the_config_file_is_reread_on_its_poll(exports, tmp_path):
  base = tmp_path / 'digits'
  base.mkdir()
  server_helpers.publish(exports['alexnet'], base, 1)
  config = tmp_path / 'models.config'
  config.write_text('model_config_list { config { name: "a" base_path: "%s" } }' % base)
  server = server_helpers.Server(tmp_path, '--model_config_file=%s' % config,
                                 '--model_config_file_poll_wait_seconds=1',
                                 base_path_flag=False)
  try:
    assert server.request('GET', '/v1/models/a')[0] == 200
    config.write_text('model_config_list { config { name: "b" base_path: "%s" } }' % base)
    deadline = time.time() + 60
    while server.request('GET', '/v1/models/b')[0] != 200 and time.time() < deadline:
      time.sleep(0.1)
    assert server.request('GET', '/v1/models/b')[0] == 200
    assert server.request('GET', '/v1/models/a')[0] == 404
    config.write_text('model_config_list { config { nme: "c" } }')  # misspelt: kept as is
    deadline = time.time() + 60
    while 'keeping the models served' not in ''.join(server.output) and time.time() < deadline:
      time.sleep(0.1)
    assert 'keeping the models served' in ''.join(server.output)
    assert server.request('GET', '/v1/models/b')[0] == 200
  finally:
    server.stop()


def _serve(*argv):
  return subprocess.run([sys.executable, '-m', 'mnist_cnn.serve'] + list(argv),
                        capture_output=True, text=True, env=server_helpers.ENV,
                        cwd=server_helpers.REPO, timeout=120)


def test_command_line_errors_are_one_line(tmp_path):
  config = tmp_path / 'bad.config'
  config.write_text('model_config_list { config { name: "a" base_path: "/x" frobnicate: 1 } }')
  result = _serve('--model_config_file=%s' % config, '--port=0', '--rest_api_port=0')
  assert result.returncode == 1 and 'frobnicate' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  result = _serve('--model_base_path=%s' % tmp_path, '--port=8501')
  assert result.returncode == 1
  assert '--port and --rest_api_port are both 8501' in result.stderr
  result = _serve('--model_base_path=%s' % tmp_path, '--model_config_file=%s' % config)
  assert result.returncode == 1 and 'not both' in result.stderr


def test_an_old_port_flag_gets_a_notice(capsys):
  """A 0.3 command line gave REST's port as --port: it is gRPC's now, and the log says so."""
  flags_obj = parse_flags(serve.define_serve_flags, ['--model_base_path=/x', '--port=8600'])
  serve._check_ports(flags_obj)  # pylint: disable=protected-access
  assert 'note: --port=8600 is the gRPC port, as in TF Serving' in capsys.readouterr().out
  flags_obj = parse_flags(serve.define_serve_flags, ['--model_base_path=/x', '--port=8600',
                                                     '--rest_api_port=8601'])
  serve._check_ports(flags_obj)  # pylint: disable=protected-access
  assert 'note' not in capsys.readouterr().out


def test_model_config_policies_and_checks(tmp_path):
  for name in ('a', 'b'):
    (tmp_path / name).mkdir()
  config = tmp_path / 'models.config'
  config.write_text('model_config_list { config { name: "a" base_path: "%s" '
                    'model_version_policy { latest { num_versions: 2 } } } '
                    'config { name: "b" base_path: "%s" '
                    'model_version_policy { specific { versions: [3, 1] } } } }' % (
                        tmp_path / 'a', tmp_path / 'b'))
  a, b = model_config.read_file(str(config))
  assert a.policy == models.VersionPolicy('latest', 2) and b.policy.kind == 'specific'
  assert b.policy.wanted([1, 2, 3, 4]) == [3, 1]
  assert models.VersionPolicy('all').wanted([1, 2]) == [2, 1]
  latest = models.VersionPolicy('latest', 2)
  assert not latest.enough(1) and latest.enough(2)
  for text, message in [
      ('config { name: "a" base_path: "%s" }' % (tmp_path / 'a'), 'config'),
      ('model_config_list { config { name: "a" base_path: "%s" } config { name: "a" '
       'base_path: "%s" } }' % (tmp_path / 'a', tmp_path / 'a'), 'multiple times'),
      ('model_config_list { config { name: "a" base_path: "%s" } }' % (tmp_path / 'z'),
       'not a directory'),
      ('model_config_list { config { name: "a" base_path: "%s" model_platform: "onnx" } }' %
       (tmp_path / 'a'), 'onnx'),
      ('model_config_list { config { name: "a" base_path: "%s" model_version_policy { '
       'specific { } } } }' % (tmp_path / 'a'), 'must list versions')]:
    config.write_text(text)
    with pytest.raises(ValueError, match=message):
      model_config.read_file(str(config))


def test_proto_tensors_check_shapes_before_building_arrays():
  spec = models.TensorSpec(_float_info())
  limits = json_tensors.DEFAULT_LIMITS
  proto = tfs_protos.TensorProto()
  proto_tensors.fill(proto, np.arange(6, dtype=np.float32).reshape(2, 3))
  array = proto_tensors.to_array(proto, spec, 'x', limits, 1 << 20)
  np.testing.assert_array_equal(array, np.arange(6).reshape(2, 3))
  one = tfs_protos.TensorProto(dtype=tf.float32.as_datatype_enum, float_val=[2.0])
  one.tensor_shape.dim.add(size=2)
  one.tensor_shape.dim.add(size=2)
  np.testing.assert_array_equal(proto_tensors.to_array(one, spec, 'x', limits, 1 << 20),
                                np.full((2, 2), 2.0))
  one.tensor_shape.dim[0].size = 10 ** 6
  with pytest.raises(models.ServingError, match='--max_request_bytes'):
    proto_tensors.to_array(one, spec, 'x', limits._replace(max_images_per_request=10 ** 7),
                           1 << 20)
  three = tfs_protos.TensorProto(dtype=tf.float32.as_datatype_enum, float_val=[1.0, 2.0, 3.0])
  three.tensor_shape.dim.add(size=2)
  with pytest.raises(models.ServingError, match='3 values for shape'):
    proto_tensors.to_array(three, spec, 'x', limits, 1 << 20)


def _float_info():
  with tf.Graph().as_default():
    return tf.compat.v1.saved_model.utils.build_tensor_info(
        tf.compat.v1.placeholder(tf.float32, [None, None]))


def test_a_grpc_call_over_the_request_timeout_is_deadline_exceeded(exports, serve_dir):
  """--request_timeout_s bounds gRPC calls as REST's (504 there): the call is cancelled and
  its version released (the server stops cleanly after). Reloads are not bounded."""
  server_helpers.publish(exports['alexnet'], serve_dir, 1)
  server = server_helpers.Server(serve_dir, '--request_timeout_s=0.000001')
  try:
    client = Client(server.grpc_port)
    images = server_helpers.images(1)
    for _ in range(3):
      assert _code(client.predict, 'mnist', {export.IMAGES_INPUT: images})[0] == (
          grpc.StatusCode.DEADLINE_EXCEEDED)
    # In one write: with the body still on its way when the timer fires, REST answers 408.
    assert server.post_in_one_write('/v1/models/mnist:predict',
                                    {'instances': images.tolist()}) == 504
    # Calls that do not wait on the model finish before the timer: the server still answers.
    assert [s.version for s in client.status('mnist').model_version_status] == [1]
    # Reloads are not timed: they take as long as their loads.
    client.reload('model_config_list { config { name: "other" base_path: "%s" } }' % serve_dir)
    assert [s.version for s in client.status('other').model_version_status] == [1]
  finally:
    server.stop()
  assert 'stopped' in ''.join(server.output)


def test_tf_servings_batching_flags(tmp_path):
  """--batching_parameters_file overrides the batching flags; --enable_batching=false turns
  merging off; a file TF Serving would refuse is a one-line error naming it."""
  parameters = tmp_path / 'batching.config'
  parameters.write_text('max_batch_size { value: 32 }\nbatch_timeout_micros { value: 500 }\n'
                        'num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 100 }')
  flags_obj = parse_flags(serve.define_serve_flags, [
      '--model_base_path=/x', '--batching_parameters_file=%s' % parameters])
  assert serve._batch_settings(flags_obj) == (32, 500, 2)  # pylint: disable=protected-access
  flags_obj = parse_flags(serve.define_serve_flags, [
      '--model_base_path=/x', '--batching_parameters_file=%s' % parameters,
      '--noenable_batching'])
  assert serve._batch_settings(flags_obj).max_batch_size == 1  # pylint: disable=protected-access
  for text, message in (('max_batch_size { value: 0 }', 'out of range'),
                        ('max_batch_size: 3', 'max_batch_size'),
                        ('batch_size { value: 3 }', 'batch_size')):
    parameters.write_text(text)
    flags_obj = parse_flags(serve.define_serve_flags, [
        '--model_base_path=/x', '--batching_parameters_file=%s' % parameters])
    with pytest.raises(ValueError, match=message) as info:
      serve._batch_settings(flags_obj)  # pylint: disable=protected-access
    assert str(parameters) in str(info.value) and '\n' not in str(info.value)


def test_stalled_grpc_connections_are_closed_within_the_header_timeout(exports, serve_dir):
  """A connection that never finishes HTTP/2's preface is closed after --header_timeout_s,
  as a REST one whose headers never end (gRPC's own default: 120 s)."""
  server_helpers.publish(exports['alexnet'], serve_dir, 1)
  server = server_helpers.Server(serve_dir, '--header_timeout_s=1')
  try:
    sockets, opened = serving_abuse.open_stalled(server.grpc_port, 5, b'PRI * HTTP/2.0\r\n')
    # Served meanwhile.
    assert Client(server.grpc_port).predict(
        'mnist', {export.IMAGES_INPUT: server_helpers.images(1)}).outputs
    closed_at = serving_abuse.wait_closed(sockets, opened, 30)
    assert len(closed_at) == 5 and max(closed_at.values()) < 20, closed_at
  finally:
    server.stop()
