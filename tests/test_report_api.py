"""The report's API, called as the report and the Model Garden's r1 code call it.

The report lists `resnet_run_loop`'s functions and calls `resnet_main` as the Model Garden's
cifar10_main does; its AlexNet is `pred = alexnet(x, weights, bias, keep_prob)` on a
[None, 784] placeholder, fed by `input_data.read_data_sets`. Each name keeps the Model Garden's
r1 signature (official/r1/resnet/ in tensorflow/models); these tests call them that way, in the
manner of the Model Garden's own cifar10_test.py.
"""

import inspect
import os

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import alexnet_model
from mnist_cnn import googlenet_main
from mnist_cnn import input_data
from mnist_cnn import resnet_main
from official.resnet import cifar10_main
from official.resnet import resnet_model
from official.resnet import resnet_run_loop
from official.utils import distribution_utils
from official.utils.logs import run_record
from tests.conftest import cifar10_records
from tests.conftest import parse_flags

BATCH_SIZE = 128
RUN_LOOP_SIGNATURES = {
    'process_record_dataset': ['dataset', 'is_training', 'batch_size', 'shuffle_buffer',
                               'parse_record_fn', 'num_epochs', 'dtype',
                               'datasets_num_private_threads', 'drop_remainder'],
    'get_synth_input_fn': ['height', 'width', 'num_channels', 'num_classes', 'dtype'],
    'image_bytes_serving_input_fn': ['image_shape', 'dtype'],
    'override_flags_and_set_envars_for_gpu_thread_pool': ['flags_obj'],
    'override_flags_and_set_envvars_for_gpu_thread_pool': ['flags_obj'],
    'learning_rate_with_decay': ['batch_size', 'batch_denom', 'num_images', 'boundary_epochs',
                                 'decay_rates', 'base_lr', 'warmup'],
    'resnet_model_fn': ['features', 'labels', 'mode', 'model_class', 'resnet_size',
                        'weight_decay', 'learning_rate_fn', 'momentum', 'data_format',
                        'resnet_version', 'loss_scale', 'loss_filter_fn', 'dtype', 'fine_tune',
                        'label_smoothing'],
    'resnet_main': ['flags_obj', 'model_function', 'input_function', 'dataset_name', 'shape'],
    'define_resnet_flags': ['resnet_size_choices'],
}


@pytest.mark.parametrize('name', sorted(RUN_LOOP_SIGNATURES))
def test_the_run_loop_has_each_name_of_the_report_with_the_model_garden_s_arguments(name):
  parameters = list(inspect.signature(getattr(resnet_run_loop, name)).parameters)
  expected = RUN_LOOP_SIGNATURES[name]
  assert parameters[:len(expected)] == expected  # extra keywords may follow, with defaults


def test_cifar10_main_has_the_model_garden_s_module_api():
  assert (cifar10_main.HEIGHT, cifar10_main.WIDTH, cifar10_main.NUM_CHANNELS,
          cifar10_main.NUM_CLASSES) == (32, 32, 3, 10)
  assert cifar10_main.NUM_IMAGES == {'train': 50000, 'validation': 10000}
  assert cifar10_main._RECORD_BYTES == 3073  # pylint: disable=protected-access
  assert cifar10_main.DATASET_NAME == 'CIFAR-10'
  for name in ('get_filenames', 'parse_record', 'preprocess_image', 'input_fn',
               'get_synth_input_fn', 'Cifar10Model', 'cifar10_model_fn', 'define_cifar_flags',
               'run_cifar', 'main'):
    assert callable(getattr(cifar10_main, name)), name
  assert list(inspect.signature(cifar10_main.input_fn).parameters)[:5] == [
      'is_training', 'data_dir', 'batch_size', 'num_epochs', 'dtype']


def _cifar_flags(argv):
  return parse_flags(cifar10_main.define_cifar_flags, argv, 'cifar10_main')


