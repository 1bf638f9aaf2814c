"""The CPU benchmark suite: training speed of every variant, achieved GFLOP/s, inference latency.

  python benchmarks/suite.py [--data_dir=DIR] [--rounds=5] [--smoke]
  (or python -m benchmarks.suite from the repository root)

1. Training examples/second, interleaved windows per model (median, min-max, ratio to Keras):
   AlexNet placeholder loop / tf.data / tf.keras fit (benchmarks/alexnet_feeding.py), and
   ResNet-18 MNIST config through the Estimator in fp32 and bf16 / bare Session / tf.keras fit
   (benchmarks/resnet_pipeline.py), and GoogLeNet (mnist stem) at full width in fp32 and bf16
   and at the fast configuration's quarter width in bf16, training steps in a Session
   (benchmarks/googlenet_variants.py), each called through its measure() function.
   Then the CIFAR-10 ResNets (ResNet-20 and ResNet-56 as cifar10_main builds them, on
   synthetic 32x32x3 batches of 128, fp32 and bf16; benchmarks/cifar_resnet.py) with the
   minutes a 50,000-image epoch would take at that speed.
2. Achieved GFLOP/s = 3 x forward FLOPs per example (TensorFlow's profiler on the inference
   graph) x examples/s, against the fp32 matmul peak measured here (chained 2048x2048
   matmuls).
3. SavedModel inference (exports of the three models): batch-1 p50/p99 and batch-256 throughput
   with the TF1 Session loader the REST server uses, and batch-1 through tf.saved_model.load.
Prints markdown tables, starting with the machine they ran on. --smoke runs everything with
tiny sizes and step counts (for CI: it checks the suite works, not the figures).
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

# The repository root, so that `python benchmarks/suite.py` finds the benchmarks package.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import alexnet_feeding
from benchmarks import cifar_resnet
from benchmarks import googlenet_variants
from benchmarks import resnet_pipeline
from benchmarks import serving
from mnist_cnn import alexnet_model
from mnist_cnn import resnet_main
from mnist_cnn.serving import models
from official.utils import precision
# pylint: enable=g-import-not-at-top,wrong-import-position


def fast_googlenet_width(path=os.path.join(REPO, 'mnist_cnn', 'configs',
                                           'googlenet_fast.flags')):
  """The --width_multiplier of the fast configuration's flag file (1.0 when it sets none)."""
  with open(path) as f:
    widths = [float(line.split('=', 1)[1]) for line in f
              if line.startswith('--width_multiplier=')]
  return widths[-1] if widths else 1.0


def machine_description():
  model = platform.processor() or 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    model = names[0] if names else model
  except OSError:
    pass
  return '%s, %d logical CPUs, native bf16: %s, TensorFlow %s, Python %s' % (
      model, os.cpu_count(), 'yes' if precision.cpu_supports_bf16() else 'no', tf.__version__,
      platform.python_version())


def matmul_peak(dtype, size, chain, seconds):
  """GFLOP/s of chained size x size matmuls in one Session call (the machine's compute peak)."""
  graph = tf.Graph()
  with graph.as_default():
    a = tf.Variable(tf.random.uniform([size, size], dtype=tf.float32) / size)
    b = tf.Variable(tf.random.uniform([size, size], dtype=tf.float32))
    x, y = tf.cast(a, dtype), tf.cast(b, dtype)
    for _ in range(chain):
      x = tf.matmul(x, y)
    out = tf.reduce_sum(tf.cast(x, tf.float32))
    init = tf.compat.v1.global_variables_initializer()
  with tf.compat.v1.Session(graph=graph) as sess:
    sess.run(init)
    sess.run(out)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
      sess.run(out)
      runs += 1
    elapsed = time.perf_counter() - started
  return 2.0 * size ** 3 * chain * runs / elapsed / 1e9


def forward_flops(build):
  """Float ops of one example's forward pass, by TensorFlow's profiler."""
  graph = tf.Graph()
  with graph.as_default():
    build()
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options['output'] = 'none'
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def alexnet_forward():
  x = tf.compat.v1.placeholder(tf.float32, [1, 784])
  weights, biases = alexnet_model.make_variables((28, 28, 1), 10)
  alexnet_model.alexnet(x, weights, biases, 1.0, (28, 28, 1))


def resnet_forward(num_filters):
  def build():
    images = tf.compat.v1.placeholder(tf.float32, [1, 28, 28, 1])
    resnet_main.MnistModel(18, 'channels_last', num_filters=num_filters)(images,
                                                                         training=False)
  return build


