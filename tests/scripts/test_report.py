"""The comparison page generator on small synthetic run directories and one real tiny run."""

import functools
import json
import os
import subprocess
import sys

from absl import flags
import pytest
import tensorflow as tf

from mnist_cnn import alexnet_main
from mnist_cnn import input_data
from mnist_cnn import report
from official.utils import lifecycle
from official.utils.logs import run_record

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _write_run(directory, flags_values, records, raw_metrics=None):
  os.makedirs(directory, exist_ok=True)
  if flags_values is not None:
    run_record.write_flags(directory, flags_values)
  if raw_metrics is not None:
    with open(os.path.join(directory, run_record.METRICS_FILE), 'w') as f:
      f.write(raw_metrics)
  for record in records:
    run_record.append_metrics(directory, record)


def _alexnet_epochs(accuracies, seconds=10.0, loss=2.0, params=1234):
  return [{'epoch': i + 1, 'global_step': 50 * (i + 1), 'accuracy': a, 'seconds': seconds,
           'train_loss_mean': loss / (i + 1), 'examples_per_second': 500.0 + i,
           'num_parameters': params} for i, a in enumerate(accuracies)]


@pytest.fixture
def runs_dir(tmp_path):
  """A runs directory with one run of every ending the report must tell apart."""
  root = tmp_path / 'runs'
  alexnet = {'model': 'alexnet', 'train_epochs': 3, 'optimizer': 'adam', 'learning_rate': 0.001,
             'batch_size': 100, 'dropout': 0.5, 'init': 'he'}
  resnet = {'model': 'resnet', 'train_epochs': 2, 'resnet_size': 18, 'resnet_version': 2,
            'stem': 'mnist', 'batch_size': 128, 'weight_decay': 5e-4, 'dtype': 'bf16'}
  _write_run(str(root / 'alexnet' / 'good'), alexnet,
             _alexnet_epochs([0.9, 0.95, 0.975]) + [{'event': 'finished'}])
  _write_run(str(root / 'alexnet' / 'cut'), alexnet,
             _alexnet_epochs([0.5]) + [{'event': 'interrupted', 'global_step': 70}])
  _write_run(str(root / 'alexnet' / 'crashed'), alexnet,
             _alexnet_epochs([0.5, 0.6]) + [{'event': 'failed', 'error': 'OSError: disk full'}])
  _write_run(str(root / 'alexnet' / 'killed'), alexnet, _alexnet_epochs([0.5]))
  _write_run(str(root / 'alexnet' / 'broken'), alexnet, [],
             raw_metrics=json.dumps(_alexnet_epochs([0.5])[0]) + '\n{"epoch": 2, "accu\n')
  _write_run(str(root / 'resnet' / 'r18'), resnet, [
      {'epoch': 1, 'global_step': 469, 'accuracy': 0.98, 'seconds': 300.0,
       'train_loss_mean': 0.2, 'examples_per_second': 200.0, 'num_parameters': 11171018},
      {'epoch': 2, 'global_step': 938, 'accuracy': 0.9951, 'seconds': 320.0,
       'train_loss_mean': 0.02, 'examples_per_second': 190.0, 'num_parameters': 11171018},
      {'event': 'finished'}])
  # A run's own subdirectories are not runs, and an eval/ dir with metrics-like files is inside.
  _write_run(str(root / 'resnet' / 'r18' / 'eval'), None, [{'epoch': 9, 'accuracy': 0.1}])
  return str(root)


def _rows_by_run(table):
  rows = {}
  for line in table.splitlines()[2:]:
    cells = [c.strip() for c in line.strip('|').split('|')]
    rows.setdefault(cells[0], []).append(cells)
  return rows