@pytest.mark.slow
def test_the_report_s_snippet_runs_on_synthetic_data_parsing_tf_config_once(
    tmp_path, monkeypatch):
  parsed = []
  real = distribution_utils.parse_tf_config
  monkeypatch.setattr(distribution_utils, 'parse_tf_config',
                      lambda text: parsed.append(text) or real(text))
  flags_obj = _cifar_flags(['-md', str(tmp_path / 'model'), '-rs', '8', '-bs', '32', '-te', '1',
                            '--use_synthetic_data', '--batch_norm_batches=1'])
  # As the Model Garden's run_cifar chose it, then the report's call.
  input_function = (flags_obj.use_synthetic_data and
                    cifar10_main.get_synth_input_fn(tf.float32) or cifar10_main.input_fn)
  HEIGHT, WIDTH, NUM_CHANNELS = 32, 32, 3  # pylint: disable=invalid-name
  DATASET_NAME = cifar10_main.DATASET_NAME  # pylint: disable=invalid-name
  cifar10_model_fn = cifar10_main.cifar10_model_fn

  result = resnet_run_loop.resnet_main(
      flags_obj, cifar10_model_fn, input_function, DATASET_NAME,
      shape=[HEIGHT, WIDTH, NUM_CHANNELS])

  assert len(parsed) == 1
  assert set(result) >= {'eval_results', 'train_hooks'}
  evaluation = result['eval_results']
  assert evaluation['global_step'] == 1024 // 32  # one epoch of the 1,024 synthetic images
  assert 0 <= evaluation['accuracy'] <= 1 and 0 <= evaluation['accuracy_top_5'] <= 1
  assert result['train_hooks'] == []
  records = run_record.read_metrics(str(tmp_path / 'model'))
  assert records[0]['epoch'] == 1 and records[-1]['event'] == 'finished'


def _synthetic_batch(dtype):
  input_fn = cifar10_main.get_synth_input_fn(dtype)
  dataset = input_fn(True, '', BATCH_SIZE)
  return tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()


def _model_garden_params(dtype=tf.float32, **extra):
  """The params the Model Garden's resnet_main gave its model_fns."""
  return dict({'dtype': dtype, 'resnet_size': 32, 'data_format': 'channels_last',
               'batch_size': BATCH_SIZE, 'resnet_version': 2,
               'loss_scale': 128 if dtype == tf.float16 else 1, 'fine_tune': False}, **extra)


MODEL_FNS = {
    'cifar10': (cifar10_main.cifar10_model_fn, (32, 32, 3), {}),
    'mnist': (resnet_main.mnist_model_fn, (28, 28, 1), {'resnet_size': 18, 'num_filters': 4}),
    'googlenet': (googlenet_main.googlenet_model_fn, (28, 28, 1),
                  {'width_multiplier': 0.125}),
}


def _check_spec(spec, mode, batch):
  predictions = spec.predictions
  assert predictions['probabilities'].shape.as_list()[1:] == [10]
  assert predictions['probabilities'].dtype == tf.float32
  assert predictions['classes'].dtype == tf.int64
  if mode != tf.estimator.ModeKeys.PREDICT:
    assert spec.loss.shape.as_list() == [] and spec.loss.dtype == tf.float32
  if mode == tf.estimator.ModeKeys.EVAL:
    value, update = spec.eval_metric_ops['accuracy']
    assert value.shape.as_list() == [] and update.dtype == tf.float32
  with tf.compat.v1.Session() as sess:
    sess.run([tf.compat.v1.global_variables_initializer(),
              tf.compat.v1.local_variables_initializer()])
    probabilities, classes = sess.run([predictions['probabilities'], predictions['classes']])
    if mode == tf.estimator.ModeKeys.TRAIN:
      _, loss = sess.run([spec.train_op, spec.loss])
      assert np.isfinite(loss)
  assert probabilities.shape == (batch, 10) and classes.shape == (batch,)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('mode', [tf.estimator.ModeKeys.TRAIN, tf.estimator.ModeKeys.EVAL,
                                  tf.estimator.ModeKeys.PREDICT])
@pytest.mark.parametrize('name', sorted(MODEL_FNS))
def test_each_model_fn_in_each_mode_as_the_model_garden_tests_it(name, mode):
  model_fn, shape, extra = MODEL_FNS[name]
  batch = 6
  with tf.Graph().as_default():
    features = tf.random.uniform([batch] + list(shape), seed=1)
    labels = tf.constant(np.arange(batch) % 10, tf.int32)
    spec = model_fn(features, labels, mode, _model_garden_params(**extra))
    _check_spec(spec, mode, batch)


