"""Serving speed of one or more exports, every path side by side in one run.

  python benchmarks/serving.py --export alexnet=DIR --export resnet18=DIR \
      [--data_dir=MNIST_DIR] [--rounds=3] [--clients=16] [--breakdown]

For each export, in rounds that alternate between the paths (medians, min-max over rounds):
- batch-1 latency (p50/p99 ms) of one image and throughput (images/s) in batches of --clients
  images, in process: the TF1 loader on the export as written (`tf.compat.v1.saved_model` in a
  Session, fp32), `tf.saved_model.load` (TF2, a concrete function), and our optimised path
  (mnist_cnn/serving/inference_graph.py: frozen, in fp32 and, where the load-time choice
  differs, in the precision it chose);
- the same through `python -m mnist_cnn.serve` over HTTP on 127.0.0.1 with its defaults: one
  client (keep-alive) for latency, --clients concurrent one-image clients for throughput, then
  the same over gRPC (Predict) on the same server, and REST with batching off. Request bodies
  are encoded once beforehand; the clients run in this process on the same cores as the
  server, as a local client would.
Then the ratios the serving targets are stated in, the arithmetic time of one image (forward
FLOPs by TensorFlow's profiler over the matmul peak measured here), and with --data_dir the
agreement of the optimised path with the export as written on every test image. --breakdown
adds where the time of one batch-1 call goes, per op type, for the TF1 loader and the
optimised path (a traced run: op times are inflated by the tracing, their shares are not).
"""

import argparse
import collections
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import serving_abuse_grpc
from mnist_cnn import input_data
from mnist_cnn import predict
from mnist_cnn.serving import inference_graph
from mnist_cnn.serving import models
from official.utils import export
from official.utils import precision
# pylint: enable=g-import-not-at-top,wrong-import-position


class ServerProcess(object):
  """The REST server as its own process, as users run it."""

  def __init__(self, base_path, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'mnist_cnn.serve', '--model_base_path=' + base_path,
         '--port=0', '--rest_api_port=0'] + list(extra), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    self.port = self.grpc_port = None
    self.log = []
    for line in self.process.stdout:
      self.log.append(line)
      match = re.search(r'REST API at http://127\.0\.0\.1:(\d+)/', line)
      if match:
        self.port = int(match.group(1))
        break  # logged after gRPC's
      match = re.search(r'gRPC API at 127\.0\.0\.1:(\d+) ', line)
      if match:
        self.grpc_port = int(match.group(1))
    if self.port is None or self.grpc_port is None:
      raise RuntimeError('the server did not start:\n' + ''.join(self.log[-20:]))
    threading.Thread(target=lambda: self.log.extend(self.process.stdout), daemon=True).start()

  def stop(self):
    self.process.terminate()
    self.process.wait(timeout=60)


REST_DEFAULTS = 'REST server (defaults)'
GRPC_DEFAULTS = 'gRPC, same server'


def call_latencies(call, count):
  """Seconds taken by each of count calls of call(), after one untimed warm-up call."""
  call()
  latencies = []
  for _ in range(count):
    started = time.perf_counter()
    call()
    latencies.append(time.perf_counter() - started)
  return latencies


class RestClient(object):
  """POSTs an encoded predict body over one keep-alive connection; the answer is read, not
  parsed."""

  def __init__(self, port):
    self.connection = http.client.HTTPConnection('127.0.0.1', port, timeout=60)

  def __call__(self, body):
    self.connection.request('POST', '/v1/models/mnist:predict', body=body,
                            headers={'Content-Type': 'application/json'})
    response = self.connection.getresponse()
    data = response.read()
    if response.status != 200:
      raise RuntimeError('HTTP %d: %s' % (response.status, data[:200]))

  def close(self):
    self.connection.close()


class GrpcClient(object):
  """Predict over gRPC, one channel (one HTTP/2 connection) per client, as REST has one
  connection per client. The request is serialized once beforehand, as REST's body is encoded
  once, and the answer is read but not parsed, as REST's."""

  def __init__(self, port):
    self.channel = grpc.insecure_channel('127.0.0.1:%d' % port)
    self.call = self.channel.unary_unary('/tensorflow.serving.PredictionService/Predict',
                                         request_serializer=None, response_deserializer=None)

  def __call__(self, request_bytes):
    self.call(request_bytes, timeout=60)

  def close(self):
    self.channel.close()


def server_latencies(client_class, port, body, count):
  """call_latencies of one client (RestClient or GrpcClient) sending `body`."""
  client = client_class(port)
  latencies = call_latencies(lambda: client(body), count)
  client.close()
  return latencies