def _figures(rates):
  """{variant: [rates]} -> {variant: (median, min, max)}."""
  return {name: (float(np.median(values)), min(values), max(values))
          for name, values in rates.items()}


def export_models(work, smoke):
  """Exports an AlexNet, a ResNet-18 and a GoogLeNet (one training step on synthetic data;
  speed does not depend on the weights); returns {name: version dir}."""
  exports = {}
  filters = ['--num_filters=4'] if smoke else []
  commands = {
      'AlexNet': ['-m', 'mnist_cnn.alexnet_main', '--use_synthetic_data',
                  '--max_train_steps=1', '--train_epochs=1'],
      'ResNet-18': ['-m', 'mnist_cnn.resnet_main', '--resnet_size=18', '--use_synthetic_data',
                    '--max_train_steps=1', '--batch_size=8'] + filters,
      'GoogLeNet': ['-m', 'mnist_cnn.googlenet_main', '--use_synthetic_data',
                    '--max_train_steps=1', '--batch_size=8', '--batch_norm_batches=2'] + (
                        ['--width_multiplier=0.125'] if smoke else []),
  }
  for name, command in commands.items():
    export_dir = os.path.join(work, name + '_export')
    result = subprocess.run(
        [sys.executable] + command + ['--model_dir=' + os.path.join(work, name),
                                      '--export_dir=' + export_dir],
        capture_output=True, text=True, cwd=REPO, timeout=1800)
    if result.returncode:
      raise RuntimeError('exporting %s failed:\n%s' % (name, result.stderr[-3000:]))
    exports[name] = os.path.join(export_dir, sorted(os.listdir(export_dir))[-1])
  return exports


def inference_figures(version_dir, calls, seconds):
  """(TF1 loader p50, p99 ms at batch 1; its images/s at batch 256; the optimised path's
  p50, p99 ms at batch 1 (frozen graph, fp32); tf.saved_model.load p50, p99 ms at batch 1)."""
  image = np.random.RandomState(0).rand(1, 28, 28, 1).astype(np.float32)
  batch = np.repeat(image, 256, axis=0)

  def percentiles(call):
    times = serving.call_latencies(call, calls)
    return 1000 * np.percentile(times, 50), 1000 * np.percentile(times, 99)

  figures = []
  for optimize in (False, True):
    loaded = models.LoadedVersion(0, version_dir, optimize=optimize, serving_precision='fp32')
    signature = loaded.signatures['serving_default']
    figures.extend(percentiles(lambda: loaded.run(signature, {'images': image})))
    if not optimize:
      figures.append(serving.in_process_throughput(loaded, signature, batch, seconds))
    loaded.close_when_drained()
  function = tf.saved_model.load(version_dir).signatures['serving_default']
  constant = tf.constant(image)
  figures.extend(percentiles(lambda: function(images=constant)))
  return tuple(figures)