@pytest.mark.parametrize('resnet_version', [1, 2])
def test_cifar10_model_fn_on_the_synthetic_input_fn(resnet_version):
  with tf.Graph().as_default():
    features, labels = _synthetic_batch(tf.float32)
    spec = cifar10_main.cifar10_model_fn(features, labels, tf.estimator.ModeKeys.EVAL,
                                         _model_garden_params(resnet_size=8,
                                                              resnet_version=resnet_version))
    _check_spec(spec, tf.estimator.ModeKeys.EVAL, BATCH_SIZE)


def test_parse_record_of_a_hand_made_3073_byte_record(tmp_path):
  fake_data = bytearray([7])
  for channel in range(3):
    fake_data.extend([channel] * (32 * 32))
  assert len(fake_data) == cifar10_main._RECORD_BYTES  # pylint: disable=protected-access
  path = str(tmp_path / 'one.bin')
  with open(path, 'wb') as f:
    f.write(fake_data)
  with tf.Graph().as_default():
    dataset = tf.data.FixedLengthRecordDataset(path, 3073).map(
        lambda value: cifar10_main.parse_record(value, False, tf.float32))
    image, label = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    assert label.shape.as_list() == [] and image.shape.as_list() == [32, 32, 3]
    with tf.compat.v1.Session() as sess:
      image, label = sess.run([image, label])
  assert label == 7
  # Red, green and blue planes of 0, 1 and 2, in [0, 1]: the model standardises them itself
  # (the Model Garden's parse_record gave -1.225, 0, 1.225 here).
  np.testing.assert_allclose(image, np.broadcast_to([0, 1 / 255, 2 / 255], (32, 32, 3)))


def test_input_fn_streams_the_record_files_through_process_record_dataset(tmp_path):
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (5 * 2, 32, 32, 3)).astype(np.uint8)
  for index in range(5):
    with open(str(tmp_path / ('data_batch_%d.bin' % (index + 1))), 'wb') as f:
      f.write(cifar10_records(images[2 * index:2 * index + 2], [index, 9]))
  with open(str(tmp_path / 'test_batch.bin'), 'wb') as f:
    f.write(cifar10_records(images[:3], [3, 4, 5]))
  assert cifar10_main.get_filenames(False, str(tmp_path)) == [str(tmp_path / 'test_batch.bin')]
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    evaluation = cifar10_main.input_fn(False, str(tmp_path), batch_size=3)
    test_images, test_labels = sess.run(
        tf.compat.v1.data.make_one_shot_iterator(evaluation).get_next())
    training = cifar10_main.input_fn(True, str(tmp_path), batch_size=10, num_epochs=1)
    _, train_labels = sess.run(tf.compat.v1.data.make_one_shot_iterator(training).get_next())
  np.testing.assert_allclose(test_images, images[:3] / 255.0, atol=1e-6)
  assert test_labels.tolist() == [3, 4, 5]
  assert sorted(train_labels.tolist()) == [0, 1, 2, 3, 4] + [9] * 5
  with pytest.raises(FileNotFoundError, match='missing data_batch_1.bin'):
    cifar10_main.get_filenames(True, str(tmp_path / 'nowhere'))


def test_process_record_dataset_hands_parse_record_fn_the_record_itself():
  seen = []

  def parse_record_fn(raw_record, is_training, dtype):
    seen.append((raw_record.dtype, raw_record.shape.as_list(), is_training, dtype))
    return tf.strings.length(raw_record), tf.constant(0)

  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    dataset = resnet_run_loop.process_record_dataset(
        tf.data.Dataset.from_tensor_slices(['a', 'bb', 'ccc']), False, 3, 3, parse_record_fn,
        dtype=tf.float16)
    lengths, _ = sess.run(tf.compat.v1.data.make_one_shot_iterator(dataset).get_next())
  assert seen == [(tf.string, [], False, tf.float16)]
  assert lengths.tolist() == [1, 2, 3]


@pytest.mark.parametrize('resnet_version', [1, 2])
def test_cifar10_model_shapes_at_odd_batch_and_class_counts(resnet_version):
  with tf.Graph().as_default():
    model = cifar10_main.Cifar10Model(32, data_format='channels_last', num_classes=246,
                                      resnet_version=resnet_version)
    output = model(tf.random.uniform([135, 32, 32, 3]), training=True)
    assert output.shape.as_list() == [135, 246]