def server_throughput(client_class, port, body, clients, requests_per_client):
  """Images/s with `clients` threads, each a client_class(port) sending one-image `body`."""
  barrier = threading.Barrier(clients + 1)
  errors = []

  def client():
    connection = client_class(port)
    connection(body)
    barrier.wait()
    try:
      for _ in range(requests_per_client):
        connection(body)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
    connection.close()

  threads = [threading.Thread(target=client) for _ in range(clients)]
  for thread in threads:
    thread.start()
  barrier.wait()
  started = time.perf_counter()
  for thread in threads:
    thread.join()
  elapsed = time.perf_counter() - started
  if errors:
    raise errors[0]
  return clients * requests_per_client / elapsed


def throughput(call, batch_size, seconds):
  """Images/s of call() (one batch of batch_size) repeated for `seconds`."""
  call()
  done, started = 0, time.perf_counter()
  while time.perf_counter() - started < seconds:
    call()
    done += batch_size
  return done / (time.perf_counter() - started)


def in_process_throughput(loaded, signature, batch, seconds):
  return throughput(lambda: loaded.run(signature, {'images': batch}), len(batch), seconds)


class InProcess(object):
  """One in-process path: run(images) -> outputs, for batch-1 latency and batch throughput."""

  def __init__(self, name, run):
    self.name = name
    self.run = run


def loader_path(name, version_dir, **load_args):
  loaded = models.LoadedVersion(0, version_dir, **load_args)
  signature = loaded.signatures['serving_default']
  path = InProcess(name, lambda images: loaded.run(signature, {'images': images}))
  path.loaded = loaded
  return path


def tf2_path(version_dir):
  function = tf.saved_model.load(version_dir).signatures['serving_default']
  return InProcess('tf.saved_model.load', lambda images: {
      k: v.numpy() for k, v in function(images=tf.constant(images)).items()})


def forward_flops(loaded, row_shape):
  """Float ops of one image through the graph a LoadedVersion runs, by TF's profiler."""
  from benchmarks import suite  # pylint: disable=g-import-not-at-top
  signature = loaded.signatures['serving_default']
  graph_def = loaded.graph.as_graph_def()

  def build():
    image = tf.compat.v1.placeholder(tf.float32, [1] + list(row_shape))
    tf.compat.v1.import_graph_def(
        graph_def, input_map={signature.inputs['images'].tensor_name: image},
        return_elements=[signature.outputs['probabilities']], name='')
  return suite.forward_flops(build)


def matmul_peak(dtype, size=1024, chain=8, seconds=2.0):
  """GFLOP/s of chained size x size matmuls in one Session call (the compute peak)."""
  from benchmarks import suite  # pylint: disable=g-import-not-at-top
  return suite.matmul_peak(dtype, size, chain, seconds)


def breakdown(loaded, image, runs=20):
  """[(op type, share of traced op time)], traced op time and wall time per call, in ms."""
  session = loaded._session  # pylint: disable=protected-access
  signature = loaded.signatures['serving_default']
  fetches = [signature.outputs[k] for k in sorted(signature.outputs)]
  feed = {signature.inputs['images'].tensor_name: image}
  options = config_pb2.RunOptions(trace_level=config_pb2.RunOptions.FULL_TRACE)
  per_op = collections.Counter()
  for _ in range(runs):
    metadata = config_pb2.RunMetadata()
    session.run(fetches, feed, options=options, run_metadata=metadata)
    for device in metadata.step_stats.dev_stats:
      for node in device.node_stats:
        label = node.timeline_label or node.node_name
        op = label.split('(')[0].split('=')[-1].strip() or node.node_name
        per_op[op] += node.all_end_rel_micros
  total = sum(per_op.values())
  wall = statistics.median(call_latencies(lambda: session.run(fetches, feed), 100))
  return ([(op, t / total) for op, t in per_op.most_common(6)], total / runs / 1000.0,
          wall * 1000.0)


def agreement(reference, candidates, images, labels, batch_size=500):
  """Test accuracy of each path, and each candidate's class agreement with the reference."""
  outputs = {p.name: {'classes': [], 'probabilities': []} for p in [reference] + candidates}
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    for path in [reference] + candidates:
      result = path.run(batch)
      for key in ('classes', 'probabilities'):
        outputs[path.name][key].append(np.asarray(result[key]))
  merged = {name: {k: np.concatenate(v) for k, v in out.items()} for name, out in outputs.items()}
  ref = merged[reference.name]
  rows = []
  for name, out in merged.items():
    rows.append((name, float(np.mean(out['classes'] == labels)),
                 int(np.sum(out['classes'] == ref['classes'])),
                 float(np.max(np.abs(out['probabilities'] - ref['probabilities'])))))
  return rows


