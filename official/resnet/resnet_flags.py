"""The flags of the Estimator run loop (official/resnet/resnet_run_loop.py) and its cluster
path (official/utils/cluster_training.py), on top of the shared ones.

`define_resnet_flags(resnet_size_choices=None)` is the Model Garden's (re-exported by the run
loop under that name); flags it shares with the Model Garden keep their short names (`-rs`,
`-rv`, `-ft`, `-pmcp`, `-df`, `-ls`, `-ng`, `-ds`, `-gt_mode`, `-pgtc`).
"""

from absl import flags

from official.resnet import resnet_model
from official.utils import distribution_utils
from official.utils import learning_rate
from official.utils import precision
from official.utils.flags import core as flags_core


def define_resnet_flags(resnet_size_choices=None, flag_values=flags.FLAGS):
  """The Estimator run loop's flags plus ResNet's size and version.

  Args:
    resnet_size_choices: the sizes --resnet_size accepts, as strings; None (the Model
      Garden's default) takes any positive whole number, which the model class then checks
      (Cifar10Model: 6n+2; the ImageNet family: resnet_model.RESNET_SIZES).
    flag_values: where to define them (tests pass a fresh absl FlagValues).
  """
  define_estimator_flags(flag_values)
  fv = {'flag_values': flag_values}
  help_text = 'The size of the ResNet model to use.'
  if resnet_size_choices is None:
    flags.DEFINE_string('resnet_size', '50', help_text, short_name='rs', **fv)
    flags.register_validator('resnet_size', lambda v: v.isdigit() and int(v) > 0,
                             message='--resnet_size must be a positive whole number', **fv)
  else:
    flags.DEFINE_enum('resnet_size', '50', [str(size) for size in resnet_size_choices],
                      help_text, short_name='rs', **fv)
  flags.DEFINE_enum('resnet_version', str(resnet_model.DEFAULT_VERSION), ['1', '2'],
                    'ResNet version: 1 (v1.5, stride on the 3x3 conv) or 2 (pre-activation).',
                    short_name='rv', **fv)


def define_estimator_flags(flag_values=flags.FLAGS):
  """Shared flags plus those of the Estimator run loop, its recipe, its cluster path and the
  training augmentation: what every Estimator main (ResNet, GoogLeNet, CIFAR-10) takes."""
  flags_core.define_base_flags(flag_values)
  fv = {'flag_values': flag_values}
  flags.DEFINE_enum('data_format', None, ['channels_first', 'channels_last'],
                    'Tensor layout; default channels_first with a GPU, channels_last on CPU.',
                    short_name='df', **fv)
  flags_core.define_dtype_flag(precision.CAST_DTYPES, flag_values)
  flags.DEFINE_integer('loss_scale', None,
                       'Loss scale for fp16 (default 128); 1 for fp32 and bf16.',
                       short_name='ls', **fv)
  flags.DEFINE_boolean('fine_tune', False, 'Train only the final dense layer.',
                       short_name='ft', **fv)
  flags.DEFINE_string('pretrained_model_checkpoint_path', None,
                      'Warm-start every variable but the dense layer from this checkpoint.',
                      short_name='pmcp', **fv)
  flags.DEFINE_boolean('eval_only', False, 'Only evaluate the latest checkpoint.', **fv)
  flags.DEFINE_boolean('image_bytes_as_serving_input', False,
                       'Export a model that takes encoded PNG/JPEG bytes instead of float '
                       'images.', **fv)
  flags.DEFINE_integer('datasets_num_private_threads', None,
                       'Private thread pool size for the tf.data pipeline.', **fv)
  flags.DEFINE_enum('tf_gpu_thread_mode', None, ['global', 'gpu_private', 'gpu_shared'],
                    'GPU kernel-launch thread mode (TF_GPU_THREAD_MODE).', short_name='gt_mode',
                    **fv)
  flags.DEFINE_integer('per_gpu_thread_count', 0,
                       'Threads per GPU with --tf_gpu_thread_mode (0: 2).', short_name='pgtc',
                       **fv)
  flags.register_validator('loss_scale', lambda v: v is None or v > 0,
                           message='--loss_scale must be positive', **fv)
  flags.register_validator('datasets_num_private_threads', lambda v: v is None or v > 0,
                           message='--datasets_num_private_threads must be positive', **fv)
  flags.register_validator('per_gpu_thread_count', lambda v: v >= 0,
                           message='--per_gpu_thread_count must be zero or more', **fv)
  define_recipe_flags(flag_values)
  define_cluster_flags(flag_values)
  define_augmentation_flags(flag_values)


def define_augmentation_flags(flag_values=flags.FLAGS):
  """How training images are augmented (official/data/datasets.py has each kind's default)."""
  fv = {'flag_values': flag_values}
  flags.DEFINE_integer('shift_pixels', None,
                       'Shift training images randomly by up to this many pixels (zero '
                       'padding, random crop; 0: off). Default: the dataset\'s standard '
                       'augmentation (2 for IDX digits, 4 for CIFAR-10; '
                       'official/data/datasets.py).', **fv)
  flags.DEFINE_boolean('random_flip', None,
                       'Mirror training images left-right at random. Default: the dataset\'s '
                       'standard augmentation (on for photographs such as CIFAR-10, off for '
                       'digits and letters).', **fv)
  flags.register_validator('shift_pixels', lambda v: v is None or v >= 0,
                           message='--shift_pixels must be zero or more', **fv)


