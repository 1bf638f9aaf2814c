"""The comparison page of AlexNet, ResNet and GoogLeNet, generated from the records real runs
leave behind.

  python -m mnist_cnn.report --runs_dir=DIR [--runs_dir=DIR ...] --out_dir=DIR

Every directory under a --runs_dir that holds a flags.json or a metrics.json is a run (AlexNet,
ResNet and GoogLeNet alike; see official/utils/logs/run_record.py). The page
(out_dir/report.md) has a section per dataset (MNIST first; runs recorded before --dataset
existed are MNIST's), each with one table row per run and three PNG plots: training loss per
epoch, test accuracy per epoch and test accuracy against training time. The MNIST table has the
seed report's own figures beside the runs. The tables are also printed. Runs that failed, were
interrupted or are unfinished are marked, not dropped; a run whose files cannot be read is
marked with the file and the defect.
"""

import collections
import glob
import json
import os
import statistics
import sys
import tempfile

from absl import app
from absl import flags

from official.utils.logs import run_record

REPORT_FILE = 'report.md'
PLOT_FILES = collections.OrderedDict([
    ('loss', 'loss_per_epoch.png'),
    ('accuracy', 'accuracy_per_epoch.png'),
    ('time', 'accuracy_vs_time.png'),
])

# The seed report's figures: (model, epochs, test accuracy, how it was measured).
SEED_REPORT = (
    ('alexnet', 5, 0.21875, 'one 256-image test batch'),
    ('alexnet', 10, 0.58203125, 'one 256-image test batch'),
    ('resnet', 1, 0.8677, 'full test set'),
    ('resnet', 3, 0.9347, 'full test set'),
    ('resnet', 6, 0.9541, 'full test set'),
)

# The flags that tell one run's setup from another's, per model: (flag, format). A flag at its
# neutral value (fp32, 0: off) or absent from older runs' records is left out.
KEY_FLAGS = {
    'alexnet': (('optimizer', '%s'), ('learning_rate', 'lr %s'), ('lr_schedule', '%s'),
                ('batch_size', 'batch %s'), ('dropout', 'keep %s'), ('init', 'init %s'),
                ('lr_decay_epochs', 'lr decay every %s ep'),
                ('label_smoothing', 'smoothing %s'), ('dtype', '%s')),
    'resnet': (('resnet_size', 'ResNet-%s'), ('resnet_version', 'v%s'), ('stem', 'stem %s'),
               ('num_filters', '%s filters'), ('batch_size', 'batch %s'),
               ('weight_decay', 'wd %s'), ('lr_schedule', '%s'),
               ('batch_norm_batches', 'BN recomputed'), ('label_smoothing', 'smoothing %s'),
               ('dtype', '%s')),
    'googlenet': (('stem', 'stem %s'), ('width_multiplier', 'width %s'),
                  ('normalization', '%s'), ('aux_loss_weight', 'aux %s'),
                  ('batch_size', 'batch %s'), ('lr_schedule', '%s'), ('dtype', '%s')),
}
NEUTRAL_VALUES = ('fp32', 0)

# Where MNIST's zoomed accuracy panels start: the interesting runs differ in the last percent.
# Other datasets' panels start ZOOM_BELOW_BEST under their best run.
ZOOM_ACCURACY = 0.98
ZOOM_BELOW_BEST = 0.05
SEED_DATASET = 'MNIST'
# --dataset values -> the names runs are grouped under.
DATASET_NAMES = {'mnist': 'MNIST', 'cifar10': 'CIFAR-10'}

MODEL_TITLES = {'alexnet': 'AlexNet', 'resnet': 'ResNet', 'googlenet': 'GoogLeNet'}
# Table rows and plot lines: the networks in the assignment's order, then anything else.
MODEL_ORDER = ('alexnet', 'googlenet', 'resnet')