def _ms(values, q):
  return 1000.0 * float(np.percentile(values, q))


def _spread(values, fmt='%.1f'):
  if not values:
    return '-'
  return (fmt + ' (' + fmt + '-' + fmt + ')') % (statistics.median(values), min(values),
                                                  max(values))


def in_process_paths(version_dir):
  """TF1 loader, tf.saved_model.load, then the optimised path in fp32 and (where this CPU has
  native bf16) bf16, the load-time choice marked and last."""
  chosen = inference_graph.choose_precision('auto', export.read_serving_info(version_dir),
                                            precision.cpu_supports_bf16())
  paths = [loader_path('TF1 loader', version_dir, optimize=False, serving_precision='fp32'),
           tf2_path(version_dir)]
  options = {'fp32', chosen} | ({'bf16'} if precision.cpu_supports_bf16() else set())
  for option in sorted(options, key=lambda p: (p == chosen, p)):
    paths.append(loader_path('optimised, %s%s' % (
        option, ' (load-time choice)' if option == chosen else ''), version_dir,
                             serving_precision=option))
  return paths


def run_rounds(label, paths, servers, image, args):
  """{path or server name: {'p50', 'p99', 'tput': [one figure per round]}}."""
  client_batch = np.repeat(image, args.clients, axis=0)
  body = json.dumps({'instances': image.tolist()}).encode()
  request_bytes = serving_abuse_grpc.predict_request({'images': image})
  figures = collections.defaultdict(lambda: collections.defaultdict(list))
  for round_index in range(args.rounds):
    for path in paths:
      times = call_latencies(lambda: path.run(image), args.latency_requests)
      figures[path.name]['p50'].append(_ms(times, 50))
      figures[path.name]['p99'].append(_ms(times, 99))
      figures[path.name]['tput'].append(throughput(lambda: path.run(client_batch),
                                                   args.clients, args.seconds))
    for name, server in servers.items():
      sides = [(name, RestClient, server.port, body)]
      if name == REST_DEFAULTS:  # gRPC on the same server, right after REST
        sides.append((GRPC_DEFAULTS, GrpcClient, server.grpc_port, request_bytes))
      for side, client_class, port, payload in sides:
        if 'off' not in side:
          times = server_latencies(client_class, port, payload, args.latency_requests)
          figures[side]['p50'].append(_ms(times, 50))
          figures[side]['p99'].append(_ms(times, 99))
        figures[side]['tput'].append(server_throughput(
            client_class, port, payload, args.clients, args.requests_per_client))
    print('%s round %d: %s' % (label, round_index + 1, ', '.join(
        '%s %.2f ms %.0f/s' % (k, v['p50'][-1] if v['p50'] else 0, v['tput'][-1])
        for k, v in figures.items())), file=sys.stderr)
  return figures


def summarise(figures, optimised, row_shape, args):
  """The ratios the serving targets are stated in, and the arithmetic time of one image."""
  med = {name: {k: statistics.median(v) for k, v in values.items() if v}
         for name, values in figures.items()}
  flops = forward_flops(optimised.loaded, row_shape)
  peak = args.peaks['bf16' if 'bf16' in optimised.name else 'fp32']
  arithmetic_ms = flops / (peak * 1e9) * 1000.0
  rest, fast = med[REST_DEFAULTS], med[optimised.name]
  clients = args.clients
  return collections.OrderedDict([
      ('gRPC p50 / REST p50 (target <= 1)', med[GRPC_DEFAULTS]['p50'] / rest['p50']),
      ('gRPC %d clients / REST %d clients (target >= 1.3)' % (clients, clients),
       med[GRPC_DEFAULTS]['tput'] / rest['tput']),
      ('REST p50 / tf.saved_model.load p50', rest['p50'] / med['tf.saved_model.load']['p50']),
      ('optimised p50 ms (%s)' % optimised.name, fast['p50']),
      ('arithmetic ms (%.3g FLOPs at %.0f GFLOP/s)' % (flops, peak), arithmetic_ms),
      ('optimised p50 / arithmetic', fast['p50'] / arithmetic_ms),
      ('REST %d clients / optimised in process, batches of %d' % (clients, clients),
       rest['tput'] / fast['tput']),
      ('REST %d clients / TF1 loader in process, batches of %d' % (clients, clients),
       rest['tput'] / med['TF1 loader']['tput']),
      ('TF1 loader p50 / optimised p50', med['TF1 loader']['p50'] / fast['p50']),
  ])


