"""ResNet: the model class, model_fn, learning rate, run loop, main and export."""

import json
import os
import subprocess
import sys

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import resnet_main
from official.resnet import resnet_model
from official.resnet import resnet_run_loop
from official.utils.logs import hooks_helper
from official.utils.logs import run_record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)
IMAGENET_PARAMETERS = {18: 11689512, 34: 21797672, 50: 25557032, 101: 44549160,
                       152: 60192808}


def make_flags(argv=()):
  flag_values = flags.FlagValues()
  resnet_main.define_mnist_flags(flag_values)
  flag_values(['resnet_main'] + list(argv))
  return flag_values


def _trainable_count():
  return sum(int(np.prod(v.shape)) for v in tf.compat.v1.trainable_variables())


@pytest.mark.parametrize('size', sorted(IMAGENET_PARAMETERS))
def test_imagenet_configuration_has_the_standard_parameter_count(size):
  block_sizes, bottleneck = resnet_model.get_block_sizes(size)
  with tf.Graph().as_default():
    model = resnet_model.Model(size, bottleneck, 1000, num_filters=64, kernel_size=7,
                               conv_stride=2, first_pool_size=3, first_pool_stride=2,
                               block_sizes=block_sizes, block_strides=[1, 2, 2, 2],
                               resnet_version=1, data_format='channels_last')
    logits = model(tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3]), training=False)
    assert logits.shape.as_list() == [None, 1000]
    assert _trainable_count() == IMAGENET_PARAMETERS[size]


@pytest.mark.parametrize('size', sorted(resnet_model.RESNET_SIZES))
@pytest.mark.parametrize('version', [1, 2])
@pytest.mark.parametrize('data_format', ['channels_last', 'channels_first'])
def test_output_shape_for_every_size_version_and_format(size, version, data_format):
  with tf.Graph().as_default():
    model = resnet_main.MnistModel(size, num_classes=7, num_filters=4, resnet_version=version,
                                   data_format=data_format)
    logits = model(tf.zeros([3, 28, 28, 1]), training=True)
    assert logits.shape.as_list() == [3, 7]


@pytest.mark.parametrize('size,version', [(18, 1), (18, 2), (50, 1), (50, 2)])
def test_forward_pass_runs_on_cpu_at_odd_batch_and_class_counts(size, version):
  with tf.Graph().as_default():
    model = resnet_main.MnistModel(size, num_classes=3, num_filters=4, resnet_version=version,
                                   data_format='channels_last')
    logits = model(tf.random.uniform([5, 28, 28, 1], seed=0), training=False)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(logits)
  assert values.shape == (5, 3) and np.all(np.isfinite(values))


@pytest.mark.parametrize('stem,spatial', [('mnist', 2), ('cifar', 4), ('imagenet', 1)])
def test_stems_set_the_final_feature_map_size(stem, spatial):
  with tf.Graph().as_default() as graph:
    model = resnet_main.MnistModel(18, 10, stem=stem, num_filters=4,
                                   data_format='channels_last')
    model(tf.zeros([2, 28, 28, 1]), training=False)
    final = graph.get_tensor_by_name('resnet_model/block_layer4/output:0')
    assert final.shape.as_list() == [2, spatial, spatial, 32]


def test_bad_size_version_format_and_stem_raise_value_errors():
  with pytest.raises(ValueError, match='resnet_size 19; choose one of 18, 34, 50, 101, 152, '
                     '200'):
    resnet_model.get_block_sizes(19)
  with pytest.raises(ValueError, match='resnet_version must be 1 or 2'):
    resnet_main.MnistModel(18, 10, resnet_version=3)
  with pytest.raises(ValueError, match='data_format must be'):
    resnet_main.MnistModel(18, 10, data_format='NHWC')
  with pytest.raises(ValueError, match='unknown stem'):
    resnet_main.MnistModel(18, 10, stem='huge')


@pytest.mark.parametrize('dtype', [tf.float16, tf.bfloat16])
def test_low_precision_models_keep_float32_variables(dtype):
  with tf.Graph().as_default():
    model = resnet_main.MnistModel(18, 10, num_filters=4, data_format='channels_last',
                                   dtype=dtype)
    logits = model(tf.zeros([2, 28, 28, 1]), training=True)
    assert logits.dtype == dtype
    assert {v.dtype.base_dtype for v in tf.compat.v1.global_variables()} == {tf.float32}