def test_key_flags_name_the_recipe_and_leave_out_what_is_off(tmp_path):
  _write_run(str(tmp_path / 'fast'), {
      'model': 'resnet', 'resnet_size': '18', 'resnet_version': '2', 'stem': 'mnist',
      'num_filters': 16, 'batch_size': 128, 'weight_decay': 5e-4, 'lr_schedule': 'cosine',
      'batch_norm_batches': 32, 'label_smoothing': 0.0, 'dtype': 'bf16'},
             [{'epoch': 1, 'accuracy': 0.99, 'seconds': 3.0}, {'event': 'finished'}])
  _write_run(str(tmp_path / 'plain'), {
      'model': 'alexnet', 'optimizer': 'adam', 'learning_rate': 0.002, 'lr_schedule': 'cosine',
      'batch_size': 100, 'dropout': 0.75, 'init': 'he', 'lr_decay_epochs': None,
      'label_smoothing': 0.1, 'dtype': 'fp32'},
             [{'epoch': 1, 'accuracy': 0.99, 'seconds': 3.0}, {'event': 'finished'}])
  rows = {name.rsplit('/', 1)[-1]: cells for name, cells in _rows_by_run(report.format_table(
      report.load_runs([str(tmp_path)], use_tf_fallbacks=False))).items()}
  assert rows['fast'][0][2] == ('ResNet-18, v2, stem mnist, 16 filters, batch 128, wd 0.0005, '
                                'cosine, BN recomputed, bf16')
  assert rows['plain'][0][2] == 'adam, lr 0.002, cosine, batch 100, keep 0.75, init he, smoothing 0.1'


def test_table_has_every_run_with_its_figures_and_ending(runs_dir):
  runs = report.load_runs([runs_dir], use_tf_fallbacks=False)
  rows = _rows_by_run(report.format_table(runs))
  assert sorted(rows) == sorted([
      'runs/alexnet/good', 'runs/alexnet/cut', 'runs/alexnet/crashed', 'runs/alexnet/killed',
      'runs/alexnet/broken', 'runs/resnet/r18', 'seed report'])
  good = rows['runs/alexnet/good'][0]
  # run, model, key flags, epochs, accuracy, loss, s/epoch, examples/s, parameters, status
  assert good[1:] == ['AlexNet', 'adam, lr 0.001, batch 100, keep 0.5, init he', '3', '0.9750',
                      '0.6667', '10.0', '501', '1,234', 'ok']
  r18 = rows['runs/resnet/r18'][0]
  assert r18[1:] == ['ResNet', 'ResNet-18, v2, stem mnist, batch 128, wd 0.0005, bf16', '2',
                     '0.9951', '0.02', '310.0', '195', '11,171,018', 'ok']
  assert rows['runs/alexnet/cut'][0][-1] == 'interrupted after 1 of 3 epochs'
  assert rows['runs/alexnet/crashed'][0][-1] == 'failed: OSError: disk full'
  assert rows['runs/alexnet/killed'][0][-1] == 'unfinished: 1 of 3 epochs'
  broken = rows['runs/alexnet/broken'][0]
  assert broken[-1].startswith('unreadable: ')
  assert os.path.join(runs_dir, 'alexnet', 'broken', 'metrics.json') in broken[-1]
  assert 'line 2 is not JSON' in broken[-1]
  seed = rows['seed report']
  assert [(r[1], r[3], r[4]) for r in seed] == [
      ('AlexNet', '5', '0.2188'), ('AlexNet', '10', '0.5820'), ('ResNet', '1', '0.8677'),
      ('ResNet', '3', '0.9347'), ('ResNet', '6', '0.9541')]


def test_early_stop_and_step_cap_count_as_finished(tmp_path):
  base = {'model': 'alexnet', 'train_epochs': 5}
  _write_run(str(tmp_path / 'stopped'), dict(base, stop_threshold=0.9),
             _alexnet_epochs([0.8, 0.93]) + [{'event': 'finished'}])
  _write_run(str(tmp_path / 'capped'), dict(base, max_train_steps=60),
             _alexnet_epochs([0.8, 0.85]) + [{'event': 'finished'}])
  statuses = {r.name.split('/')[-1]: r.status
              for r in report.load_runs([str(tmp_path)], use_tf_fallbacks=False)}
  assert statuses == {'stopped': 'ok (stopped at --stop_threshold=0.9)',
                      'capped': 'ok (cut at --max_train_steps=60)'}


def test_resumed_run_keeps_the_last_record_of_each_epoch(tmp_path):
  records = (_alexnet_epochs([0.5, 0.6]) + [{'event': 'interrupted'}] +
             [dict(_alexnet_epochs([0.5, 0.7, 0.8])[i], seconds=20.0) for i in (1, 2)] +
             [{'event': 'finished'}])
  _write_run(str(tmp_path / 'resumed'), {'model': 'alexnet', 'train_epochs': 3}, records)
  run, = report.load_runs([str(tmp_path)], use_tf_fallbacks=False)
  assert [p['accuracy'] for p in run.points] == [0.5, 0.7, 0.8]
  assert [p['elapsed'] for p in run.points] == [10.0, 30.0, 50.0]
  assert run.status == 'ok'


