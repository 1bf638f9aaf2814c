"""TF Serving's REST behaviour, case by case, on a toy export served by our server over HTTP.

The expectations are TF Serving's (its json_tensor_test.cc, http_rest_api_handler_test.cc and
REST API doc): the graph decides shapes, NaN/Infinity are numbers both ways, float32 is written
with 6 significant digits, base64 may be unpadded or wrapped, and its error messages. The full
external suite is ../shared/conformance/tfs_cases.py, which .ci/run also runs.
"""

import base64
import http.client
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.serving import json_tensors
from tests import server_helpers


def _toy_export(path):
  """half_plus_two on x: [-1, 1] (serving_default), and echo signatures of unknown rank."""
  with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
    v1 = tf.compat.v1

    def signature(inputs, outputs):
      return v1.saved_model.predict_signature_def(inputs=inputs, outputs=outputs)

    x = v1.placeholder(tf.float32, [None, 1], name='x')
    signatures = {'serving_default': signature({'x': x}, {'y': x * 0.5 + 2.0})}
    for name, dtype, output in (('float_echo', tf.float32, 'y'), ('str_echo', tf.string, 'y'),
                                ('bytes_echo', tf.string, 'y_bytes')):
      echo_in = v1.placeholder(dtype, None, name=name)
      signatures[name] = signature({'x': echo_in}, {output: tf.identity(echo_in)})
    pair_int = v1.placeholder(tf.int32, None, name='pair_int')
    pair_str = v1.placeholder(tf.string, None, name='pair_str')
    signatures['pair'] = signature({'int_tensor': pair_int, 'str_tensor': pair_str},
                                   {'int_tensor': tf.identity(pair_int),
                                    'str_tensor': tf.identity(pair_str)})
    builder = v1.saved_model.Builder(path)
    builder.add_meta_graph_and_variables(sess, [v1.saved_model.tag_constants.SERVING],
                                         signature_def_map=signatures)
    builder.save()


@pytest.fixture(scope='module')
def toy_server(tmp_path_factory):
  base = tmp_path_factory.mktemp('toy')
  _toy_export(str(base / '123'))
  server = server_helpers.Server(base, '--model_name=toy')
  yield server
  server.stop()


def _post(server, body, path='/v1/models/toy:predict'):
  """Returns (status, raw body text); body is a value (sent as JSON) or exact bytes."""
  connection = http.client.HTTPConnection('127.0.0.1', server.port, timeout=60)
  try:
    connection.request('POST', path, body if isinstance(body, bytes) else json.dumps(body))
    response = connection.getresponse()
    return response.status, response.read().decode('utf-8')
  finally:
    connection.close()


@pytest.mark.parametrize('body,want', [
    ({'instances': [1.0, 2.0, 5.0]}, {'predictions': [2.5, 3.0, 4.5]}),  # api_rest.md's curl
    ({'instances': [[1.0, 2.0], [3.0, 4.0]]}, {'predictions': [[2.5, 3.0], [3.5, 4.0]]}),
    ({'signature_name': '', 'instances': [[1.0]]}, {'predictions': [[2.5]]}),
    ({'inputs': []}, {'outputs': []}),
    ({'signature_name': 'float_echo', 'inputs': 3.0}, {'outputs': 3.0}),
    ({'signature_name': 'pair', 'inputs': {'int_tensor': [1, 2], 'str_tensor': ['a', 'b'],
                                           'ignored': 7}},
     {'outputs': {'int_tensor': [1, 2], 'str_tensor': ['a', 'b']}}),
])
def test_the_graph_decides_shapes_as_in_tf_serving(toy_server, body, want):
  status, text = _post(toy_server, body)
  assert status == 200, text
  assert json.loads(text) == want


def test_nan_and_infinity_tokens_go_in_and_come_out(toy_server):
  status, text = _post(toy_server, b'{"signature_name": "float_echo", '
                                    b'"inputs": [NaN, Infinity, -Infinity, 1.5]}')
  assert status == 200 and text == '{"outputs":[NaN,Infinity,-Infinity,1.5]}'
  # A float beyond float32 becomes infinity in the tensor, and is written so.
  status, text = _post(toy_server, {'signature_name': 'float_echo', 'inputs': [1.79769e308]})
  assert status == 200 and text == '{"outputs":[Infinity]}'
  status, text = _post(toy_server, b'{"signature_name": "float_echo", "inputs": [1e400]}')
  assert status == 400 and 'JSON Parse error' in json.loads(text)['error']