def _params(**overrides):
  params = {
      'model': lambda dtype: resnet_main.MnistModel(18, 10, num_filters=4,
                                                    data_format='channels_last', dtype=dtype),
      'num_classes': 10, 'weight_decay': 1e-4, 'momentum': 0.9, 'dtype': 'fp32',
      'learning_rate_fn': lambda step: tf.constant(0.1), 'loss_scale': None,
      'fine_tune': False, 'label_smoothing': 0.0}
  params.update(overrides)
  return params


def _features_and_labels(batch=6):
  rng = np.random.RandomState(0)
  return (tf.constant(rng.rand(batch, 28, 28, 1).astype(np.float32)),
          tf.constant(np.arange(batch) % 10, dtype=tf.int32))


def test_model_fn_predict_mode_gives_classes_and_probabilities():
  with tf.Graph().as_default():
    features, _ = _features_and_labels()
    spec = resnet_run_loop.resnet_model_fn(features, None, tf.estimator.ModeKeys.PREDICT,
                                           _params())
    assert spec.predictions['classes'].dtype == tf.int64
    assert spec.predictions['probabilities'].shape.as_list() == [6, 10]
    assert 'predict' in spec.export_outputs


def test_model_fn_eval_mode_gives_loss_and_accuracy_metrics():
  with tf.Graph().as_default():
    features, labels = _features_and_labels()
    spec = resnet_run_loop.resnet_model_fn(features, labels, tf.estimator.ModeKeys.EVAL,
                                           _params())
    assert set(spec.eval_metric_ops) == {'accuracy', 'accuracy_top_5', 'cross_entropy'}
    assert spec.train_op is None
    with tf.compat.v1.Session() as sess:
      sess.run([tf.compat.v1.global_variables_initializer(),
                tf.compat.v1.local_variables_initializer()])
      assert np.isfinite(sess.run(spec.loss))


@pytest.mark.parametrize('dtype', ['fp32', 'fp16', 'bf16'])
def test_model_fn_train_mode_trains_every_variable_with_a_finite_loss(dtype):
  with tf.Graph().as_default() as graph:
    features, labels = _features_and_labels()
    spec = resnet_run_loop.resnet_model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                           _params(dtype=dtype))
    assert spec.loss.dtype == tf.float32
    for name in hooks_helper.TENSORS_TO_LOG.values():
      assert graph.get_tensor_by_name(name + ':0') is not None
    variables = tf.compat.v1.trainable_variables()
    gradients = tf.gradients(spec.loss, variables)
    assert all(g is not None for g in gradients)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      before = sess.run(variables)
      loss = sess.run(spec.loss)
      sess.run(spec.train_op)
      after = sess.run(variables)
  assert np.isfinite(loss)
  assert all(not np.array_equal(b, a) for b, a in zip(before, after))


def test_batch_norm_updates_moving_averages_during_training():
  with tf.Graph().as_default():
    features, labels = _features_and_labels()
    spec = resnet_run_loop.resnet_model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                           _params())
    moving = [v for v in tf.compat.v1.global_variables() if 'moving_mean' in v.name]
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      sess.run(spec.train_op)
      assert any(np.abs(value).max() > 0 for value in sess.run(moving))


def test_weight_decay_excludes_batch_norm_variables():
  with tf.Graph().as_default() as graph:
    features, labels = _features_and_labels()
    resnet_run_loop.resnet_model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                    _params(weight_decay=0.01))
    variables = tf.compat.v1.trainable_variables()
    l2_loss = graph.get_tensor_by_name('l2_loss:0')
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values, l2_value = sess.run([variables, l2_loss])
  batch_norm = [v for v in variables if 'batch_normalization' in v.name]
  assert batch_norm  # gamma and beta exist and are trainable ...
  expected = 0.01 * sum(float(np.sum(value.astype(np.float64) ** 2)) / 2
                        for variable, value in zip(variables, values)
                        if 'batch_normalization' not in variable.name)
  assert l2_value == pytest.approx(expected, rel=1e-4)  # ... but carry no decay