def define_recipe_flags(flag_values=flags.FLAGS):
  """The training recipe: optimiser, learning-rate schedule, regularisation, batch norm."""
  fv = {'flag_values': flag_values}
  flags.DEFINE_float('weight_decay', 1e-4, 'L2 weight decay (batch-norm variables excluded).',
                     **fv)
  flags.DEFINE_float('momentum', 0.9, 'Momentum of the SGD optimizer.', **fv)
  flags.DEFINE_float('base_learning_rate', 0.1,
                     'Learning rate for a batch of the model\'s batch_denom (256 for the '
                     'ImageNet-family ResNet and GoogLeNet, 128 for the CIFAR-10 ResNets), '
                     'scaled linearly with --batch_size.', **fv)
  flags.DEFINE_float('warmup_epochs', 0.0, 'Linear learning-rate warm-up, in epochs.', **fv)
  flags.DEFINE_enum('lr_schedule', 'step', list(learning_rate.SCHEDULES),
                    'After the warm-up: step (divided by 10 at fixed fractions of the run) or '
                    'cosine (a half cosine down to zero at the last step).', **fv)
  flags.DEFINE_float('batch_norm_decay', None,
                     'Decay of the batch-norm moving averages (default: from the run length, '
                     'a memory of ~1% of its steps; 0.997 for ImageNet-length runs).', **fv)
  flags.DEFINE_float('label_smoothing', 0.0, 'Label smoothing of the cross-entropy (0..1).',
                     **fv)
  flags.DEFINE_integer('batch_norm_batches', 32,
                       'Before every evaluation and export, recompute the batch-norm '
                       'statistics from the trained weights over this many training batches '
                       '(0: use the moving averages as they are).', **fv)
  flags.register_validator('weight_decay', lambda v: v >= 0,
                           message='--weight_decay must be zero or more', **fv)
  flags.register_validator('base_learning_rate', lambda v: v > 0,
                           message='--base_learning_rate must be positive', **fv)
  flags.register_validator('warmup_epochs', lambda v: v >= 0,
                           message='--warmup_epochs must be zero or more', **fv)
  flags.register_validator('label_smoothing', lambda v: 0 <= v < 1,
                           message='--label_smoothing must be in [0, 1)', **fv)
  flags.register_validator('batch_norm_batches', lambda v: v >= 0,
                           message='--batch_norm_batches must be zero or more', **fv)
  flags.register_validator('batch_norm_decay', lambda v: v is None or 0 <= v < 1,
                           message='--batch_norm_decay must be in [0, 1)', **fv)


def define_cluster_flags(flag_values=flags.FLAGS):
  """The flags of a distributed run (official/utils/cluster_training.py)."""
  fv = {'flag_values': flag_values}
  flags.DEFINE_enum('distribution_strategy', 'off', list(distribution_utils.STRATEGIES),
                    short_name='ds', help=
                    'tf.distribute strategy. mirrored: one replica per device of --num_gpus '
                    '(per logical CPU device with --num_gpus=0), the global --batch_size split '
                    'evenly over them. multi_worker_mirrored: synchronous, one process per '
                    'worker, the global --batch_size split over the workers. parameter_server: '
                    'asynchronous, variables on the ps tasks, each worker step a --batch_size '
                    'batch. The last two need a cluster (TF_CONFIG or --worker_hosts).', **fv)
  flags.DEFINE_integer('num_gpus', 0, 'GPUs to use: -1 all, 0 none (CPU).', short_name='ng',
                       **fv)
  flags.DEFINE_list('worker_hosts', [],
                    'host:port of every training process; the first is the chief. Builds '
                    'TF_CONFIG (give one or the other).', **fv)
  flags.DEFINE_list('ps_hosts', [], 'host:port of each parameter server.', **fv)
  flags.DEFINE_enum('task_type', 'worker', list(distribution_utils.FLAG_TASK_TYPES),
                    'This process\'s role with --worker_hosts: worker (index 0 is the chief), '
                    'ps, or evaluator (evaluates each new checkpoint).', **fv)
  flags.DEFINE_integer('task_index', 0, 'This process\'s index among --task_type hosts.', **fv)
  flags.DEFINE_integer('save_checkpoints_secs', 600,
                       'Seconds between checkpoints during training (one is always written at '
                       'the end of each training cycle).', **fv)
  flags.DEFINE_integer('cluster_timeout_s', 120,
                       'A cluster member exits with an error when a member it needs has not '
                       'answered for this many seconds.', **fv)
  flags.register_validator('num_gpus', lambda v: v >= -1,
                           message='--num_gpus must be -1 (all), 0 or more', **fv)
  flags.register_validator('task_index', lambda v: v >= 0,
                           message='--task_index must be zero or more', **fv)
  flags.register_validator('save_checkpoints_secs', lambda v: v > 0,
                           message='--save_checkpoints_secs must be positive', **fv)
  flags.register_validator('cluster_timeout_s', lambda v: v > 0,
                           message='--cluster_timeout_s must be positive', **fv)
