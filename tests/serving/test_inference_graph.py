"""The graph exports are served from: frozen, checked against the export as written, in the
precision chosen at load time; and the batcher's rule for a lone request."""

import asyncio
import concurrent.futures
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn.serving import batching
from mnist_cnn.serving import inference_graph
from mnist_cnn.serving import json_tensors
from mnist_cnn.serving import models
from official.utils import export
from official.utils import precision
from tests import server_helpers

NATIVE_BF16 = precision.cpu_supports_bf16()
VARIABLE_OPS = {'VarHandleOp', 'ReadVariableOp', 'VariableV2', 'AssignVariableOp', 'RestoreV2'}


def test_precision_is_bf16_only_for_a_bf16_export_on_a_bf16_cpu():
  bf16, fp32 = {'training_dtype': 'bf16'}, {'training_dtype': 'fp32'}
  assert inference_graph.choose_precision('auto', bf16, cpu_has_bf16=True) == 'bf16'
  assert inference_graph.choose_precision('auto', bf16, cpu_has_bf16=False) == 'fp32'
  assert inference_graph.choose_precision('auto', fp32, cpu_has_bf16=True) == 'fp32'
  assert inference_graph.choose_precision('auto', {}, cpu_has_bf16=True) == 'fp32'  # old export
  assert inference_graph.choose_precision('bf16', fp32, cpu_has_bf16=False) == 'bf16'
  assert inference_graph.choose_precision('fp32', bf16, cpu_has_bf16=True) == 'fp32'
  # Where the export measured both, bf16 may lose at most 0.05 points; an fp32-trained export
  # stays fp32 (TF Serving's numbers) whatever it measured.
  kept = {'training_dtype': 'bf16', 'test_accuracy': {'fp32': 0.9900, 'bf16': 0.9896}}
  lost = {'training_dtype': 'bf16', 'test_accuracy': {'fp32': 0.9900, 'bf16': 0.9890}}
  fp32_trained = {'training_dtype': 'fp32', 'test_accuracy': {'fp32': 0.99, 'bf16': 0.99}}
  assert inference_graph.choose_precision('auto', kept, cpu_has_bf16=True) == 'bf16'
  assert inference_graph.choose_precision('auto', kept, cpu_has_bf16=False) == 'fp32'
  assert inference_graph.choose_precision('auto', lost, cpu_has_bf16=True) == 'fp32'
  assert inference_graph.choose_precision('auto', fp32_trained, cpu_has_bf16=True) == 'fp32'
  with pytest.raises(ValueError, match='auto, fp32, bf16'):
    inference_graph.choose_precision('fp16', bf16, cpu_has_bf16=True)


def test_exports_record_their_dtypes_and_test_accuracy(exports):
  for name in ('alexnet', 'resnet'):
    info = export.read_serving_info(exports[name])
    assert info['training_dtype'] == 'fp32' and info['image_shape'] == [28, 28, 1]
    assert sorted(info['test_accuracy']) == (['bf16', 'fp32'] if NATIVE_BF16 else ['fp32'])
  # The fp32 figure is the run's own final evaluation of the same weights on the same images.
  run_dir = os.path.join(os.path.dirname(os.path.dirname(exports['alexnet'])), 'model')
  with open(os.path.join(run_dir, 'metrics.json')) as f:
    evaluated = [json.loads(line) for line in f if '"accuracy"' in line][-1]['accuracy']
  recorded = export.read_serving_info(exports['alexnet'])['test_accuracy']
  assert recorded['fp32'] == pytest.approx(evaluated, abs=1e-6)
  if NATIVE_BF16:
    assert abs(recorded['bf16'] - recorded['fp32']) <= 0.1


