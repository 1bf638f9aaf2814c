"""bf16 on the CPU: detection, fallback or refusal, and bf16 graphs that train."""

import functools
import json
import os

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import alexnet_main
from mnist_cnn import alexnet_model
from mnist_cnn import input_data
from official.utils import lifecycle
from official.utils import precision
from tests import conftest
from tests import model_helpers

NATIVE_BF16 = precision.cpu_supports_bf16()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text('processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 avx2\n\n'
                     'processor\t: 1\nflags\t\t: fpu\n')
  flags_found = precision.cpu_flags(str(cpuinfo))
  assert {'amx_bf16', 'avx512f'} <= flags_found
  assert precision.cpu_supports_bf16(flags_found)
  assert not precision.cpu_supports_bf16({'avx512f', 'avx2'})
  assert precision.cpu_flags(str(tmp_path / 'absent')) == set()


def test_bf16_falls_back_or_refuses_on_a_cpu_without_it():
  dtype, message = precision.resolve_dtype('bf16', 'fp32', flags={'avx2'})
  assert dtype == 'fp32'
  assert 'neither AVX512-BF16 nor AMX' in message and 'training in fp32' in message
  with pytest.raises(precision.PrecisionError, match='--bf16_fallback=fp32'):
    precision.resolve_dtype('bf16', 'error', flags={'avx2'})
  assert precision.resolve_dtype('bf16', 'error', flags={'avx512_bf16'}) == ('bf16', None)
  assert precision.resolve_dtype('bf16', 'error', has_gpu=True, flags=set()) == ('bf16', None)
  assert precision.resolve_dtype('fp32', 'error', flags=set()) == ('fp32', None)


def test_onednn_off_is_warned_about():
  assert 'slower' in precision.onednn_warning({'TF_ENABLE_ONEDNN_OPTS': '0'})
  assert precision.onednn_warning({'TF_ENABLE_ONEDNN_OPTS': '1'}) is None
  assert precision.onednn_warning({}) is None


def _bf16_ops(run_metadata):
  """Names of the ops that ran in bfloat16, from the partition graphs of a step."""
  found = set()
  for graph in run_metadata.partition_graphs:
    for node in graph.node:
      if node.attr['T'].type == tf.bfloat16.as_datatype_enum:
        found.add(node.op)
  return found


def test_alexnet_bf16_rewrite_trains_with_float32_variables():
  rng = np.random.RandomState(0)
  images = rng.rand(16, 784).astype(np.float32)
  labels = np.eye(10, dtype=np.float32)[rng.randint(0, 10, 16)]
  with tf.Graph().as_default():
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 1e-3, optimizer='adam', seed=0)
    config = precision.enable_bf16_rewrite(tf.compat.v1.ConfigProto())
    with tf.compat.v1.Session(config=config) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      metadata = tf.compat.v1.RunMetadata()
      options = tf.compat.v1.RunOptions(output_partition_graphs=True)
      feed = {graph.x: images, graph.y: labels, graph.keep_prob: 1.0}
      losses = [sess.run([graph.train_op, graph.cross_entropy], feed, options=options,
                         run_metadata=metadata)[1] for _ in range(20)]
      variables = tf.compat.v1.trainable_variables()
  assert all(v.dtype.base_dtype == tf.float32 for v in variables)
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < losses[0]  # it learns the batch
  if NATIVE_BF16:  # the rewrite only acts where oneDNN has native bfloat16
    # oneDNN renames the kernels it takes over (_MklConv2D, _MklFusedMatMul, ...).
    heavy = [op for op in _bf16_ops(metadata) if 'Conv2D' in op or 'MatMul' in op]
    assert heavy, _bf16_ops(metadata)
  else:
    assert not _bf16_ops(metadata)


def test_resnet_bf16_model_fn_trains_with_float32_variables():
  with tf.Graph().as_default():
    tf.compat.v1.train.create_global_step()
    images = tf.constant(np.random.RandomState(0).rand(8, 28, 28, 1).astype(np.float32))
    labels = tf.constant(np.arange(8) % 10, dtype=tf.int32)
    spec = model_helpers.model_fn(images, labels, tf.estimator.ModeKeys.TRAIN,
                                  model_helpers.resnet_params(dtype='bf16'))
    logits_dtypes = {op.outputs[0].dtype for op in tf.compat.v1.get_default_graph()
                     .get_operations() if op.type == 'Conv2D'}
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      losses = [sess.run([spec.train_op, spec.loss])[1] for _ in range(4)]
    variables = tf.compat.v1.global_variables()
  assert logits_dtypes == {tf.bfloat16}
  assert spec.loss.dtype == tf.float32
  assert all(v.dtype.base_dtype == tf.float32 for v in variables
             if v.dtype.base_dtype.is_floating)
  assert np.all(np.isfinite(losses))


def _alexnet_flags(argv):
  return conftest.parse_flags(alexnet_main.define_alexnet_flags, argv)


def test_alexnet_main_bf16_run_records_the_dtype_it_used(tmp_path, learnable_idx_dir):
  model_dir = str(tmp_path / 'model')
  result = alexnet_main.run_alexnet(_alexnet_flags([
      '--data_dir=' + learnable_idx_dir, '--model_dir=' + model_dir, '--train_epochs=2',
      '--batch_size=50', '--validation_size=0', '--optimizer=adam', '--learning_rate=0.001',
      '--dtype=bf16']))
  with open(os.path.join(model_dir, 'flags.json')) as f:
    recorded = json.load(f)
  assert recorded['dtype'] == 'bf16'
  assert recorded['dtype_used'] == ('bf16' if NATIVE_BF16 else 'fp32')
  assert result['accuracy'] > 0.5  # 10 classes: chance is 0.1


def test_refused_bf16_leaves_an_existing_run_untouched(tmp_path, learnable_idx_dir,
                                                      monkeypatch, capsys):
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  (model_dir / 'checkpoint').write_text('model_checkpoint_path: "model.ckpt-7"\n')
  monkeypatch.setattr(precision, 'cpu_flags', lambda *args: {'avx2'})
  flag_values = _alexnet_flags([
      '--data_dir=' + learnable_idx_dir, '--model_dir=%s' % model_dir, '--clean',
      '--dtype=bf16', '--bf16_fallback=error'])
  with pytest.raises(SystemExit) as exit_info:
    lifecycle.run_main(functools.partial(alexnet_main.run_alexnet, flag_values),
                       user_errors=input_data.DATA_ERRORS)
  assert 'neither AVX512-BF16 nor AMX' in str(exit_info.value.code)
  assert sorted(os.listdir(str(model_dir))) == ['checkpoint']  # --clean did not run
  del capsys


def test_dtype_flags_are_validated():
  with pytest.raises(flags.IllegalFlagValueError, match='fp32|bf16'):
    _alexnet_flags(['--dtype=fp16'])
  with pytest.raises(flags.IllegalFlagValueError, match='fp32|error'):
    _alexnet_flags(['--bf16_fallback=maybe'])