def test_report_page_and_plots_are_written(runs_dir, tmp_path):
  out_dir = str(tmp_path / 'out')
  runs = report.load_runs([runs_dir], use_tf_fallbacks=False)
  path = report.write_report(runs, out_dir)
  with open(path) as f:
    page = f.read()
  assert report.format_table(runs) in page
  for filename in report.PLOT_FILES.values():
    plot = os.path.join(out_dir, filename)
    with open(plot, 'rb') as f:
      assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(plot) > 10000  # axes, lines and legend, not an empty canvas
    assert '](%s)' % filename in page
  assert not [f for f in os.listdir(out_dir) if f.startswith('.tmp-')]


REPORT_ALEXNET = {'model': 'alexnet', 'optimizer': 'adadelta', 'learning_rate': 0.02,
                  'batch_size': 100, 'dropout': 0.8, 'init': 'report'}
FAST_ALEXNET = {'model': 'alexnet', 'train_epochs': 2, 'optimizer': 'adam',
                'learning_rate': 0.002, 'batch_size': 64, 'dropout': 0.75, 'init': 'he'}


def _grouping_runs(tmp_path):
  root = tmp_path / 'runs'
  _write_run(str(root / 'alexnet' / 'report_5ep'), dict(REPORT_ALEXNET, train_epochs=5),
             _alexnet_epochs([0.3, 0.4, 0.5, 0.6, 0.64]) + [{'event': 'finished'}])
  for seed, accuracies in enumerate(([0.98, 0.9936], [0.97, 0.9910], [0.985, 0.9926])):
    _write_run(str(root / 'alexnet' / ('fast_seed%d' % seed)), dict(FAST_ALEXNET, seed=seed),
               _alexnet_epochs(accuracies, seconds=60.0 + seed) + [{'event': 'finished'}])
  # Another learning rate is another configuration, whatever its directory is called.
  _write_run(str(root / 'alexnet' / 'fast_seed9'), dict(FAST_ALEXNET, learning_rate=0.01),
             _alexnet_epochs([0.9, 0.95]) + [{'event': 'finished'}])
  _write_run(str(root / 'resnet' / 'report_1ep'), {
      'model': 'resnet', 'train_epochs': 1, 'lr_schedule': 'step', 'batch_norm_batches': 0,
      'batch_norm_decay': 0.997, 'transcribed': 'figures of an earlier version'},
             [{'epoch': 1, 'accuracy': 0.9821, 'seconds': 300.0}, {'event': 'finished'}])
  return report.load_runs([str(root)], use_tf_fallbacks=False)


def test_the_report_s_figures_stand_beside_its_settings_redone(tmp_path):
  rows = [line.split(' | ') for line in
          report.format_report_comparison(_grouping_runs(tmp_path)).splitlines()[2:]]
  assert [(row[0].strip('| '), row[3], row[4].strip(' |')) for row in rows] == [
      ('AlexNet, 5 epochs', '0.6400', 'runs/alexnet/report_5ep'),
      ('AlexNet, 10 epochs', 'not run', '-'),
      ('ResNet, 1 epoch', '0.9821', 'runs/resnet/report_1ep (records transcribed)'),
      ('ResNet, 3 epochs', 'not run', '-'), ('ResNet, 6 epochs', 'not run', '-')]


def test_seeds_of_one_configuration_are_one_row_and_one_line(tmp_path):
  runs = _grouping_runs(tmp_path)
  configs = report.configurations(runs)
  assert [(c.label, len(c.runs)) for c in configs] == [
      ('AlexNet, fast (3 seeds)', 3), ('AlexNet, fast (seed 0)', 1),
      ('AlexNet, report settings, 5 epochs (seed 0)', 1),
      ('ResNet, report settings, 1 epoch (seed 0)', 1)]
  fast = configs[0]
  xs, medians, lows, highs = fast.curve(lambda p: p['epoch'], lambda p: p['accuracy'])
  assert xs == [1, 2] and medians == [0.98, 0.9926] and lows == [0.97, 0.9910]
  assert highs == [0.985, 0.9936]
  table = report.format_configurations(runs)
  assert '| AlexNet, fast (3 seeds) | 3 | 2 | 0.9926 (0.9910-0.9936) | 2.0 | 1,234 |' in table