class Run(object):
  """What one run directory says about its training: per-epoch points and how it ended."""

  def __init__(self, name, path):
    self.name = name
    self.path = path
    self.flags = {}
    self.model = '?'
    self.points = []  # dicts: epoch, accuracy, train_loss, seconds, elapsed, global_step
    self.num_parameters = None
    self.examples_per_second = None
    self.status = 'ok'

  @property
  def dataset(self):
    """The run's data: the name the run recorded, else its --dataset, else MNIST (runs made
    before --dataset existed)."""
    if self.flags.get('dataset_name'):
      return str(self.flags['dataset_name'])
    value = self.flags.get('dataset') or 'mnist'
    return DATASET_NAMES.get(value, str(value))

  @property
  def last_accuracy_point(self):
    evaluated = [p for p in self.points if p.get('accuracy') is not None]
    return evaluated[-1] if evaluated else None

  @property
  def final_loss(self):
    losses = [p['train_loss'] for p in self.points if p.get('train_loss') is not None]
    return losses[-1] if losses else None

  @property
  def seconds_per_epoch(self):
    if not self.points or not self.points[-1]['epoch']:
      return None
    seconds = sum(p['seconds'] or 0.0 for p in self.points)
    return seconds / self.points[-1]['epoch'] if seconds else None

  def key_flags(self):
    parts = []
    for flag, fmt in KEY_FLAGS.get(self.model, ()):
      value = self.flags.get(flag)
      if value is not None and value not in NEUTRAL_VALUES:
        parts.append(fmt % (value,) if '%' in fmt else fmt)
    return ', '.join(parts)


def find_run_dirs(root):
  """Directories under root (root included) holding flags.json or metrics.json, sorted."""
  found = []
  for directory, subdirs, files in os.walk(root):
    if run_record.FLAGS_FILE in files or run_record.METRICS_FILE in files:
      found.append(directory)
      subdirs[:] = []  # a run's own subdirectories (eval/, exports) are not runs
    else:
      subdirs.sort()
  return sorted(found)


def _read_flags(run_dir):
  path = os.path.join(run_dir, run_record.FLAGS_FILE)
  if not os.path.exists(path):
    raise ValueError('%s is missing' % path)
  try:
    with open(path) as f:
      values = json.load(f)
  except ValueError as e:
    raise ValueError('%s is not JSON (%s)' % (path, e)) from None
  if not isinstance(values, dict):
    raise ValueError('%s does not hold a JSON object' % path)
  return values


def _epoch_points(records):
  """Per-epoch points from the metric records, the last record of an epoch winning."""
  by_epoch = collections.OrderedDict()
  for record in records:
    if not isinstance(record.get('epoch'), (int, float)) or 'event' in record:
      continue
    epoch = int(record['epoch'])
    loss = record.get('train_loss_mean')
    by_epoch[epoch] = {
        'epoch': epoch, 'accuracy': record.get('accuracy'), 'train_loss': loss,
        'seconds': record.get('seconds'), 'global_step': record.get('global_step'),
        'examples_per_second': record.get('examples_per_second'),
        'num_parameters': record.get('num_parameters')}
  points = sorted(by_epoch.values(), key=lambda p: p['epoch'])
  elapsed = 0.0
  for point in points:
    elapsed += point['seconds'] or 0.0
    point['elapsed'] = elapsed
  return points


def _ending(run, records):
  """'ok', or what went wrong, from the last event or epoch record and the flags."""
  last = None
  for record in records:
    if record.get('event') in ('finished', 'failed', 'interrupted') or (
        'epoch' in record and 'event' not in record):
      last = record
  target = run.flags.get('train_epochs')
  done = run.points[-1]['epoch'] if run.points else 0
  if last is None:
    return 'no epoch finished'
  event = last.get('event')
  if event == 'failed':
    return 'failed: %s' % last.get('error', 'unknown error')
  if event == 'interrupted':
    return 'interrupted after %d of %s epochs' % (done, target or '?')
  if target and done < target:
    point = run.last_accuracy_point
    threshold = run.flags.get('stop_threshold')
    if event == 'finished' and point and threshold and point['accuracy'] >= threshold:
      return 'ok (stopped at --stop_threshold=%s)' % threshold
    if event == 'finished' and run.flags.get('max_train_steps'):
      return 'ok (cut at --max_train_steps=%s)' % run.flags['max_train_steps']
    return 'unfinished: %d of %d epochs' % (done, target)
  return 'ok'