@pytest.mark.parametrize('model', ['alexnet', 'resnet', 'googlenet'])
def test_the_frozen_graph_answers_as_the_export_does(exports, model):
  frozen = models.LoadedVersion(0, exports[model], serving_precision='fp32')
  loaded = models.LoadedVersion(0, exports[model], optimize=False, serving_precision='fp32')
  try:
    assert frozen.optimized == 'yes' and loaded.optimized.startswith('no')
    ops = {node.op for node in frozen.graph.as_graph_def().node}
    assert not ops & VARIABLE_OPS, ops & VARIABLE_OPS
    assert {node.op for node in loaded.graph.as_graph_def().node} & VARIABLE_OPS
    images = server_helpers.images(32, seed=3)
    pngs = np.array([server_helpers.png(i) for i in range(4)], dtype=object)
    for name, feeds in (('serving_default', {'images': images}),
                        (server_helpers.BYTES_SIGNATURE, {'image_bytes': pngs})):
      a = frozen.run(frozen.signatures[name], feeds)
      b = loaded.run(loaded.signatures[name], feeds)
      np.testing.assert_array_equal(a['classes'], b['classes'])
      np.testing.assert_allclose(a['probabilities'], b['probabilities'], atol=1e-4)
    assert 'frozen graph: yes' in frozen.describe()
  finally:
    frozen.close_when_drained()
    loaded.close_when_drained()


@pytest.mark.parametrize('model', ['alexnet', 'resnet'])
def test_a_frozen_graph_that_answers_differently_is_not_served(exports, monkeypatch, model):
  real_freeze = inference_graph.freeze

  def corrupted(session, signature_defs):
    graph_def = real_freeze(session, signature_defs)
    for node in graph_def.node:  # the first weight tensor: one more in every entry
      value = node.attr['value'].tensor if node.op == 'Const' else None
      if value is not None and value.dtype == tf.float32.as_datatype_enum and len(
          value.tensor_shape.dim) == 4:
        array = tf.make_ndarray(value) + 1.0
        node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(array))
        break
    return graph_def

  monkeypatch.setattr(inference_graph, 'freeze', corrupted)
  loaded = models.LoadedVersion(0, exports[model], serving_precision='fp32')
  reference = models.LoadedVersion(0, exports[model], optimize=False,
                                   serving_precision='fp32')
  try:
    assert 'answers differently on the frozen graph' in loaded.optimized, loaded.optimized
    images = server_helpers.images(4)
    got = loaded.run(loaded.signatures['serving_default'], {'images': images})
    want = reference.run(reference.signatures['serving_default'], {'images': images})
    np.testing.assert_array_equal(got['probabilities'], want['probabilities'])
  finally:
    loaded.close_when_drained()
    reference.close_when_drained()


def test_a_saved_model_that_needs_tables_is_served_as_loaded(tmp_path):
  path = str(tmp_path / 'table_model')
  with tf.Graph().as_default() as graph:
    words = tf.compat.v1.placeholder(tf.string, [None], name='words')
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(['a', 'b']), tf.constant([1, 2], tf.int64)), default_value=-1)
    ids = table.lookup(words)
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.tables_initializer())
      builder = tf.compat.v1.saved_model.Builder(path)
      builder.add_meta_graph_and_variables(
          sess, ['serve'], signature_def_map={'serving_default': (
              tf.compat.v1.saved_model.predict_signature_def({'words': words}, {'ids': ids}))},
          main_op=tf.compat.v1.tables_initializer())
      builder.save()
  loaded = models.LoadedVersion(0, path)
  try:
    assert 'initialisation step' in loaded.optimized
    out = loaded.run(loaded.signatures['serving_default'],
                     {'words': np.array([b'b', b'z', b'a'], dtype=object)})
    assert out['ids'].tolist() == [2, -1, 1]
  finally:
    loaded.close_when_drained()


def _bf16_ops(loaded):
  session = loaded._session  # pylint: disable=protected-access
  signature = loaded.signatures['serving_default']
  metadata = tf.compat.v1.RunMetadata()
  session.run(signature.outputs['probabilities'],
              {signature.inputs['images'].tensor_name: server_helpers.images(2)},
              options=tf.compat.v1.RunOptions(output_partition_graphs=True),
              run_metadata=metadata)
  return {node.op for graph in metadata.partition_graphs for node in graph.node
          if node.attr['T'].type == tf.bfloat16.as_datatype_enum}