def test_fine_tune_trains_only_the_dense_layer():
  with tf.Graph().as_default():
    features, labels = _features_and_labels()
    spec = resnet_run_loop.resnet_model_fn(features, labels, tf.estimator.ModeKeys.TRAIN,
                                           _params(fine_tune=True))
    variables = tf.compat.v1.trainable_variables()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      before = sess.run(variables)
      sess.run(spec.train_op)
      after = sess.run(variables)
  changed = {v.name for v, b, a in zip(variables, before, after) if not np.array_equal(b, a)}
  assert changed == {'resnet_model/dense/kernel:0', 'resnet_model/dense/bias:0'}


def test_learning_rate_values_at_and_around_boundaries():
  rate_fn = resnet_run_loop.learning_rate_with_decay(
      batch_size=128, batch_denom=256, num_images=1280, boundary_epochs=[2, 4],
      decay_rates=[1, 0.1, 0.01], base_lr=0.2)  # 10 steps per epoch, base 0.1
  with tf.Graph().as_default():
    step = tf.compat.v1.placeholder(tf.int64, [])
    rate = rate_fn(step)
    with tf.compat.v1.Session() as sess:
      values = {s: sess.run(rate, {step: s}) for s in (0, 19, 20, 21, 39, 40, 41, 1000)}
  assert values[0] == pytest.approx(0.1) and values[19] == pytest.approx(0.1)
  assert values[20] == pytest.approx(0.1) and values[21] == pytest.approx(0.01)
  assert values[40] == pytest.approx(0.01) and values[41] == pytest.approx(0.001)
  assert values[1000] == pytest.approx(0.001)


def test_learning_rate_warms_up_linearly():
  rate_fn = resnet_run_loop.learning_rate_with_decay(
      batch_size=256, batch_denom=256, num_images=2560, boundary_epochs=[5],
      decay_rates=[1, 0.1], base_lr=0.1, warmup_epochs=1)  # warm-up over 10 steps
  with tf.Graph().as_default():
    step = tf.compat.v1.placeholder(tf.int64, [])
    rate = rate_fn(step)
    with tf.compat.v1.Session() as sess:
      assert sess.run(rate, {step: 0}) == pytest.approx(0.0)
      assert sess.run(rate, {step: 5}) == pytest.approx(0.05)
      assert sess.run(rate, {step: 10}) == pytest.approx(0.1)
  with pytest.raises(ValueError, match='one more decay rate than boundaries'):
    resnet_run_loop.learning_rate_with_decay(128, 256, 100, [1, 2], [1, 0.1])


def test_thread_pool_settings_are_computed_without_mutating_flags(monkeypatch):
  monkeypatch.delenv('TF_GPU_THREAD_MODE', raising=False)
  flag_values = make_flags(['--tf_gpu_thread_mode=gpu_private', '--per_gpu_thread_count=3'])
  values = resnet_run_loop.override_flags_and_set_envars_for_gpu_thread_pool(flag_values)
  assert os.environ['TF_GPU_THREAD_MODE'] == 'gpu_private'
  assert os.environ['TF_GPU_THREAD_COUNT'] == '3'
  assert values['inter_op_parallelism_threads'] >= 2
  assert values['datasets_num_private_threads'] >= 1
  assert flag_values.inter_op_parallelism_threads == 0
  assert flag_values.datasets_num_private_threads is None
  plain = resnet_run_loop.override_flags_and_set_envars_for_gpu_thread_pool(
      make_flags(['--datasets_num_private_threads=2']))
  assert plain == {'inter_op_parallelism_threads': 0, 'datasets_num_private_threads': 2}


@pytest.mark.parametrize('argv,message', [
    (['--resnet_size=19'], 'value should be one of <18|34|50|101|152|200>'),
    (['--resnet_version=3'], 'value should be one of <1|2>'),
    (['--hooks=LoggingTensorHook,badhook'], '--hooks takes only these names'),
    (['--dtype=fp64'], 'value should be one of <fp32|fp16|bf16>'),
    (['--label_smoothing=1.5'], '--label_smoothing must be in'),
    (['--weight_decay=-1'], '--weight_decay must be zero or more'),
])
def test_bad_flags_fail_with_a_clear_message(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message.replace('|', r'\|')):
    make_flags(argv)


def _run_main(tmp_path, data_dir, extra=(), name='model'):
  argv = ['--data_dir=%s' % data_dir, '--model_dir=%s' % (tmp_path / name),
          '--num_filters=4', '--batch_size=50', '--warmup_epochs=0'] + list(extra)
  return resnet_main.run_resnet(make_flags(argv))


