"""The flags every entry point shares, defined once, with validators.

Entry points call `define_base_flags()`, add their own flags, and set their defaults with a
single `set_defaults(...)`. Flags are read once in `main` and passed down; nothing below an
entry point reads `flags.FLAGS`.

Where the Model Garden's official/utils/flags define the same flag, it has the Model Garden's
short name too (`-dd`, `-md`, `-te`, `-ebe`, `-bs`, `-st`, `-mts`, `-ed`, `-hk`, `-synth`,
`-inter`, `-intra`, `-dt`), so its command lines run unchanged.
"""

import os

from absl import flags

from official.data import datasets
from official.utils import precision

# Hook names accepted by --hooks; official.utils.logs.hooks_helper builds them.
HOOK_NAMES = ('loggingtensorhook', 'examplespersecondhook', 'profilerhook', 'stepcounterhook')


def _positive(name, flag_values):
  flags.register_validator(name, lambda value: value is None or value > 0,
                           message='--%s must be a positive number' % name,
                           flag_values=flag_values)


def _non_negative(name, flag_values):
  flags.register_validator(name, lambda value: value is None or value >= 0,
                           message='--%s must be zero or more' % name, flag_values=flag_values)


def _not_a_file(name, flag_values):
  flags.register_validator(
      name, lambda value: not value or not os.path.isfile(value),
      message='--%s names a file; it must be a directory (or a path to create)' % name,
      flag_values=flag_values)


EMA_HELP = ('Keep an exponential moving average of the weights with this decay, and evaluate '
            'and export it instead of the last weights (0: off). Its memory is 1/(1-decay) '
            'steps; about a tenth of the run\'s steps is a good start '
            '(official/utils/weight_averages.py).')


def _in_unit_interval(name, flag_values):
  flags.register_validator(name, lambda value: value is not None and 0 <= value < 1,
                           message='--%s must be in [0, 1)' % name, flag_values=flag_values)


def define_base_flags(flag_values=flags.FLAGS):
  """Defines the shared flags: data, run length, checkpoints, export, seeds, threads.

  Args:
    flag_values: where to define them (tests pass a fresh absl FlagValues).
  """
  fv = {'flag_values': flag_values}
  flags.DEFINE_string('dataset', 'mnist',
                      'What to train on: mnist (the four IDX files of --data_dir: MNIST or any '
                      'dataset in that format), cifar10 (the CIFAR-10 binary version) or '
                      'tfds:<name> (an image-classification dataset of tensorflow-datasets, '
                      'with --data_dir as its data directory).', **fv)
  flags.DEFINE_string('data_dir', '/tmp/mnist_data', short_name='dd', help=
                      'Directory of the data: the four IDX files (gzip or plain), the CIFAR-10 '
                      '.bin files (or the directory above cifar-10-batches-bin), or the TFDS '
                      'data directory. Missing data is downloaded there when online.', **fv)
  flags.DEFINE_string('model_dir', '/tmp/mnist_model', short_name='md', help=
                      'Directory for checkpoints, summaries, flags.json and metrics.json. A '
                      'rerun with the same directory resumes from its latest checkpoint.', **fv)
  flags.DEFINE_boolean('clean', False, 'Delete --model_dir before training (starts afresh).', **fv)
  flags.DEFINE_integer('train_epochs', 1, 'Epochs to train for in total.', short_name='te', **fv)
  flags.DEFINE_integer('epochs_between_evals', 1, 'Epochs of training between evaluations.',
                       short_name='ebe', **fv)
  flags.DEFINE_integer('batch_size', 32, 'Training batch size (global, across all devices).',
                       short_name='bs', **fv)
  flags.DEFINE_float('stop_threshold', None, short_name='st', help=
                     'Stop training once an evaluation reaches this test accuracy (0..1).', **fv)
  flags.DEFINE_integer('max_train_steps', None, short_name='mts', help=
                       'Stop after this many training steps in total, whatever --train_epochs '
                       'says.', **fv)
  flags.DEFINE_string('export_dir', None, short_name='ed', help=
                      'Export a SavedModel to <export_dir>/<integer version>/ after training.',
                      **fv)
  flags.DEFINE_list('hooks', [], short_name='hk', help=
                    'Training hooks, comma-separated, case-insensitive: %s.' %
                    ', '.join(HOOK_NAMES), **fv)
  flags.DEFINE_boolean('use_synthetic_data', False, short_name='synth', help=
                       'Train and evaluate on random data instead of reading --data_dir.', **fv)
  flags.DEFINE_integer('seed', 0, 'Seed for weight initialisation, shuffling and dropout.', **fv)
  flags.DEFINE_float('ema_decay', 0.0, EMA_HELP, **fv)
  flags.DEFINE_enum('bf16_fallback', 'fp32', list(precision.FALLBACKS),
                    'What --dtype=bf16 does on a CPU without AVX512-BF16 or AMX, where bfloat16 '
                    'is emulated and slow: train in fp32 with a warning, or stop with an error.',
                    **fv)
  flags.DEFINE_integer('inter_op_parallelism_threads', 0, short_name='inter', help=
                       'Threads running independent ops (0: TensorFlow chooses).', **fv)
  flags.DEFINE_integer('intra_op_parallelism_threads', 0, short_name='intra', help=
                       'Threads inside one op (0: TensorFlow chooses).', **fv)

  _not_a_file('data_dir', flag_values)
  flags.register_validator(
      'dataset', lambda v: v in datasets.NAMES or (v.startswith(datasets.TFDS_PREFIX) and
                                                   len(v) > len(datasets.TFDS_PREFIX)),
      message='--dataset must be mnist, cifar10 or tfds:<name>', **fv)
  _not_a_file('model_dir', flag_values)
  _not_a_file('export_dir', flag_values)
  _positive('train_epochs', flag_values)
  _positive('epochs_between_evals', flag_values)
  _positive('batch_size', flag_values)
  _in_unit_interval('ema_decay', flag_values)
  _positive('max_train_steps', flag_values)
  _non_negative('inter_op_parallelism_threads', flag_values)
  _non_negative('intra_op_parallelism_threads', flag_values)
  flags.register_validator('stop_threshold', lambda v: v is None or 0 < v <= 1,
                           message='--stop_threshold must be an accuracy in (0, 1]', **fv)
  flags.register_validator(
      'hooks', lambda names: all(n.strip().lower() in HOOK_NAMES for n in names),
      message='--hooks takes only these names: %s' % ', '.join(HOOK_NAMES), **fv)


def define_dtype_flag(choices, flag_values=flags.FLAGS):
  """--dtype over choices, names of precision.DTYPES (the one vocabulary)."""
  flags.DEFINE_enum('dtype', 'fp32', list(choices), short_name='dt', help=
                    'What the layers compute in: %s. Variables, optimizer updates and the loss '
                    'stay float32. On a CPU bf16 is TensorFlow\'s oneDNN bfloat16 rewrite (see '
                    '--bf16_fallback); on a GPU fp16/bf16 are casts in the model.' %
                    ', '.join(choices), flag_values=flag_values)


def set_defaults(flag_values=flags.FLAGS, **kwargs):
  """Sets several flag defaults at once (before parsing)."""
  for name, value in kwargs.items():
    flag_values.set_default(name, value)


def flags_dict(flags_obj):
  """Returns {flag name: value} for the project's flags (absl's own logging flags left out)."""
  ours = set()
  for module, module_flags in flags_obj.flags_by_module_dict().items():
    if not module.startswith('absl.'):
      ours.update(f.name for f in module_flags)
  values = flags_obj.flag_values_dict()
  return {name: values[name] for name in sorted(ours)}