def test_resnet_losses_and_parameters_come_from_older_runs_files(tmp_path):
  """Runs made before metrics.json had train_loss_mean and num_parameters still get both."""
  run_dir = str(tmp_path / 'old')
  _write_run(run_dir, {'model': 'resnet', 'train_epochs': 2}, [
      {'epoch': 1, 'global_step': 10, 'accuracy': 0.9, 'seconds': 5.0},
      {'epoch': 2, 'global_step': 20, 'accuracy': 0.95, 'seconds': 5.0}])
  graph = tf.Graph()
  with graph.as_default():
    weights = tf.compat.v1.get_variable('w', [3, 4])
    tf.compat.v1.get_variable('b', [4])
    tf.compat.v1.get_variable('counter', [], trainable=False)
    writer = tf.compat.v1.summary.FileWriter(run_dir)
    for step, value in [(1, 4.0), (5, 2.0), (10, 3.0), (15, 1.0), (20, 0.5)]:
      summary = tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(
          tag='cross_entropy_1', simple_value=value)])
      writer.add_summary(summary, step)
    writer.close()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver().save(sess, os.path.join(run_dir, 'model.ckpt'), global_step=20)
  del weights
  run, = report.load_runs([run_dir])
  assert [p['train_loss'] for p in run.points] == [3.0, 0.75]
  assert run.num_parameters == 16


def test_a_real_run_records_what_the_report_needs(tmp_path, learnable_idx_dir):
  """The run marks its ending; the AlexNet main records losses and its parameter count."""
  model_dir = str(tmp_path / 'runs' / 'tiny')
  flag_values = flags.FlagValues()
  alexnet_main.define_alexnet_flags(flag_values)
  flag_values(['prog', '--data_dir=' + learnable_idx_dir, '--model_dir=' + model_dir,
               '--train_epochs=2', '--batch_size=50', '--optimizer=adam',
               '--learning_rate=0.001', '--init=he', '--validation_size=0'])
  lifecycle.run_main(functools.partial(alexnet_main.run_alexnet, flag_values),
                     user_errors=input_data.DATA_ERRORS)
  run, = report.load_runs([str(tmp_path / 'runs')], use_tf_fallbacks=False)
  assert run.status == 'ok'
  assert run.model == 'alexnet'
  assert [p['epoch'] for p in run.points] == [1, 2]
  assert all(p['train_loss'] > 0 for p in run.points)
  assert run.num_parameters > 1000000

  # A crash inside a run that lifecycle.recording owns marks it failed, with the error.
  with pytest.raises(RuntimeError), lifecycle.recording(model_dir):
    run_record.append_metrics(model_dir, {'epoch': 3, 'seconds': 1.0})
    raise RuntimeError('out of memory')
  run, = report.load_runs([str(tmp_path / 'runs')], use_tf_fallbacks=False)
  assert run.status == 'failed: RuntimeError: out of memory'


def _report_cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-m', 'mnist_cnn.report'] + list(args), cwd=REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_command_line_writes_the_page_and_names_broken_files(runs_dir, tmp_path):
  out_dir = str(tmp_path / 'page')
  result = _report_cli('--runs_dir=' + runs_dir, '--out_dir=' + out_dir)
  assert result.returncode == 0, result.stderr
  assert '| runs/alexnet/good | AlexNet |' in result.stdout
  assert 'warning: unreadable: %s' % os.path.join(runs_dir, 'alexnet', 'broken',
                                                  'metrics.json') in result.stderr
  assert sorted(os.listdir(out_dir)) == sorted(
      [report.REPORT_FILE] + list(report.PLOT_FILES.values()))


@pytest.mark.parametrize('make_args, message', [
    (lambda tmp: ['--runs_dir=' + str(tmp / 'absent'), '--out_dir=' + str(tmp / 'o')],
     'is not a directory'),
    (lambda tmp: ['--runs_dir=' + str(tmp), '--out_dir=' + str(tmp / 'o')], 'no runs'),
    (lambda tmp: ['--out_dir=' + str(tmp / 'o')], 'runs_dir'),
])
def test_command_line_rejects_bad_arguments(tmp_path, make_args, message):
  result = _report_cli(*make_args(tmp_path))
  assert result.returncode != 0
  assert message in result.stderr
  assert not os.path.exists(str(tmp_path / 'o'))