@pytest.mark.slow
def test_end_to_end_on_tiny_idx_data_with_export_loaded_in_a_fresh_process(
    tmp_path, learnable_idx_dir):
  export_dir = str(tmp_path / 'export')
  results = _run_main(tmp_path, learnable_idx_dir, [
      '--train_epochs=2', '--export_dir=%s' % export_dir, '--shift_pixels=0',
      '--hooks=LoggingTensorHook,ExamplesPerSecondHook'])
  assert results['global_step'] == 2 * 8  # 400 images / 50
  assert 0 <= results['accuracy'] <= 1 and 'accuracy_top_5' in results
  model_dir = str(tmp_path / 'model')
  records = run_record.read_metrics(model_dir)
  assert [r['epoch'] for r in records] == [1, 2]
  with open(os.path.join(model_dir, 'flags.json')) as f:
    recorded = json.load(f)
  assert recorded['resnet_size'] == '18' and recorded['model'] == 'resnet'
  version = os.path.basename(results['export_path'])
  assert version.isdigit() and os.listdir(export_dir) == [version]

  images = np.random.RandomState(1).rand(4, 28, 28, 1).astype(np.float32)
  np.save(str(tmp_path / 'images.npy'), images)
  script = (
      'import sys, numpy as np, tensorflow as tf\n'
      'fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]\n'
      'out = fn(images=tf.constant(np.load(sys.argv[2])))\n'
      'assert out["probabilities"].shape == (4, 10)\n'
      'np.save(sys.argv[3], out["probabilities"].numpy())\n')
  result = subprocess.run([sys.executable, '-c', script, results['export_path'],
                           str(tmp_path / 'images.npy'), str(tmp_path / 'probs.npy')],
                          capture_output=True, text=True, timeout=120, env=ENV)
  assert result.returncode == 0, result.stderr[-2000:]
  exported = np.load(str(tmp_path / 'probs.npy'))

  # The Estimator's own predictions from the checkpoint agree with the export.
  estimator = tf.estimator.Estimator(
      resnet_run_loop.resnet_model_fn, model_dir=model_dir,
      params=_params(model=lambda dtype: resnet_main.MnistModel(
          18, 10, num_filters=4, data_format='channels_last', dtype=dtype)))
  predicted = np.array([p['probabilities'] for p in estimator.predict(
      lambda: tf.data.Dataset.from_tensor_slices(images).batch(4))])
  np.testing.assert_allclose(exported, predicted, atol=1e-5)


@pytest.mark.slow
def test_resume_continues_to_the_target_and_does_not_retrain(tmp_path, learnable_idx_dir):
  first = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=1'])
  assert first['global_step'] == 8
  second = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=2'])
  assert second['global_step'] == 16
  again = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=2'])
  assert again['global_step'] == 16
  records = run_record.read_metrics(str(tmp_path / 'model'))
  assert [r['epoch'] for r in records] == [1, 1, 2, 1, 2]
  assert records[-1]['seconds'] == 0.0  # nothing left to train


def test_stop_threshold_stops_after_the_first_evaluation_that_reaches_it(
    tmp_path, learnable_idx_dir):
  results = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=5',
                                                    '--stop_threshold=0.01'])
  assert results['global_step'] == 8
  assert len(run_record.read_metrics(str(tmp_path / 'model'))) == 1


@pytest.mark.slow
def test_synthetic_data_run_with_max_train_steps_and_image_bytes_export(tmp_path):
  export_dir = str(tmp_path / 'export')
  results = resnet_main.run_resnet(make_flags([
      '--use_synthetic_data', '--model_dir=%s' % (tmp_path / 'model'), '--num_filters=4',
      '--batch_size=8', '--max_train_steps=2', '--export_dir=%s' % export_dir,
      '--image_bytes_as_serving_input']))
  assert results['global_step'] == 2
  png = tf.io.encode_png(tf.cast(tf.random.uniform([40, 30, 3], maxval=255), tf.uint8))
  fn = tf.saved_model.load(results['export_path']).signatures['serving_default']
  out = fn(image_bytes=tf.stack([png, png]))
  assert out['probabilities'].shape == (2, 10)
  assert out['classes'].dtype == tf.int64


def test_eval_only_evaluates_the_existing_checkpoint(tmp_path, learnable_idx_dir):
  _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=1'])
  results = _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=3', '--eval_only'])
  assert results['global_step'] == 8