def print_cifar_table(smoke, rounds, peak, peak_bf16):
  """The CIFAR-10 ResNets' training speed on synthetic 32x32x3 data (benchmarks/cifar_resnet.py)
  and the epoch time it projects."""
  sizes = (8,) if smoke else (20, 56)
  variants = ['%d:%s' % (size, dtype) for size in sizes for dtype in ('fp32', 'bf16')]
  rates = cifar_resnet.measure(variants, batch_size=8 if smoke else 128, rounds=rounds,
                               steps_per_window=1 if smoke else 5)
  gflops_per_image = {size: cifar_resnet.forward_gflops(size) for size in sizes}
  print('CIFAR-10 ResNets, training on synthetic 32x32x3 batches (cifar10_main\'s model and '
        'batch size; % of the peak in the variant\'s dtype):\n')
  print('| model | dtype | examples/s median (min-max) | GFLOP/s | % of peak | '
        'projected min/epoch (50,000 images) |')
  print('|---|---|---:|---:|---:|---:|')
  for variant in variants:
    size, dtype = cifar_resnet.parse_variant(variant)
    median, low, high = _figures({variant: rates[variant]})[variant]
    gflops = 3 * gflops_per_image[size] * median
    print('| ResNet-%d | %s | %.1f (%.1f-%.1f) | %.1f | %.0f%% | %.1f |' % (
        size, dtype, median, low, high, gflops,
        100 * gflops / (peak_bf16 if dtype == 'bf16' else peak),
        cifar_resnet.EPOCH_IMAGES / median / 60))
  print('\nForward GFLOPs per 32x32x3 image: %s.\n' % ', '.join(
      'ResNet-%d %.4f' % item for item in gflops_per_image.items()))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir', default=None, help='IDX files for ResNet\'s input pipeline')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--smoke', action='store_true', help='tiny sizes: check, do not measure')
  args = parser.parse_args(argv)
  # The benchmarks run in this process now: their Estimators' deprecation notes are noise.
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  smoke = args.smoke
  rounds = 1 if smoke else args.rounds
  num_filters = 4 if smoke else 64

  print('Machine: %s\n' % machine_description())
  peak = matmul_peak(tf.float32, 256 if smoke else 2048, 2 if smoke else 8,
                     0.2 if smoke else 5.0)
  peak_bf16 = matmul_peak(tf.bfloat16, 256 if smoke else 2048, 2 if smoke else 8,
                          0.2 if smoke else 5.0)
  flops = {'AlexNet': forward_flops(alexnet_forward),
           'ResNet-18': forward_flops(resnet_forward(num_filters))}
  # GoogLeNet row -> (width multiplier, dtype): the defaults, and the fast configuration's.
  googlenet_rows = {'fp32': (1.0, 'fp32'), 'bf16': (1.0, 'bf16'),
                    'fast_bf16': (fast_googlenet_width(), 'bf16')}
  if smoke:
    googlenet_rows = {'fp32': (0.125, 'fp32'), 'fast_bf16': (0.125, 'bf16')}
  googlenet_variant = {name: 'mnist:%g:%s' % row for name, row in googlenet_rows.items()}
  for name, (width, _) in googlenet_rows.items():
    flops['GoogLeNet ' + name] = 1e9 * googlenet_variants.forward_gflops('mnist', width,
                                                                         'batch_norm')

  if smoke:
    alexnet_rates = alexnet_feeding.measure(batch_size=10, rounds=rounds, steps_per_window=2,
                                            num_examples=200)
    resnet_config = resnet_pipeline.Config(data_dir=args.data_dir, num_filters=4, batch_size=8,
                                           rounds=rounds, steps_per_window=2, warmup_steps=1)
  else:
    alexnet_rates = alexnet_feeding.measure(rounds=rounds)
    resnet_config = resnet_pipeline.Config(data_dir=args.data_dir, rounds=rounds)
  training = [('AlexNet', name, figures)
              for name, figures in _figures(alexnet_rates).items()]
  training += [('ResNet-18', name, figures) for name, figures in
               _figures(resnet_pipeline.measure(resnet_config)).items()]
  googlenet_rates = googlenet_variants.measure(
      list(googlenet_variant.values()), batch_size=8 if smoke else 128, rounds=rounds,
      steps_per_window=1 if smoke else 5)
  training += [('GoogLeNet', name, _figures({name: googlenet_rates[variant]})[name])
               for name, variant in googlenet_variant.items()]

  print('Training, examples/s (interleaved windows; ratio to the same model in tf.keras fit; '
        'GFLOP/s = 3 x forward FLOPs x examples/s):\n')
  print('| model | variant | examples/s median (min-max) | vs keras | GFLOP/s | % of fp32 peak |')
  print('|---|---|---:|---:|---:|---:|')
  keras = {model: figures[0] for model, name, figures in training if name == 'keras'}
  for model, name, (median, low, high) in training:
    gflops = 3 * flops.get(model, flops.get('%s %s' % (model, name))) * median / 1e9
    print('| %s | %s | %.1f (%.1f-%.1f) | %s | %.1f | %.0f%% |' % (
        model, name, median, low, high,
        '%.2f' % (median / keras[model]) if model in keras else '-', gflops,
        100 * gflops / peak))
  print('\nForward FLOPs per example: %s. Matmul peak: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s.\n'
        % (', '.join('%s %.3g' % (m, f) for m, f in flops.items()), peak, peak_bf16))
  print_cifar_table(smoke, rounds, peak, peak_bf16)

  print('SavedModel inference (export of each model; the REST server serves the optimised path, '
        'benchmarks/serving.py compares them all):\n')
  print('| model | TF1 loader batch-1 p50 / p99 ms | TF1 loader batch-256 images/s | '
        'optimised (frozen, fp32) batch-1 p50 / p99 ms | tf.saved_model.load batch-1 p50 / '
        'p99 ms |')
  print('|---|---:|---:|---:|---:|')
  with tempfile.TemporaryDirectory() as work:
    for name, version_dir in export_models(work, smoke).items():
      figures = inference_figures(version_dir, 5 if smoke else 300, 0.2 if smoke else 5.0)
      print('| %s | %.2f / %.2f | %.0f | %.2f / %.2f | %.2f / %.2f |' % ((name,) + figures))
  return 0


if __name__ == '__main__':
  sys.exit(main())