def test_learning_rate_with_decay_at_its_boundaries_and_the_model_garden_s_warm_up():
  def rates(rate_fn, steps):
    with tf.Graph().as_default():
      step = tf.compat.v1.placeholder(tf.int64, [])
      rate = rate_fn(step)
      with tf.compat.v1.Session() as sess:
        return [sess.run(rate, {step: s}) for s in steps]

  # 128 images a batch over 1,280: 10 steps an epoch; 0.1 * 128 / 128 at first.
  rate_fn = resnet_run_loop.learning_rate_with_decay(
      batch_size=128, batch_denom=128, num_images=1280, boundary_epochs=[91, 136],
      decay_rates=[1, 0.1, 0.01])
  np.testing.assert_allclose(rates(rate_fn, [0, 910, 911, 1360, 1361]),
                             [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)
  warm = resnet_run_loop.learning_rate_with_decay(128, 128, 1280, [91], [1, 0.1], base_lr=0.2,
                                                  warmup=True)  # over 5 epochs: 50 steps
  np.testing.assert_allclose(rates(warm, [0, 25, 50, 51]), [0.0, 0.1, 0.2, 0.2], rtol=1e-6)


def test_the_positional_model_call_has_the_exact_imagenet_parameter_count():
  with tf.Graph().as_default():
    # The Model Garden's ImagenetModel(50) call, argument for argument.
    model = resnet_model.Model(50, True, 1000, 64, 7, 2, 3, 2, [3, 4, 6, 3], [1, 2, 2, 2], 1,
                               'channels_last')
    logits = model(tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3]), False)
    count = sum(int(np.prod(v.shape)) for v in tf.compat.v1.trainable_variables())
  assert logits.shape.as_list() == [None, 1000] and model.resnet_size == 50
  assert count == 25557032  # ResNet-50's published count


def test_resnet_model_fn_called_as_the_model_garden_s_cifar10_model_fn_calls_it():
  with tf.Graph().as_default():
    features, labels = _synthetic_batch(tf.float32)
    spec = resnet_run_loop.resnet_model_fn(
        features=features, labels=labels, mode=tf.estimator.ModeKeys.TRAIN,
        model_class=cifar10_main.Cifar10Model, resnet_size=8, weight_decay=2e-4,
        learning_rate_fn=lambda global_step: tf.constant(0.1), momentum=0.9,
        data_format='channels_last', resnet_version=2, loss_scale=1,
        loss_filter_fn=lambda _: True, dtype=tf.float32, fine_tune=False)
    _check_spec(spec, tf.estimator.ModeKeys.TRAIN, BATCH_SIZE)


def test_the_synthetic_input_fn_covers_every_class():
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    input_fn = resnet_run_loop.get_synth_input_fn(20, 16, 1, 36, dtype=tf.float16)
    images, labels = sess.run(tf.compat.v1.data.make_one_shot_iterator(
        input_fn(False, None, 256)).get_next())
  assert images.shape == (256, 20, 16, 1) and images.dtype == np.float16
  assert sorted(set(labels.tolist())) == list(range(36))  # the Model Garden's never gave 35


def test_image_bytes_serving_input_fn_exports_an_estimator_that_reads_pngs(tmp_path):
  estimator = tf.estimator.Estimator(
      resnet_main.mnist_model_fn, model_dir=str(tmp_path / 'model'),
      params=_model_garden_params(resnet_size=18, num_filters=4, batch_size=8))
  estimator.train(lambda: resnet_main.get_synth_input_fn(tf.float32)(True, None, 8),
                  max_steps=1)
  path = estimator.export_saved_model(
      str(tmp_path / 'export'),
      lambda: resnet_run_loop.image_bytes_serving_input_fn([28, 28, 1]))
  png = tf.io.encode_png(tf.cast(tf.random.uniform([40, 30, 3], maxval=255), tf.uint8))
  out = tf.saved_model.load(path.decode()).signatures['serving_default'](
      image_bytes=tf.stack([png, png, png]))
  assert out['probabilities'].shape == (3, 10)