def test_float32_is_written_with_six_significant_digits(toy_server):
  values = [9e6, 999999.0, 0.5, 0.0003, 3e-05, 555557.5, 1.0 / 3, -2.0]
  status, text = _post(toy_server, {'signature_name': 'float_echo', 'inputs': values})
  assert status == 200
  assert text == ('{"outputs":[9e+06,999999.0,0.5,0.0003,3e-05,555557.5,0.333333343,'
                  '-2.0]}')


def test_float32_text_reads_back_to_the_same_float32():
  for value in np.random.RandomState(0).standard_normal(1000).astype(np.float32) * 1e3:
    assert np.float32(float(json_tensors._float32_text(float(value)))) == value
  assert json_tensors._float32_text(math.nan) == 'NaN'


@pytest.mark.parametrize('encoded', [
    'aGVsbG8gd29ybGQ=',  # padded
    'aGVsbG8gd29ybGQ',  # unpadded
    'aGVsbG8g\nd29ybGQ=\n',  # wrapped, as `base64` prints without -w0
])
def test_base64_padding_and_line_breaks_are_accepted(toy_server, encoded):
  status, text = _post(toy_server, {'signature_name': 'bytes_echo',
                                    'instances': [{'b64': encoded}]})
  assert status == 200, text
  assert base64.b64decode(json.loads(text)['predictions'][0]['b64']) == b'hello world'


def test_bytes_after_the_json_document_are_ignored(toy_server):
  status, text = _post(toy_server, b'{"instances": [[1.0]]} trailing bytes')
  assert status == 200 and json.loads(text) == {'predictions': [[2.5]]}


@pytest.mark.parametrize('body,path,status,message', [
    ({'instances': [[True]]}, None, 400, 'true is not of expected type: float'),
    ({'instances': [[None]]}, None, 400, 'null is not of expected type: float'),
    ({'instances': [['0.5']]}, None, 400, '"0.5" is not of expected type: float'),
    ({'signature_name': 'pair', 'instances': [{'int_tensor': 1, 'str_tensor': 'a'}, [1]]},
     None, 400, 'Expecting object but got list at item 1 of input list'),
    ({'signature_name': 'str_echo', 'instances': ['a', {'x': 'b'}]}, None, 400,
     'Expecting value/list but got object at item 1 of input list'),
    ({'signature_name': 7, 'instances': [[1.0]]}, None, 400,
     "'signature_name' key must be a string value"),
    ({'signature_name': 'pair', 'inputs': {'int_tensor': [1]}}, None, 400, 'lacks'),
    ({'instances': [[1.0]]}, '/v1/models/toy/labels/stable:predict', 400,
     'Unrecognized servable version label: stable'),
    ({'instances': [[1.0]]}, '/v1/models/toy/versions/HELLO:predict', 400, 'Malformed request'),
    ({'instances': [[1.0]]}, '/v1/models/toy/versions/18446744073709551615:predict', 400,
     'Failed to convert version: 18446744073709551615 to numeric.'),
    (b'{"instances": [', '/v1/models/other:predict', 404,  # the URL before the body
     'Servable not found for request: Latest(other)'),
    ({'instances': [[1.0]]}, '/v1/models/toy/versions/7:predict', 404,
     'Servable not found for request: Specific(toy, 7)'),
])
def test_errors_are_tf_servings(toy_server, body, path, status, message):
  got_status, text = _post(toy_server, body, path or '/v1/models/toy:predict')
  assert got_status == status, text
  assert message in json.loads(text)['error'], text


def test_metadata_keeps_default_fields_and_has_no_type_url(toy_server):
  status, body = toy_server.request('GET', '/v1/models/toy/metadata')
  assert status == 200
  assert body['model_spec'] == {'name': 'toy', 'signature_name': '', 'version': '123'}
  defs = body['metadata']['signature_def']
  assert set(defs) == {'signature_def'}  # no '@type'
  x = defs['signature_def']['serving_default']['inputs']['x']
  assert x['tensor_shape'] == {'dim': [{'size': '-1', 'name': ''}, {'size': '1', 'name': ''}],
                               'unknown_rank': False}
  echo = defs['signature_def']['float_echo']['inputs']['x']
  assert echo['tensor_shape'] == {'dim': [], 'unknown_rank': True}


def test_concurrent_clients_each_get_their_own_rows(toy_server):
  """Rows of two values where the signature says one: merged with others they must still come
  back to their own client, row for row."""
  def client(index):
    value = float(index)
    status, text = _post(toy_server, {'instances': [[value, value + 0.25]]})
    return status, json.loads(text)['predictions'], value

  import concurrent.futures  # pylint: disable=g-import-not-at-top
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    results = list(pool.map(client, range(64)))
  for status, predictions, value in results:
    assert status == 200 and predictions == [[value * 0.5 + 2, (value + 0.25) * 0.5 + 2]]