def test_broken_data_file_exits_with_one_line(tmp_path, learnable_idx_dir):
  with open(os.path.join(learnable_idx_dir, 't10k-images-idx3-ubyte.gz'), 'wb') as f:
    f.write(b'\x1f\x8b garbage')
  result = subprocess.run(
      [sys.executable, '-m', 'mnist_cnn.resnet_main', '--data_dir=%s' % learnable_idx_dir,
       '--model_dir=%s' % (tmp_path / 'm')], capture_output=True, text=True, timeout=120,
      env=ENV, cwd=REPO)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: t10k-images-idx3-ubyte.gz: corrupt gzip stream')


@pytest.mark.slow
def test_run_resnet_script_end_to_end_on_tiny_data(tmp_path, learnable_idx_dir):
  runs = str(tmp_path / 'runs')
  env = dict(ENV, DATA_DIR=learnable_idx_dir, RUNS_DIR=runs, PYTHON=sys.executable,
             EPOCHS='1 2')
  result = subprocess.run(['bash', os.path.join(REPO, 'run_resnet.sh'), '--num_filters=4',
                           '--batch_size=50'], capture_output=True, text=True, timeout=600,
                          env=env, cwd=REPO)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = [[cell.strip() for cell in line.split('|')[1:-1]]
          for line in result.stdout.splitlines() if line.startswith('| runs/resnet/')]
  assert [row[0] for row in rows] == ['runs/resnet/resnet18_1ep', 'runs/resnet/resnet18_2ep',
                                       'runs/resnet/resnet18_fast']
  assert [row[3] for row in rows] == ['1', '2', '8']  # epochs
  assert [row[-1] for row in rows] == ['ok', 'ok', 'ok']
  # The fast run has the time-to-accuracy flags; the script's extra flags still come last.
  with open(os.path.join(runs, 'resnet', 'resnet18_fast', 'flags.json')) as f:
    fast = json.load(f)
  assert (fast['dtype'], fast['train_epochs'], fast['num_filters']) == ('bf16', 8, 4)
  assert '| seed report | ResNet | report settings | 1 | 0.8677 |' in result.stdout
  assert os.path.exists(os.path.join(runs, 'report', 'report.md'))
  assert 'step ' not in result.stdout or 'examples/s' in result.stdout


@pytest.mark.slow
def test_stem_benchmark_runs_in_smoke_mode():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'resnet_stems.py'), '--batch_size=2',
       '--rounds=1', '--steps_per_window=1'], capture_output=True, text=True, timeout=600,
      env=ENV, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.startswith('| ') and
          not line.startswith('| stem')]
  assert [row.split('|')[1].strip() for row in rows] == ['mnist', 'cifar', 'imagenet']


@pytest.mark.slow
def test_warm_start_with_fine_tune_keeps_pretrained_convolutions(tmp_path, learnable_idx_dir):
  _run_main(tmp_path, learnable_idx_dir, ['--train_epochs=1'], name='pretrained')
  pretrained = tf.train.latest_checkpoint(str(tmp_path / 'pretrained'))
  _run_main(tmp_path, learnable_idx_dir, [
      '--train_epochs=1', '--max_train_steps=2', '--fine_tune',
      '--pretrained_model_checkpoint_path=%s' % pretrained], name='tuned')
  before = tf.train.load_checkpoint(pretrained)
  after = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / 'tuned')))
  assert after.get_tensor('global_step') == 2
  kernel = 'resnet_model/conv2d/kernel'
  np.testing.assert_array_equal(after.get_tensor(kernel), before.get_tensor(kernel))
  dense = 'resnet_model/dense/kernel'
  assert not np.array_equal(after.get_tensor(dense), before.get_tensor(dense))


@pytest.mark.slow
def test_pipeline_benchmark_runs_in_smoke_mode():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'resnet_pipeline.py'),
       '--num_filters=4', '--batch_size=8', '--rounds=2', '--steps_per_window=2',
       '--warmup_steps=1'], capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split('|') for line in result.stdout.splitlines()
          if line.startswith('| ') and not line.startswith('| variant')]
  assert [row[1].strip() for row in rows] == ['estimator', 'estimator_bf16', 'session', 'keras']
  assert all(float(row[2].split()[0]) > 0 for row in rows)