def test_bf16_serving_computes_in_bf16_and_keeps_the_classes(exports):
  bf16 = models.LoadedVersion(0, exports['resnet'], serving_precision='bf16')
  fp32 = models.LoadedVersion(0, exports['resnet'], serving_precision='fp32')
  try:
    assert bf16.precision == 'bf16' and bf16.optimized == 'yes'
    assert not _bf16_ops(fp32)
    if NATIVE_BF16:  # the rewrite only acts where oneDNN has native bfloat16
      assert any('Conv2D' in op for op in _bf16_ops(bf16)), _bf16_ops(bf16)
    else:
      assert 'no native bfloat16' in bf16.describe()
    images = server_helpers.images(16, seed=5)
    a = bf16.run(bf16.signatures['serving_default'], {'images': images})
    b = fp32.run(fp32.signatures['serving_default'], {'images': images})
    np.testing.assert_allclose(a['probabilities'], b['probabilities'], atol=0.05)
  finally:
    bf16.close_when_drained()
    fp32.close_when_drained()


def test_float_requests_parse_as_the_checked_path_did():
  with tf.Graph().as_default():
    spec = models.TensorSpec(tf.compat.v1.saved_model.build_tensor_info(
        tf.compat.v1.placeholder(tf.float32, [None, 2, 2], name='x')))
  limits = json_tensors.DEFAULT_LIMITS
  value = [[1, 2.5], [float('nan'), -3]]
  got = json_tensors._to_array(value, spec, 'x', limits)  # pylint: disable=protected-access
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, np.array(value, dtype=np.float32))
  for bad, message in (([[1, True]], 'true is not of expected type'),
                       ([[1, None]], 'null is not of expected type'),
                       ([[1, '0.5']], '"0.5" is not of expected type'),
                       ([[1, 2], [3]], 'not a float32 tensor'),
                       ([[1, 10 ** 400]], 'not a float32 tensor')):
    with pytest.raises(models.ServingError, match=message):
      json_tensors._to_array(bad, spec, 'x', limits)  # pylint: disable=protected-access


class _CountingVersion(object):
  """A model version whose calls are counted; it answers each row with its own value."""

  def __init__(self):
    self.calls = []

  def run(self, signature, feeds):
    self.calls.append(len(feeds['x']))
    return {'y': feeds['x'] * 2}


class _Signature(object):
  name = 'serving_default'
  batchable = True


def _with_batcher(body):
  """Runs body(batcher, version) in an event loop; the batch timeout is an hour, so a batch
  that waits for it never finishes (the tests give up after 60 s)."""
  async def scenario():
    executor = concurrent.futures.ThreadPoolExecutor(2)
    batcher = batching.Batcher(executor, max_batch_size=8, batch_timeout_s=3600,
                               num_batch_threads=1)
    try:
      return await body(batcher, _CountingVersion())
    finally:
      await batcher.close()
      executor.shutdown()
  return asyncio.run(scenario())


def test_a_lone_request_does_not_wait_for_the_batch_timeout():
  async def body(batcher, version):
    out = await asyncio.wait_for(batcher.run(version, _Signature(),
                                             {'x': np.ones((1, 1), np.float32)}, 1), 60)
    return out, version.calls

  out, calls = _with_batcher(body)
  assert out['y'].tolist() == [[2.0]] and calls == [1]


def test_a_batch_waits_for_a_request_already_arriving():
  async def body(batcher, version):
    batcher.arriving()  # the second request's body is still being read
    first = asyncio.ensure_future(batcher.run(version, _Signature(),
                                              {'x': np.full((1, 1), 1.0, np.float32)}, 1))
    for _ in range(20):
      await asyncio.sleep(0)
    waited = not first.done() and version.calls == []

    async def second_request():  # as the server hands a request over: in one step
      batcher.arrived()
      return await batcher.run(version, _Signature(),
                               {'x': np.full((2, 1), 5.0, np.float32)}, 2)

    second = await asyncio.wait_for(second_request(), 60)
    return waited, (await asyncio.wait_for(first, 60)), second, version.calls

  waited, first, second, calls = _with_batcher(body)
  assert waited
  assert calls == [3]  # one merged call
  assert first['y'].tolist() == [[2.0]] and second['y'].tolist() == [[10.0], [10.0]]
