"""The one --dtype vocabulary, how each model computes in it, and bfloat16 on CPUs.

Variables, optimizer updates and the loss always stay float32; --dtype says what the layers
compute in. Two mechanisms, chosen here for every model (`plan`):
- on a CPU, bf16 is TensorFlow's oneDNN auto-mixed-precision rewrite of a float32 graph
  (ResNet-18, batch 128, 2 cores: fp32 156 examples/s, bf16 by casts 224, by the rewrite 237,
  so the rewrite for both models); the graph, its checkpoints and its export stay float32;
- on a GPU, fp16 and bf16 are casts inside the model (ResNet only; fp16 with loss scaling).
Without AVX512-BF16 or AMX, TensorFlow emulates bfloat16 arithmetic, slower than float32, so
`--dtype=bf16` on such a CPU either falls back to fp32 with a clear message or stops with one,
as --bf16_fallback says. A GPU run keeps what was asked for.
"""

import collections
import os
import sys

# --dtype name -> (TensorFlow dtype name, default loss scale).
DTYPES = {'fp32': ('float32', 1), 'fp16': ('float16', 128), 'bf16': ('bfloat16', 1)}
# The --dtype choices of a model whose graph casts to the dtype (ResNet), and of one that only
# takes the CPU rewrite (AlexNet).
CAST_DTYPES = tuple(DTYPES)
REWRITE_DTYPES = ('fp32', 'bf16')
BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')
FALLBACKS = ('fp32', 'error')

# How a run computes: graph_dtype is what the model's layers are built in (and what an export
# computes in); onednn_bf16 turns on the CPU rewrite in the session config.
Plan = collections.namedtuple('Plan', ['dtype', 'graph_dtype', 'onednn_bf16'])


class PrecisionError(ValueError):
  """The precision asked for cannot run here (the mains print it as one line and exit 1)."""


def cpu_flags(cpuinfo_path='/proc/cpuinfo'):
  """The CPU feature flags Linux reports (an empty set where it cannot tell)."""
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        if line.startswith('flags'):
          return set(line.split(':', 1)[1].split())
  except OSError:
    pass
  return set()


def cpu_supports_bf16(flags=None):
  """True when the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16)."""
  flags = cpu_flags() if flags is None else flags
  return any(f in flags for f in BF16_CPU_FLAGS)


def onednn_disabled(environ=None):
  """True when TF_ENABLE_ONEDNN_OPTS=0 turned off the oneDNN kernels (2.4-17x slower here)."""
  return (os.environ if environ is None else environ).get('TF_ENABLE_ONEDNN_OPTS') == '0'


def onednn_warning(environ=None):
  """A warning to print when oneDNN is off on a CPU run, else None."""
  if onednn_disabled(environ):
    return ('warning: TF_ENABLE_ONEDNN_OPTS=0 turns off the oneDNN CPU kernels; training is '
            'several times slower (measured 2.4-17x here). Unset it unless you need bit-exact '
            'results.')
  return None


def resolve_dtype(dtype, fallback, has_gpu=False, flags=None):
  """The dtype a run will use, and a message to print when it differs from the one asked for.

  Args:
    dtype: 'fp32', 'fp16' or 'bf16' as the user asked.
    fallback: 'fp32' (train in float32 instead) or 'error' (raise) when bf16 is asked for on a
      CPU without native support.
    has_gpu: a GPU will run the model (its bf16/fp16 support is the GPU's business).
    flags: CPU flags, for tests (default: this machine's).

  Returns:
    (dtype to use, message or None).

  Raises:
    PrecisionError: bf16 on an unsupported CPU with fallback 'error'.
  """
  if dtype != 'bf16' or has_gpu or cpu_supports_bf16(flags):
    return dtype, None
  problem = ('--dtype=bf16: this CPU has neither AVX512-BF16 nor AMX, so bfloat16 would be '
             'emulated and slower than float32')
  if fallback == 'error':
    raise PrecisionError(problem + '; use --dtype=fp32, or --bf16_fallback=fp32 to fall back')
  return 'fp32', 'warning: %s; training in fp32 instead (--bf16_fallback=fp32).' % problem


def settle_dtype(dtype, fallback, has_gpu=False):
  """resolve_dtype for this machine, printing its message and the oneDNN warning to stderr.

  The mains call it before touching --model_dir, so a refusal costs nothing already written.
  """
  dtype_used, message = resolve_dtype(dtype, fallback, has_gpu=has_gpu)
  for line in (message, onednn_warning()):
    if line:
      print(line, file=sys.stderr)
  return dtype_used


def tf_dtype(dtype):
  """The TensorFlow dtype of a --dtype name (a TensorFlow dtype, as the Model Garden's params
  hold, is returned as it is)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.as_dtype(DTYPES[dtype][0] if dtype in DTYPES else dtype)


def dtype_name(dtype):
  """The --dtype name of a TensorFlow dtype or a --dtype name."""
  names = {tf_name: name for name, (tf_name, _) in DTYPES.items()}
  return dtype if dtype in DTYPES else names[tf_dtype(dtype).name]


def default_loss_scale(dtype):
  """The loss scale a --dtype (name or TensorFlow dtype) needs when none is given (128 for
  fp16, else 1)."""
  return DTYPES[dtype_name(dtype)][1]


def plan(dtype_used, has_gpu=False):
  """How a run computes in dtype_used (as settle_dtype returned it); see the module note."""
  if dtype_used == 'bf16' and not has_gpu:
    return Plan(dtype_used, 'fp32', True)
  return Plan(dtype_used, dtype_used, False)


def enable_bf16_rewrite(session_config):
  """Turns on TensorFlow's oneDNN bfloat16 auto-mixed-precision graph rewrite: matmuls and
  convolutions run in bfloat16, variables, optimizer updates and the loss stay float32."""
  from tensorflow.core.protobuf import rewriter_config_pb2  # pylint: disable=g-import-not-at-top
  session_config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = (
      rewriter_config_pb2.RewriterConfig.ON)
  return session_config