@pytest.mark.slow
def test_alexnet_script_ends_with_the_comparison_page(tmp_path, learnable_idx_dir):
  """run_alexnet.sh trains its four runs on tiny data and writes the page of all runs."""
  runs = tmp_path / 'runs'
  _write_run(str(runs / 'resnet' / 'earlier'), {'model': 'resnet', 'train_epochs': 1},
             [{'epoch': 1, 'accuracy': 0.99, 'seconds': 3.0}, {'event': 'finished'}])
  env = dict(os.environ, DATA_DIR=learnable_idx_dir, RUNS_DIR=str(runs), PYTHON=sys.executable,
             REPORT_EPOCHS='1 2', TUNED_EPOCHS='1',
             TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(['bash', os.path.join(REPO_ROOT, 'run_alexnet.sh'),
                           '--validation_size=0', '--batch_size=50'],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  rows = _rows_by_run(result.stdout[result.stdout.index('| run |'):].split('\n\n')[0])
  assert {'runs/alexnet/report_1ep', 'runs/alexnet/report_2ep', 'runs/alexnet/tuned',
          'runs/alexnet/fast', 'runs/resnet/earlier'} <= set(rows)
  with open(str(runs / 'alexnet' / 'fast' / 'flags.json')) as f:  # the flag file, then extras
    fast = json.load(f)
  assert (fast['lr_schedule'], fast['train_epochs'], fast['batch_size']) == ('cosine', 2, 50)
  assert rows['runs/alexnet/report_2ep'][0][3] == '2'
  assert all(rows[name][0][-1] == 'ok' for name in rows if name != 'seed report')
  assert os.path.exists(str(runs / 'report' / report.REPORT_FILE))
  assert '第 0 轮的熵损失' in result.stdout and '命中率' in result.stdout  # the report's words


def test_runs_are_grouped_by_dataset_with_the_seed_report_only_beside_mnist(tmp_path):
  root = str(tmp_path / 'runs')
  epochs = _alexnet_epochs([0.5, 0.62]) + [{'event': 'finished'}]
  _write_run(os.path.join(root, 'c10'), {'model': 'resnet', 'train_epochs': 2, 'resnet_size': 20,
                                         'dataset': 'cifar10', 'dataset_name': 'CIFAR-10'},
             epochs)
  _write_run(os.path.join(root, 'fashion'), {'model': 'alexnet', 'train_epochs': 2,
                                             'dataset': 'tfds:fashion_mnist',
                                             'dataset_name': 'tfds:fashion_mnist'}, epochs)
  _write_run(os.path.join(root, 'old'), {'model': 'alexnet', 'train_epochs': 2}, epochs)
  _write_run(os.path.join(root, 'named'), {'model': 'resnet', 'train_epochs': 2,
                                           'dataset': 'MNIST'}, epochs)
  runs = report.load_runs([root], use_tf_fallbacks=False)
  groups = [(dataset, [r.name.split('/')[-1] for r in group])
            for dataset, group in report.by_dataset(runs)]
  # Runs recorded before --dataset existed are MNIST's, and MNIST comes first.
  assert groups == [('MNIST', ['old', 'named']), ('CIFAR-10', ['c10']),
                    ('tfds:fashion_mnist', ['fashion'])]
  out_dir = str(tmp_path / 'out')
  with open(report.write_report(runs, out_dir)) as f:
    page = f.read()
  sections = page.split('\n## ')[1:]
  assert [s.splitlines()[0] for s in sections] == ['MNIST', 'CIFAR-10', 'tfds:fashion_mnist']
  assert 'seed report' in sections[0]
  assert 'seed report' not in sections[1] and 'seed report' not in sections[2]
  assert '| runs/c10 | ResNet | ResNet-20 | 2 | 0.6200 |' in sections[1]
  for prefix in ('', 'cifar-10_', 'tfds-fashion-mnist_'):
    for filename in report.PLOT_FILES.values():
      with open(os.path.join(out_dir, prefix + filename), 'rb') as f:
        assert f.read(8) == PNG_MAGIC
      assert '](%s%s)' % (prefix, filename) in page
