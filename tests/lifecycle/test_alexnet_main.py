"""The AlexNet Session loop through the run lifecycle: train, resume, stop, Ctrl-C, export, flags."""

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
from tests.conftest import parse_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)


def make_flags(argv=()):
  """Parses argv with a fresh set of AlexNet flags (no global state)."""
  return parse_flags(alexnet_main.define_alexnet_flags, argv, 'alexnet_main')


def test_unknown_hook_name_is_rejected():
  with pytest.raises(ValueError, match="unknown hook 'TimelineHook'; --hooks takes: loggingtensorhook"):
    hooks_helper.get_train_hooks(['TimelineHook'], '/tmp', 32)


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
  assert [r.get('event') for r in records if 'epoch' not in r] == ['finished', 'finished']
  records = [r for r in records if 'epoch' in r]
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


@pytest.mark.slow
def test_stop_threshold_and_max_train_steps_end_the_run_early(tmp_path, learnable_idx_dir):
  common = ['--data_dir=%s' % learnable_idx_dir, '--optimizer=adam', '--learning_rate=0.001',
            '--batch_size=50', '--train_epochs=20', '--validation_size=50']
  stopped = alexnet_main.run_alexnet(make_flags(common + [
      '--model_dir=%s' % (tmp_path / 'a'), '--stop_threshold=0.5']))
  assert stopped['accuracy'] >= 0.5 and stopped['epoch'] < 20
  capped = alexnet_main.run_alexnet(make_flags(common + [
      '--model_dir=%s' % (tmp_path / 'b'), '--max_train_steps=10']))
  assert capped['global_step'] == 10


@pytest.mark.slow
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
    (['--label_smoothing=1'], '--label_smoothing must be in [0, 1)'),
    (['--lr_schedule=cosine', '--lr_decay_epochs=2'], '--lr_schedule=cosine takes none'),
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
