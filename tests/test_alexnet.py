"""AlexNet: graph, training behaviour, checkpoints, resume, export, flags and the script."""

import json
import os
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from mnist_cnn import alexnet_main
from mnist_cnn import alexnet_model
from official.utils.logs import hooks_helper
from official.utils.logs import run_record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_PARAMETERS = (576 + 64) + (73728 + 128) + (294912 + 256) + (4096 * 1024 + 1024) + (
    1024 * 1024 + 1024) + (1024 * 10 + 10)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)


def make_flags(argv=()):
  """Parses argv with a fresh set of AlexNet flags (no global state)."""
  flag_values = flags.FlagValues()
  alexnet_main.define_alexnet_flags(flag_values)
  flag_values(['alexnet_main'] + list(argv))
  return flag_values


def _param_count(variables):
  return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize('image_shape,num_classes,batch', [((28, 28, 1), 10, 3),
                                                           ((20, 12, 1), 7, 5)])
def test_logits_shape_at_odd_batch_and_class_counts(image_shape, num_classes, batch):
  with tf.Graph().as_default():
    graph = alexnet_model.build_train_graph(image_shape, num_classes, 0.02)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      logits = sess.run(graph.logits, {graph.x: np.zeros((batch, int(np.prod(image_shape))))})
  assert logits.shape == (batch, num_classes)


def test_trainable_parameter_count_for_mnist():
  with tf.Graph().as_default():
    alexnet_model.build_train_graph((28, 28, 1), 10, 0.02)
    assert _param_count(tf.compat.v1.trainable_variables()) == MNIST_PARAMETERS == 5624842


def test_weights_and_biases_dicts_have_the_report_layout():
  with tf.Graph().as_default():
    weights, biases = alexnet_model.make_variables((28, 28, 1), 10)
  assert sorted(weights) == ['out', 'wc1', 'wc2', 'wc3', 'wd1', 'wd2']
  assert sorted(biases) == ['bc1', 'bc2', 'bc3', 'bd1', 'bd2', 'out']
  assert [weights[k].shape.as_list() for k in ('wc1', 'wc2', 'wc3', 'wd1')] == [
      [3, 3, 1, 64], [3, 3, 64, 128], [3, 3, 128, 256], [4096, 1024]]


def test_helpers_match_their_tf_nn_definitions():
  with tf.Graph().as_default():
    inputs = tf.constant(np.random.RandomState(0).rand(2, 5, 5, 6).astype(np.float32))
    pooled = alexnet_model.Pool('p', inputs, 2)
    normalised = alexnet_model.Normalize('n', inputs)
    expected_norm = tf.nn.lrn(inputs, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
    with tf.compat.v1.Session() as sess:
      pooled, normalised, expected_norm = sess.run([pooled, normalised, expected_norm])
  assert pooled.shape == (2, 3, 3, 6)
  np.testing.assert_allclose(normalised, expected_norm)


def test_he_initialisation_is_seeded_and_scaled():
  def first_weights(seed):
    with tf.Graph().as_default():
      weights, _ = alexnet_model.make_variables((28, 28, 1), 10, seed=seed)
      with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        return sess.run(weights['wd1'])
  first, again, other = first_weights(1), first_weights(1), first_weights(2)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  # Truncated normal with stddev sqrt(2/4096) has a sample stddev of about 0.88 of that.
  assert abs(first.std() / np.sqrt(2.0 / 4096) - 0.88) < 0.03


def test_unknown_init_and_optimizer_are_rejected():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match='unknown init'):
      alexnet_model.make_variables((28, 28, 1), 10, init='xavier')
    with pytest.raises(ValueError, match='unknown optimizer .* adadelta, momentum, adam'):
      alexnet_model.make_optimizer('sgd', 0.1)


def _tiny_batch(num_classes=10, count=40, seed=0):
  rng = np.random.RandomState(seed)
  images = rng.rand(count, 784).astype(np.float32)
  labels = np.eye(num_classes, dtype=np.float32)[np.arange(count) % num_classes]
  return images, labels


def test_a_few_adadelta_steps_lower_the_loss():
  images, labels = _tiny_batch()
  with tf.Graph().as_default():
    tf.compat.v1.set_random_seed(0)
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 1.0, optimizer='adadelta')
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      feed = {graph.x: images, graph.y: labels}
      before = sess.run(graph.cross_entropy, feed)
      for _ in range(15):
        sess.run(graph.train_op, {graph.x: images, graph.y: labels, graph.keep_prob: 1.0})
      after = sess.run(graph.cross_entropy, feed)
  assert np.isfinite(after) and after < 0.8 * before


