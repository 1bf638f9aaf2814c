"""The comparison page of AlexNet, ResNet and GoogLeNet, generated from the records real runs
leave behind.

  mnist-cnn-report --runs_dir=DIR [--runs_dir=DIR ...] --out_dir=DIR

Every directory under a --runs_dir that holds a flags.json or a metrics.json is a run (AlexNet,
ResNet and GoogLeNet alike; see official/utils/logs/run_record.py). The page
(out_dir/report.md) has a section per dataset (MNIST first; runs recorded before --dataset
existed are MNIST's). MNIST's starts with the report's own figures, each beside this
project's run of the report's settings (REPORT_SETTINGS). Each section then has a table of
configurations (runs that differ only in their seed are one configuration: the median and range
of their final accuracy), one table row per run, and three PNG plots: training loss per epoch,
test accuracy per epoch and test accuracy against training time, one colour per configuration,
its seeds drawn as the median with a band. The tables are also printed. Runs that failed, were
interrupted or are unfinished are marked, not dropped; a run whose files cannot be read is
marked with the file and the defect.
"""

import collections
import glob
import json
import os
import re
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
# The report's settings as this project's flags record them (run_alexnet.sh and run_resnet.sh
# pass them): a run whose flags hold all of its model's is the report's run, redone.
REPORT_SETTINGS = {
    'alexnet': {'optimizer': 'adadelta', 'learning_rate': 0.02, 'batch_size': 100,
                'dropout': 0.8, 'init': 'report'},
    'resnet': {'lr_schedule': 'step', 'batch_norm_batches': 0, 'batch_norm_decay': 0.997},
}
REPORT_CONFIGURATION = 'report settings'
# Runs of one configuration with other seeds are named <configuration>_seed<N>.
SEED_SUFFIX = re.compile(r'_seed\d+$')

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

  @property
  def report_settings(self):
    """Whether the run is one of the report's, redone with its settings."""
    settings = REPORT_SETTINGS.get(self.model)
    return bool(settings) and all(self.flags.get(k) == v for k, v in settings.items())

  @property
  def configuration(self):
    """What the run's configuration is called: 'report settings', or its directory's name
    less a _seed<N> suffix."""
    if self.report_settings:
      return REPORT_CONFIGURATION
    return SEED_SUFFIX.sub('', os.path.basename(self.name.rstrip(os.sep)))

  def configuration_key(self):
    """Runs with the same key are one configuration with other seeds: the same model, data,
    key flags and length."""
    return (self.model, self.dataset, self.key_flags(), self.flags.get('train_epochs'),
            self.configuration)

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


def _epochs(count):
  """'1 epoch', '3 epochs'."""
  return '%s epoch%s' % (count, '' if count == 1 else 's')


class Configuration(object):
  """Runs that differ only in their seed: their label and final accuracies."""

  def __init__(self, runs):
    self.runs = runs
    first = runs[0]
    self.model = first.model
    self.name = first.configuration
    if self.name == REPORT_CONFIGURATION:  # the report ran its settings at several lengths
      self.name += ', ' + _epochs(first.flags.get('train_epochs'))
    seeds = '%d seeds' % len(runs) if len(runs) > 1 else 'seed %s' % first.flags.get('seed', 0)
    self.label = '%s, %s (%s)' % (MODEL_TITLES.get(self.model, self.model), self.name, seeds)

  def finals(self):
    """The final test accuracy of each run that evaluated."""
    return [r.last_accuracy_point['accuracy'] for r in self.runs if r.last_accuracy_point]

  def curve(self, x_of, y_of):
    """(xs, median ys, low ys, high ys) per epoch over the runs that reached it."""
    by_epoch = collections.OrderedDict()
    for run in self.runs:
      for point in run.points:
        if y_of(point) is not None:
          by_epoch.setdefault(point['epoch'], []).append((x_of(point), y_of(point)))
    xs, medians, lows, highs = [], [], [], []
    for epoch in sorted(by_epoch):
      values = by_epoch[epoch]
      xs.append(statistics.median(x for x, _ in values))
      ys = [y for _, y in values]
      medians.append(statistics.median(ys))
      lows.append(min(ys))
      highs.append(max(ys))
    return xs, medians, lows, highs


def configurations(runs):
  """The runs grouped into Configurations (same model, data, key flags, length and name),
  in the order of their first run."""
  groups = collections.OrderedDict()
  for run in runs:
    if run.points:
      groups.setdefault(run.configuration_key(), []).append(run)
  return [Configuration(group) for group in groups.values()]


def format_configurations(runs):
  """A markdown table of the configurations: final test accuracy as the median and range over
  their seeds, training minutes as the median."""
  lines = ['| configuration | runs | epochs | test accuracy, median (min-max) | training minutes, '
           'median | parameters |', '|---|---:|---:|---:|---:|---:|']
  for config in configurations(runs):
    finals = config.finals()
    epochs = sorted({r.last_accuracy_point['epoch'] for r in config.runs
                     if r.last_accuracy_point})
    minutes = [r.points[-1]['elapsed'] / 60.0 for r in config.runs if r.points]
    accuracy = '-'
    if finals:
      accuracy = '%.4f' % statistics.median(finals)
      if len(finals) > 1:
        accuracy += ' (%.4f-%.4f)' % (min(finals), max(finals))
    span = '-' if not epochs else '%d' % epochs[0] if len(epochs) == 1 else '%d-%d' % (
        epochs[0], epochs[-1])
    lines.append('| %s | %d | %s | %s | %s | %s |' % (
        config.label, len(config.runs), span, accuracy,
        _cell(statistics.median(minutes) if minutes else None, '%.1f'),
        '-' if config.runs[0].num_parameters is None else '{:,}'.format(
            config.runs[0].num_parameters)))
  return '\n'.join(lines)