def _losses_from_summaries(run_dir, points):
  """Mean training cross-entropy per epoch from the TensorBoard events, for ResNet runs made
  before metrics.json carried it. Leaves points without summaries alone."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  steps = []
  for path in sorted(glob.glob(os.path.join(run_dir, 'events.out.tfevents.*'))):
    try:
      for event in tf.compat.v1.train.summary_iterator(path):
        for value in event.summary.value:
          # The summary op is uniquified beside the tensor of the same name.
          if (value.tag in ('cross_entropy', 'cross_entropy_1') and
              value.HasField('simple_value')):
            steps.append((event.step, value.simple_value))
    except tf.errors.DataLossError:
      pass  # a cut-off last event: keep what was read
  previous = 0
  for point in points:
    end = point.get('global_step')
    if point['train_loss'] is None and end is not None:
      values = [v for step, v in steps if previous < step <= end]
      if values:
        point['train_loss'] = sum(values) / len(values)
    if end is not None:
      previous = end


def _parameters_from_checkpoint(run_dir):
  """Trainable-parameter count from the latest checkpoint's graph, for runs made before
  metrics.json carried it; None when there is no readable checkpoint."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  checkpoint = tf.train.latest_checkpoint(run_dir)
  if not checkpoint or not os.path.exists(checkpoint + '.meta'):
    return None
  graph = tf.Graph()
  with graph.as_default():
    try:
      tf.compat.v1.train.import_meta_graph(checkpoint + '.meta', clear_devices=True)
    except (ValueError, tf.errors.OpError, KeyError):
      return None
    return run_record.count_parameters(tf.compat.v1.trainable_variables())


def load_run(run_dir, root, use_tf_fallbacks=True):
  """Reads one run directory into a Run; problems become its status, never an exception."""
  name = os.path.relpath(run_dir, os.path.dirname(os.path.abspath(root).rstrip(os.sep)))
  run = Run(name, run_dir)
  try:
    run.flags = _read_flags(run_dir)
    records = run_record.read_metrics(run_dir)
  except (ValueError, OSError, UnicodeDecodeError) as e:
    run.status = 'unreadable: %s' % e
    return run
  run.model = str(run.flags.get('model', '?'))
  if not any(isinstance(r, dict) for r in records) and records:
    run.status = 'unreadable: %s holds no JSON objects' % os.path.join(
        run_dir, run_record.METRICS_FILE)
    return run
  records = [r for r in records if isinstance(r, dict)]
  run.points = _epoch_points(records)
  if use_tf_fallbacks and any(p['train_loss'] is None for p in run.points):
    _losses_from_summaries(run_dir, run.points)
  counts = [p['num_parameters'] for p in run.points if p.get('num_parameters')]
  run.num_parameters = counts[-1] if counts else (
      _parameters_from_checkpoint(run_dir) if use_tf_fallbacks else None)
  rates = [p['examples_per_second'] for p in run.points if p.get('examples_per_second')]
  run.examples_per_second = statistics.median(rates) if rates else None
  run.status = _ending(run, records)
  return run


def load_runs(roots, use_tf_fallbacks=True):
  """Every run under the given directories, by dataset (MNIST first), network (MODEL_ORDER),
  then name."""
  runs = []
  for root in roots:
    runs.extend(load_run(d, root, use_tf_fallbacks) for d in find_run_dirs(root))
  def order(run):
    return MODEL_ORDER.index(run.model) if run.model in MODEL_ORDER else len(MODEL_ORDER)
  return sorted(runs, key=lambda r: (r.dataset != SEED_DATASET, r.dataset, order(r), r.model,
                                     r.name))


def by_dataset(runs):
  """[(dataset, its runs)] in the order load_runs sorted them."""
  groups = collections.OrderedDict()
  for run in runs:
    groups.setdefault(run.dataset, []).append(run)
  return list(groups.items())