@pytest.mark.parametrize('optimizer', alexnet_model.OPTIMIZERS)
def test_every_trainable_variable_gets_a_finite_nonzero_gradient(optimizer):
  images, labels = _tiny_batch()
  with tf.Graph().as_default():
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 0.01, optimizer=optimizer)
    variables = tf.compat.v1.trainable_variables()
    gradients = tf.gradients(graph.cross_entropy, variables)
    assert all(g is not None for g in gradients)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      values = sess.run(gradients, {graph.x: images, graph.y: labels})
  for variable, value in zip(variables, values):
    assert np.all(np.isfinite(value)), variable.name
    assert np.abs(value).max() > 0, variable.name


def test_logged_tensors_exist_in_the_graph():
  with tf.Graph().as_default() as graph:
    alexnet_model.build_train_graph((28, 28, 1), 10, 0.02)
    for name in hooks_helper.TENSORS_TO_LOG.values():
      assert graph.get_tensor_by_name(name + ':0') is not None


def test_unknown_hook_name_is_rejected():
  with pytest.raises(ValueError, match="unknown hook 'TimelineHook'; --hooks takes: loggingtensorhook"):
    hooks_helper.get_train_hooks(['TimelineHook'], '/tmp', 32)


def test_checkpoint_save_and_restore_give_identical_predictions(tmp_path):
  images, _ = _tiny_batch()
  prefix = str(tmp_path / 'model.ckpt')
  predictions = []
  for restore in (False, True):
    with tf.Graph().as_default():
      tf.compat.v1.set_random_seed(1 if not restore else 2)  # different init when restoring
      graph = alexnet_model.build_train_graph((28, 28, 1), 10, 0.02)
      saver = tf.compat.v1.train.Saver()
      with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        if restore:
          saver.restore(sess, prefix)
        else:
          saver.save(sess, prefix)
        predictions.append(sess.run(graph.logits, {graph.x: images}))
  np.testing.assert_array_equal(predictions[0], predictions[1])


@pytest.mark.slow
def test_run_trains_resumes_and_exports(tmp_path, learnable_idx_dir):
  model_dir, export_dir = str(tmp_path / 'model'), str(tmp_path / 'export')
  common = ['--data_dir=%s' % learnable_idx_dir, '--model_dir=%s' % model_dir,
            '--optimizer=adam', '--learning_rate=0.001', '--batch_size=50',
            '--validation_size=50']
  first = alexnet_main.run_alexnet(make_flags(common + ['--train_epochs=2']))
  assert first['epoch'] == 2 and first['global_step'] == 2 * 7
  resumed = alexnet_main.run_alexnet(make_flags(
      common + ['--train_epochs=3', '--export_dir=%s' % export_dir]))
  assert resumed['epoch'] == 3 and resumed['global_step'] == 3 * 7
  records = run_record.read_metrics(model_dir)
  assert [r['epoch'] for r in records] == [1, 2, 3]
  assert all(0 <= r['accuracy'] <= 1 and r['test_examples'] == 100 for r in records)
  assert resumed['accuracy'] > 0.5  # the bands are easy to learn
  with open(os.path.join(model_dir, 'flags.json')) as f:
    recorded = json.load(f)
  assert recorded['train_epochs'] == 3 and recorded['model'] == 'alexnet'
  assert os.path.isdir(resumed['export_path'])
  assert os.path.dirname(resumed['export_path']) == export_dir
  assert os.path.basename(resumed['export_path']).isdigit()
  assert not [n for n in os.listdir(export_dir) if n.startswith('.')]

  # The export loads in a fresh process and predicts the classes the checkpoint does.
  images = np.random.RandomState(0).rand(6, 28, 28, 1).astype(np.float32)
  images_path = str(tmp_path / 'images.npy')
  np.save(images_path, images)
  script = (
      'import sys, numpy as np, tensorflow as tf\n'
      'model = tf.saved_model.load(sys.argv[1])\n'
      'fn = model.signatures["serving_default"]\n'
      'images = np.load(sys.argv[2])\n'
      'a = fn(images=tf.constant(images))\n'
      'b = fn(images=tf.constant(images.reshape(6, 784)))\n'
      'assert (a["classes"].numpy() == b["classes"].numpy()).all()\n'
      'assert a["probabilities"].shape == (6, 10)\n'
      'print(" ".join(map(str, a["classes"].numpy())))\n')
  result = subprocess.run([sys.executable, '-c', script, resumed['export_path'], images_path],
                          capture_output=True, text=True, timeout=120, env=ENV)
  assert result.returncode == 0, result.stderr[-2000:]
  exported_classes = [int(c) for c in result.stdout.split()]
  with tf.Graph().as_default():
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 0.02)
    with tf.compat.v1.Session() as sess:
      model_variables = list(graph.weights.values()) + list(graph.biases.values())
      tf.compat.v1.train.Saver(model_variables).restore(sess,
                                                        tf.train.latest_checkpoint(model_dir))
      logits = sess.run(graph.logits, {graph.x: images.reshape(6, 784)})
  assert exported_classes == list(logits.argmax(1))