def test_the_gpu_thread_pool_helper_sets_the_environment_and_writes_the_flags(monkeypatch):
  monkeypatch.delenv('TF_GPU_THREAD_MODE', raising=False)
  flags_obj = _cifar_flags(['--tf_gpu_thread_mode=gpu_private', '--num_gpus=0',
                            '--per_gpu_thread_count=3'])
  resnet_run_loop.override_flags_and_set_envvars_for_gpu_thread_pool(flags_obj)
  assert os.environ['TF_GPU_THREAD_MODE'] == 'gpu_private'
  assert os.environ['TF_GPU_THREAD_COUNT'] == '3'
  assert flags_obj.inter_op_parallelism_threads == 2
  assert flags_obj.datasets_num_private_threads >= 1


def test_define_resnet_flags_and_the_model_garden_s_short_names():
  flag_values = flags.FlagValues()
  resnet_run_loop.define_resnet_flags(flag_values=flag_values)
  flag_values(['main', '-rs', '101', '-rv', '1', '-bs', '16', '-te', '3', '-ebe', '2',
               '-md', '/tmp/m', '-dd', '/tmp/d', '-ed', '/tmp/e', '-st', '0.9', '-mts', '7',
               '-dt', 'fp16', '-ft', '-synth', '-ng', '0', '-df', 'channels_last'])
  assert (flag_values.resnet_size, flag_values.resnet_version, flag_values.batch_size,
          flag_values.train_epochs, flag_values.epochs_between_evals) == ('101', '1', 16, 3, 2)
  assert (flag_values.model_dir, flag_values.data_dir, flag_values.export_dir) == (
      '/tmp/m', '/tmp/d', '/tmp/e')
  assert (flag_values.stop_threshold, flag_values.max_train_steps, flag_values.dtype) == (
      0.9, 7, 'fp16')
  assert flag_values.fine_tune and flag_values.use_synthetic_data
  with pytest.raises(flags.IllegalFlagValueError, match='positive whole number'):
    flag_values(['main', '-rs', 'fifty'])


@pytest.mark.slow
def test_run_cifar_end_to_end_with_short_flags_on_synthetic_data(tmp_path):
  # The Model Garden's cifar10_test end to end: -resnet_version 1 -batch_size 4, one step.
  flags_obj = _cifar_flags(['--use_synthetic_data', '-md', str(tmp_path / 'model'), '-te', '1',
                            '-resnet_version', '1', '-batch_size', '4', '--max_train_steps',
                            '1', '-rs', '8', '-ed', str(tmp_path / 'export')])
  result = cifar10_main.run_cifar(flags_obj)
  assert result['eval_results']['global_step'] == 1
  assert os.path.isfile(os.path.join(result['export_path'], 'saved_model.pb'))


def test_alexnet_as_the_report_calls_it():
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)
    learning_rate = 0.02
    x = tf.compat.v1.placeholder(tf.float32, [None, 784])
    y = tf.compat.v1.placeholder(tf.float32, [None, 10])
    keep_prob = tf.compat.v1.placeholder(tf.float32)
    weights, bias = alexnet_model.make_variables()
    pred = alexnet_model.alexnet(x, weights, bias, keep_prob)
    cost = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=pred))
    optimizer = tf.compat.v1.train.AdadeltaOptimizer(learning_rate).minimize(cost)
    correct = tf.equal(tf.argmax(pred, 1), tf.argmax(y, 1))
    accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
    data = input_data.synthetic_data_sets(num_train=40, num_test=20, one_hot=True)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      batch_x, batch_y = data.train.next_batch(20)
      _, loss = sess.run([optimizer, cost], {x: batch_x, y: batch_y, keep_prob: 0.8})
      value = sess.run(accuracy, {x: data.test.images, y: data.test.labels, keep_prob: 1.0})
  assert pred.shape.as_list() == [None, 10] and np.isfinite(loss) and 0 <= value <= 1
  with tf.Graph().as_default(), pytest.raises(ValueError, match='pass image_shape'):
    alexnet_model.alexnet(tf.compat.v1.placeholder(tf.float32, [None, 700]),
                          *alexnet_model.make_variables(), 1.0)


def test_read_data_sets_as_the_report_read_mnist(idx_dir):
  mnist = input_data.read_data_sets(idx_dir, one_hot=True, validation_size=10)
  assert mnist.train.images.shape == (50, 784) and mnist.train.labels.shape == (50, 10)
  assert mnist.validation.num_examples == 10 and mnist.test.num_examples == 20
  images, labels = mnist.train.next_batch(25)
  assert images.shape == (25, 784) and labels.sum() == 25