def _cell(value, fmt):
  return '-' if value is None else fmt % value


def format_table(runs, seed_report=True):
  """A markdown table: one row per run, then (with seed_report) the seed report's figures for
  contrast."""
  lines = ['| run | model | key flags | epochs | test accuracy | final train loss | s/epoch | '
           'examples/s | parameters | status |',
           '|---|---|---|---:|---:|---:|---:|---:|---:|---|']
  for run in runs:
    point = run.last_accuracy_point
    lines.append('| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |' % (
        run.name, MODEL_TITLES.get(run.model, run.model), run.key_flags() or '-',
        _cell(point and point['epoch'], '%d'), _cell(point and point['accuracy'], '%.4f'),
        _cell(run.final_loss, '%.4g'), _cell(run.seconds_per_epoch, '%.1f'),
        _cell(run.examples_per_second, '%.0f'),
        '-' if run.num_parameters is None else '{:,}'.format(run.num_parameters),
        run.status.replace('|', '/')))
  for model, epochs, accuracy, how in SEED_REPORT if seed_report else ():
    lines.append('| seed report | %s | report settings | %d | %.4f | - | - | - | - | %s |' % (
        MODEL_TITLES[model], epochs, accuracy, how))
  return '\n'.join(lines)


def _save_figure(figure, path):
  """Saves a figure through a temporary file, so a reader never sees half a PNG."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-', suffix='.png')
  os.close(fd)
  try:
    figure.savefig(tmp, format='png', dpi=110, bbox_inches='tight')
    run_record.publish(tmp, path)
  except BaseException:
    os.remove(tmp)
    raise


def plot_prefix(dataset):
  """File-name prefix of a dataset's plots: none for MNIST (the names README links to)."""
  if dataset == SEED_DATASET:
    return ''
  return ''.join(c if c.isalnum() else '-' for c in dataset.lower()) + '_'


def _zoom_from(dataset, runs):
  if dataset == SEED_DATASET:
    return ZOOM_ACCURACY
  best = max([p['accuracy'] for r in runs for p in r.points if p.get('accuracy') is not None],
             default=1.0)
  return max(0.0, int((best - ZOOM_BELOW_BEST) * 100) / 100.0)