def test_stop_threshold_and_max_train_steps_end_the_run_early(tmp_path, learnable_idx_dir):
  common = ['--data_dir=%s' % learnable_idx_dir, '--optimizer=adam', '--learning_rate=0.001',
            '--batch_size=50', '--train_epochs=20', '--validation_size=50']
  stopped = alexnet_main.run_alexnet(make_flags(common + [
      '--model_dir=%s' % (tmp_path / 'a'), '--stop_threshold=0.5']))
  assert stopped['accuracy'] >= 0.5 and stopped['epoch'] < 20
  capped = alexnet_main.run_alexnet(make_flags(common + [
      '--model_dir=%s' % (tmp_path / 'b'), '--max_train_steps=10']))
  assert capped['global_step'] == 10


def test_hooks_run_inside_the_session_loop(tmp_path, capsys):
  result = alexnet_main.run_alexnet(make_flags([
      '--use_synthetic_data', '--model_dir=%s' % tmp_path, '--train_epochs=1',
      '--hooks=LoggingTensorHook,ExamplesPerSecondHook,StepCounterHook,ProfilerHook',
      '--batch_size=64']))
  assert result['global_step'] == 16
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(tmp_path))


@pytest.mark.parametrize('argv,message', [
    (['--learning_rate=-0.1'], '--learning_rate must be positive'),
    (['--dropout=0'], '--dropout is a keep probability and must be in (0, 1]'),
    (['--dropout=1.5'], '--dropout is a keep probability and must be in (0, 1]'),
    (['--batch_size=0'], '--batch_size must be a positive number'),
    (['--train_epochs=-1'], '--train_epochs must be a positive number'),
    (['--hooks=nosuchhook'], '--hooks takes only these names'),
    (['--optimizer=sgd'], 'value should be one of'),
])
def test_bad_flags_fail_with_a_message_naming_the_flag(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message.replace('(', r'\(').replace(
      ')', r'\)').replace('[', r'\[').replace(']', r'\]')):
    make_flags(argv)


def test_data_dir_that_is_a_file_fails_flag_validation(tmp_path):
  path = tmp_path / 'f'
  path.write_text('')
  with pytest.raises(flags.IllegalFlagValueError, match='--data_dir names a file'):
    make_flags(['--data_dir=%s' % path])


def test_bad_flag_on_the_command_line_exits_non_zero_with_the_message():
  result = subprocess.run([sys.executable, '-m', 'mnist_cnn.alexnet_main', '--dropout=2'],
                          capture_output=True, text=True, timeout=120, env=ENV)
  assert result.returncode != 0
  assert '--dropout is a keep probability and must be in (0, 1]' in result.stderr


@pytest.mark.slow
def test_interrupted_run_keeps_its_last_checkpoint(tmp_path, learnable_idx_dir):
  model_dir = str(tmp_path / 'model')
  process = subprocess.Popen(
      [sys.executable, '-m', 'mnist_cnn.alexnet_main', '--data_dir=%s' % learnable_idx_dir,
       '--model_dir=%s' % model_dir, '--train_epochs=10000', '--batch_size=20',
       '--validation_size=0'],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
  deadline = time.time() + 120
  while time.time() < deadline and not tf.train.latest_checkpoint(model_dir):
    time.sleep(0.2)
  time.sleep(1.0)
  process.send_signal(signal.SIGINT)
  output = process.communicate(timeout=60)[0].decode()
  assert process.returncode != 0
  assert 'Interrupted; the last complete checkpoint' in output
  checkpoint = tf.train.latest_checkpoint(model_dir)
  reader = tf.train.load_checkpoint(checkpoint)
  assert reader.get_tensor('epoch') >= 1
  records = run_record.read_metrics(model_dir)
  assert records[-1]['event'] == 'interrupted'


@pytest.mark.slow
def test_feeding_benchmark_runs_in_smoke_mode():
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'benchmarks', 'alexnet_feeding.py'),
       '--batch_size=8', '--rounds=1', '--steps_per_window=2', '--num_examples=64'],
      capture_output=True, text=True, timeout=600, env=ENV, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split('|')[1].strip() for line in result.stdout.splitlines()
          if line.startswith('| ') and not line.startswith('| variant')]
  assert rows == ['placeholder', 'tf.data', 'keras']


def test_train_graph_can_take_its_inputs_from_tensors():
  images, labels = _tiny_batch(count=8)
  with tf.Graph().as_default():
    graph = alexnet_model.build_train_graph((28, 28, 1), 10, 0.02,
                                            inputs=(tf.constant(images), tf.constant(labels)))
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      from_tensors = sess.run(graph.logits)
      fed = sess.run(graph.logits, {graph.x: images[:3]})
  assert from_tensors.shape == (8, 10) and fed.shape == (3, 10)
  np.testing.assert_allclose(fed, from_tensors[:3], rtol=1e-5, atol=1e-5)