def format_report_comparison(runs):
  """A markdown table of the report's figures, each beside this project's run of the report's
  settings for the same model and epochs (on all 10,000 test images)."""
  lines = ['| the report\'s run | its test accuracy | measured on | ours, the report\'s settings '
           '(all test images) | our run |', '|---|---:|---|---:|---|']
  for model, epochs, accuracy, how in SEED_REPORT:
    ours = [r for r in runs if r.model == model and r.report_settings and
            r.last_accuracy_point and r.last_accuracy_point['epoch'] == epochs]
    lines.append('| %s, %s | %.4f | %s | %s | %s |' % (
        MODEL_TITLES[model], _epochs(epochs), accuracy, how,
        ', '.join('%.4f' % r.last_accuracy_point['accuracy'] for r in ours) or 'not run',
        ', '.join(r.name + (' (records transcribed)' if r.flags.get('transcribed') else '')
                  for r in ours) or '-'))
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


PLOT_SPECS = {
    'loss': ('Training loss per epoch', 'epoch', 'mean training cross-entropy (log)',
             lambda p: p['epoch'], lambda p: p['train_loss']),
    'accuracy': ('Test accuracy per epoch', 'epoch', 'test accuracy',
                 lambda p: p['epoch'], lambda p: p['accuracy']),
    'time': ('Test accuracy against training time', 'training wall-clock (minutes)',
             'test accuracy', lambda p: p['elapsed'] / 60.0, lambda p: p['accuracy']),
}
MODEL_LINES = {'alexnet': '--', 'resnet': '-', 'googlenet': '-.'}
SEED_MARKERS = {'alexnet': 'x', 'resnet': '+'}


def _plot_configuration(axes, config, x_of, y_of, color):
  """One configuration's line (the median over its seeds) and, for several seeds, the band
  between their lowest and highest values."""
  xs, medians, lows, highs = config.curve(x_of, y_of)
  if not xs:
    return
  axes.plot(xs, medians, MODEL_LINES.get(config.model, ':'), color=color, marker='o',
            markersize=3, label=config.label)
  if len(config.runs) > 1:
    axes.fill_between(xs, lows, highs, color=color, alpha=0.2, linewidth=0)


def write_plots(runs, out_dir, dataset=SEED_DATASET):
  """Writes the three PNG plots of one dataset's runs; returns {kind: path}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # headless
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  configs = configurations(runs)
  colors = plt.get_cmap('tab10' if len(configs) <= 10 else 'tab20')
  zoom = _zoom_from(dataset, [r for r in runs if r.points])
  paths = {}
  for kind, filename in PLOT_FILES.items():
    title, xlabel, ylabel, x_of, y_of = PLOT_SPECS[kind]
    title = '%s, %s' % (title, dataset)
    zoomed = kind != 'loss'  # accuracy plots get a second panel on the top few percent
    figure, panels = plt.subplots(1, 2 if zoomed else 1, figsize=(12 if zoomed else 7, 5),
                                  squeeze=False)
    for axes in panels[0]:
      for index, config in enumerate(configs):
        _plot_configuration(axes, config, x_of, y_of, colors(index % colors.N))
      if kind == 'accuracy' and dataset == SEED_DATASET:
        for model in SEED_MARKERS:
          figures = [(e, a) for m, e, a, _ in SEED_REPORT if m == model]
          axes.plot([e for e, _ in figures], [a for _, a in figures], linestyle='none',
                    color='black', marker=SEED_MARKERS[model], markersize=9,
                    label='the report, %s' % MODEL_TITLES[model])
      if kind == 'loss' and any(r.final_loss for r in runs):
        axes.set_yscale('log')
      axes.set_xlabel(xlabel)
      axes.set_ylabel(ylabel)
      axes.grid(True, alpha=0.3)
    panels[0][0].set_title(title)
    if zoomed:
      panels[0][1].set_ylim(zoom, 1.0)
      panels[0][1].set_title('from %.0f%%' % (zoom * 100))
    handles, labels = panels[0][0].get_legend_handles_labels()
    if handles:  # beside the plots, never over a curve
      panels[0][-1].legend(handles, labels, fontsize=8, loc='upper left',
                           bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
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
    lines += ['## %s' % dataset, '']
    if dataset == SEED_DATASET:
      lines += ['The report\'s figures, each beside this project\'s run of the report\'s '
                'settings:', '', format_report_comparison(group), '']
    lines += ['Configurations (runs that differ only in their seed are one):', '',
              format_configurations(group), '', 'Every run:', '',
              format_table(group, dataset == SEED_DATASET), '']
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
    if dataset == SEED_DATASET:
      print('%s: the report beside its settings redone\n\n%s\n' % (
          dataset, format_report_comparison(group)))
    print('%s: configurations\n\n%s\n' % (dataset, format_configurations(group)))
    print('%s\n\n%s\n' % (dataset, format_table(group, dataset == SEED_DATASET)))
  print('\nWrote %s and its plots.' % report_path)
  return runs


def main(_):
  try:
    run_report(flags.FLAGS)
  except ValueError as e:
    sys.exit('error: %s' % e)


def run_command():
  """The `mnist-cnn-report` console command (setup.py), as `python -m` runs this module."""
  define_report_flags()
  app.run(main)


if __name__ == '__main__':
  run_command()