def print_agreement(paths, row_shape, data_dir):
  raw = input_data.load_data(data_dir)
  images = (raw.test_images.astype(np.float32) * np.float32(1.0 / 255.0)).reshape(
      [-1] + row_shape)
  rows = agreement(paths[0], paths[2:], images, raw.test_labels)
  print('\nAll %d test images, against the TF1 loader on the export as written:\n' %
        len(images))
  print('| path | test accuracy | same class | largest probability difference |')
  print('|---|---:|---:|---:|')
  for name, accuracy, same, diff in rows:
    print('| %s | %.4f | %d / %d | %.2g |' % (name, accuracy, same, len(images), diff))


def measure_export(label, export_dir, args):
  """Runs every path of one export; prints its tables and returns its summary."""
  version_dir = predict.resolve_export(export_dir)
  base_path = os.path.dirname(os.path.abspath(version_dir))
  paths = in_process_paths(version_dir)
  declared = paths[0].loaded.signatures['serving_default'].inputs['images'].shape
  row_shape = args.image_shape if declared is None else [d if d > 0 else 1 for d in declared[1:]]
  image = np.random.RandomState(0).rand(1, *row_shape).astype(np.float32)
  servers = {REST_DEFAULTS: ServerProcess(base_path),
             'REST server, batching off': ServerProcess(base_path, '--max_batch_size=1')}
  try:
    figures = run_rounds(label, paths, servers, image, args)
  finally:
    for server in servers.values():
      server.stop()
  served = [line.strip() for line in servers[REST_DEFAULTS].log if 'serving ' in line]
  print('\n### %s (%s)\n' % (label, version_dir))
  print('| path | batch-1 p50 ms | batch-1 p99 ms | images/s, %d at a time |' % args.clients)
  print('|---|---:|---:|---:|')
  for name, values in figures.items():
    print('| %s | %s | %s | %s |' % (name, _spread(values['p50'], '%.2f'),
                                     _spread(values['p99'], '%.2f'), _spread(values['tput'])))
  if served:
    print('\nThe server: %s' % served[-1].split('] ', 1)[-1])
  summary = summarise(figures, paths[-1], row_shape, args)
  print()
  for key, value in summary.items():
    print('- %s: %.2f' % (key, value))
  if args.data_dir:
    print_agreement(paths, row_shape, args.data_dir)
  if args.breakdown:
    for path in (paths[0], paths[-1]):
      shares, traced_ms, wall_ms = breakdown(path.loaded, image)
      print('\nWhere one batch-1 call goes, %s: %.2f ms a call untraced; traced op time %.2f '
            'ms: %s' % (path.name, wall_ms, traced_ms, ', '.join(
                '%s %.0f%%' % (op, 100 * share) for op, share in shares)))
  for path in paths:
    if hasattr(path, 'loaded'):
      path.loaded.close_when_drained()
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--export', action='append', required=True, metavar='NAME=DIR',
                      help='an export base directory (newest version) or version directory, '
                      'with a label; repeat for several')
  parser.add_argument('--data_dir', default=None,
                      help='MNIST IDX files: check the optimised paths on every test image')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--latency_requests', type=int, default=300)
  parser.add_argument('--requests_per_client', type=int, default=100)
  parser.add_argument('--seconds', type=float, default=5.0,
                      help='length of each in-process throughput window')
  parser.add_argument('--peak_seconds', type=float, default=3.0,
                      help='length of each matmul peak measurement')
  parser.add_argument('--image_shape', default='28,28,1',
                      help='h,w,c of one image, for exports whose input has no fixed shape')
  parser.add_argument('--breakdown', action='store_true',
                      help='also print where one batch-1 call goes, per op type')
  args = parser.parse_args(argv)
  args.image_shape = [int(d) for d in args.image_shape.split(',')]
  exports = []
  for item in args.export:
    label, _, path = item.rpartition('=')
    exports.append((label or os.path.basename(os.path.normpath(path)), path))
  tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.ERROR)
  args.peaks = {'fp32': matmul_peak(tf.float32, seconds=args.peak_seconds),
                'bf16': matmul_peak(tf.bfloat16, seconds=args.peak_seconds)}
  print('Matmul peak here: fp32 %.0f GFLOP/s, bf16 %.0f GFLOP/s.' % (
      args.peaks['fp32'], args.peaks['bf16']))
  for label, path in exports:
    measure_export(label, path, args)
  return 0


if __name__ == '__main__':
  sys.exit(main())
