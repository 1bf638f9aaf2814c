"""The tf.compat.v1.ConfigProto of every run: thread pools, GPU threads, the bf16 rewrite."""

import multiprocessing
import os

import tensorflow as tf

from official.utils import precision


def gpu_thread_settings(inter_op, private_threads, mode, per_gpu_thread_count, num_gpus=None):
  """Thread counts for a private GPU thread pool, and TF's env vars set for it.

  With --tf_gpu_thread_mode=gpu_private each GPU gets its own threads for launching kernels,
  so the input pipeline and inter-op threads must share what is left of the CPU. Without a
  mode the counts given are returned unchanged.

  Returns:
    dict with 'inter_op_parallelism_threads' and 'datasets_num_private_threads'.
  """
  if mode:
    cpu_count = multiprocessing.cpu_count()
    per_gpu = per_gpu_thread_count or 2
    if num_gpus is None:
      num_gpus = len(tf.config.list_physical_devices('GPU'))
    os.environ['TF_GPU_THREAD_MODE'] = mode
    os.environ['TF_GPU_THREAD_COUNT'] = str(per_gpu)
    total_gpu_threads = per_gpu * num_gpus
    # Model Garden's rule of thumb: leave two threads per GPU for the main thread pool, and
    # the rest after the GPU threads for tf.data.
    inter_op = inter_op or max(2, num_gpus * 2)
    private_threads = private_threads or max(1, cpu_count - total_gpu_threads - num_gpus)
  return {'inter_op_parallelism_threads': inter_op,
          'datasets_num_private_threads': private_threads}


def make(inter_op, intra_op, onednn_bf16=False, allow_soft_placement=False):
  """A ConfigProto with these thread counts (0: TensorFlow chooses) and, with onednn_bf16,
  the CPU bfloat16 rewrite (official/utils/precision.py)."""
  config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=inter_op,
                                    intra_op_parallelism_threads=intra_op,
                                    allow_soft_placement=allow_soft_placement)
  if onednn_bf16:
    precision.enable_bf16_rewrite(config)
  return config