def write_plots(runs, out_dir, dataset=SEED_DATASET):
  """Writes the three PNG plots of one dataset's runs; returns {kind: path}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # headless
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  plotted = [r for r in runs if r.points]
  styles = {'alexnet': '--', 'resnet': '-', 'googlenet': '-.'}
  seed_markers = {'alexnet': 'x', 'resnet': '+'}
  zoom = _zoom_from(dataset, plotted)
  paths = {}
  specs = {
      'loss': ('Training loss per epoch', 'epoch', 'mean training cross-entropy (log)',
               lambda p: p['epoch'], lambda p: p['train_loss']),
      'accuracy': ('Test accuracy per epoch', 'epoch', 'test accuracy',
                   lambda p: p['epoch'], lambda p: p['accuracy']),
      'time': ('Test accuracy against training time', 'training wall-clock (minutes)',
               'test accuracy', lambda p: p['elapsed'] / 60.0, lambda p: p['accuracy']),
  }
  for kind, filename in PLOT_FILES.items():
    title, xlabel, ylabel, x_of, y_of = specs[kind]
    title = '%s, %s' % (title, dataset)
    zoomed = kind != 'loss'  # accuracy plots get a second panel on the top few percent
    figure, panels = plt.subplots(1, 2 if zoomed else 1, figsize=(13 if zoomed else 8, 5),
                                  squeeze=False)
    for axes in panels[0]:
      for run in plotted:
        points = [p for p in run.points if y_of(p) is not None]
        if points:
          label = '%s (%s)' % (run.name, run.status) if run.status != 'ok' else run.name
          axes.plot([x_of(p) for p in points], [y_of(p) for p in points],
                    styles.get(run.model, ':'), marker='o', markersize=3, label=label)
      if kind == 'accuracy' and dataset == SEED_DATASET:
        for model in ('alexnet', 'resnet'):
          figures = [(e, a) for m, e, a, _ in SEED_REPORT if m == model]
          axes.plot([e for e, _ in figures], [a for _, a in figures], linestyle='none',
                    color='black', marker=seed_markers[model], markersize=9,
                    label='seed report, %s' % MODEL_TITLES[model])
      if kind == 'loss' and any(r.final_loss for r in plotted):
        axes.set_yscale('log')
      axes.set_xlabel(xlabel)
      axes.set_ylabel(ylabel)
      axes.grid(True, alpha=0.3)
    panels[0][0].set_title(title)
    if zoomed:
      panels[0][1].set_ylim(zoom, 1.0)
      panels[0][1].set_title('%s, from %.0f%%' % (title, zoom * 100))
    if panels[0][-1].get_legend_handles_labels()[0]:
      panels[0][-1].legend(fontsize=8, loc='lower right')
    paths[kind] = os.path.join(out_dir, plot_prefix(dataset) + filename)
    _save_figure(figure, paths[kind])
    plt.close(figure)
  return paths


def write_report(runs, out_dir):
  """Writes out_dir/report.md and each dataset's plots; returns the report's path."""
  os.makedirs(out_dir, exist_ok=True)
  lines = ['# AlexNet, ResNet and GoogLeNet', '',
           'Generated by `python -m mnist_cnn.report` from %d run(s), one section per dataset. '
           'Accuracy is the last evaluation on the test set; the loss is the mean training '
           'cross-entropy of the last epoch; s/epoch and examples/s are training time only.' %
           len(runs), '']
  captions = {'loss': 'Training loss per epoch', 'accuracy': 'Test accuracy per epoch',
              'time': 'Test accuracy against training time'}
  for dataset, group in by_dataset(runs):
    paths = write_plots(group, out_dir, dataset)
    lines += ['## %s' % dataset, '', format_table(group, dataset == SEED_DATASET), '']
    for kind, path in paths.items():
      lines += ['![%s, %s](%s)' % (captions[kind], dataset, os.path.basename(path)), '']
  report_path = os.path.join(out_dir, REPORT_FILE)
  run_record.write_text_atomic(report_path, '\n'.join(lines))
  return report_path


def define_report_flags(flag_values=flags.FLAGS):
  flags.DEFINE_multi_string('runs_dir', None, 'A directory of runs (searched recursively); '
                            'repeat the flag for several.', flag_values=flag_values)
  flags.DEFINE_string('out_dir', None, 'Where report.md and the PNG plots go.',
                      flag_values=flag_values)
  flags.mark_flags_as_required(['runs_dir', 'out_dir'], flag_values=flag_values)


def run_report(flags_obj):
  """Loads the runs, writes the page, prints the table; returns the runs."""
  for root in flags_obj.runs_dir:
    if not os.path.isdir(root):
      raise ValueError('--runs_dir %s is not a directory' % root)
  if os.path.exists(flags_obj.out_dir) and not os.path.isdir(flags_obj.out_dir):
    raise ValueError('--out_dir %s exists and is not a directory' % flags_obj.out_dir)
  runs = load_runs(flags_obj.runs_dir)
  if not runs:
    raise ValueError('no runs (directories with flags.json or metrics.json) under %s' %
                     ', '.join(flags_obj.runs_dir))
  for run in runs:
    if run.status.startswith('unreadable'):
      print('warning: %s' % run.status, file=sys.stderr)
  report_path = write_report(runs, flags_obj.out_dir)
  for dataset, group in by_dataset(runs):
    print('%s\n\n%s\n' % (dataset, format_table(group, dataset == SEED_DATASET)))
  print('\nWrote %s and its plots.' % report_path)
  return runs


def main(_):
  try:
    run_report(flags.FLAGS)
  except ValueError as e:
    sys.exit('error: %s' % e)


if __name__ == '__main__':
  define_report_flags()
  app.run(main)
