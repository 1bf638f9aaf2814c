"""Serving speed: the REST server against a direct in-process call of the same SavedModel.

  python benchmarks/serving_latency.py --export_dir=EXPORT_DIR [--rounds=3] [--clients=16]

Measures, in rounds that alternate between the paths:
- batch-1 latency (p50/p99 ms) of one image: in process (TF1 Session on the loaded export) and
  through `python -m mnist_cnn.serve` over HTTP on 127.0.0.1 (one client, keep-alive);
- throughput (images/s): in process in batches of --clients images (the largest batch the
  server can form from --clients one-image clients) and of --large_batch images, and through
  the server with --clients concurrent one-image clients, with its batching on and off.
Request bodies are encoded once beforehand, so the clients cost only HTTP; they run in this
process, on the same cores as the server, as a local client would. Prints a markdown table of
medians (min-max over rounds) and the ratio of the batched server's throughput to the
in-process throughput at the same batch size.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mnist_cnn import predict  # pylint: disable=g-import-not-at-top,wrong-import-position
from mnist_cnn.serving import models  # pylint: disable=g-import-not-at-top,wrong-import-position


class ServerProcess(object):
  """The REST server as its own process, as users run it."""

  def __init__(self, base_path, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'mnist_cnn.serve', '--model_base_path=' + base_path,
         '--port=0'] + list(extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env, cwd=REPO)
    self.port = None
    for line in self.process.stdout:
      match = re.search(r'REST API at http://127\.0\.0\.1:(\d+)/', line)
      if match:
        self.port = int(match.group(1))
        break
    if self.port is None:
      raise RuntimeError('the server did not start')
    self.log = []
    threading.Thread(target=lambda: self.log.extend(self.process.stdout), daemon=True).start()

  def stop(self):
    self.process.terminate()
    self.process.wait(timeout=60)


def _post(connection, body):
  connection.request('POST', '/v1/models/mnist:predict', body=body,
                     headers={'Content-Type': 'application/json'})
  response = connection.getresponse()
  data = response.read()
  if response.status != 200:
    raise RuntimeError('HTTP %d: %s' % (response.status, data[:200]))


def call_latencies(call, count):
  """Seconds taken by each of count calls of call(), after one untimed warm-up call."""
  call()
  latencies = []
  for _ in range(count):
    started = time.perf_counter()
    call()
    latencies.append(time.perf_counter() - started)
  return latencies


def rest_latencies(port, body, count):
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
  latencies = call_latencies(lambda: _post(connection, body), count)
  connection.close()
  return latencies


def rest_throughput(port, body, clients, requests_per_client):
  """Images/s with `clients` threads each sending one-image requests."""
  barrier = threading.Barrier(clients + 1)
  errors = []

  def client():
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    _post(connection, body)
    barrier.wait()
    try:
      for _ in range(requests_per_client):
        _post(connection, body)
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


def in_process_latencies(loaded, signature, image, count):
  return call_latencies(lambda: loaded.run(signature, {'images': image}), count)


def in_process_throughput(loaded, signature, batch, seconds):
  loaded.run(signature, {'images': batch})
  done, started = 0, time.perf_counter()
  while time.perf_counter() - started < seconds:
    loaded.run(signature, {'images': batch})
    done += len(batch)
  return done / (time.perf_counter() - started)


def _ms(values, q):
  return 1000.0 * float(np.percentile(values, q))


def _spread(values, fmt='%.1f'):
  return (fmt + ' (' + fmt + '-' + fmt + ')') % (statistics.median(values), min(values),
                                                  max(values))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--export_dir', required=True,
                      help='export base directory (newest version) or one version directory')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--latency_requests', type=int, default=300)
  parser.add_argument('--requests_per_client', type=int, default=100)
  parser.add_argument('--large_batch', type=int, default=64,
                      help='a second in-process batch size, and the server\'s --max_batch_size')
  parser.add_argument('--batch_timeout_micros', type=int, default=2000,
                      help='the batching server\'s --batch_timeout_micros')
  parser.add_argument('--num_batch_threads', type=int, default=1,
                      help='the batching server\'s --num_batch_threads')
  parser.add_argument('--seconds', type=float, default=5.0,
                      help='length of each in-process throughput window')
  args = parser.parse_args(argv)

  version_dir = predict.resolve_export(args.export_dir)
  base_path = os.path.dirname(os.path.abspath(version_dir))
  loaded = models.LoadedVersion(0, version_dir)
  signature = loaded.signatures['serving_default']
  shape = [d if d > 0 else 1 for d in (signature.inputs['images'].shape or [1, 28, 28, 1])]
  image = np.random.RandomState(0).rand(*shape).astype(np.float32)
  client_batch = np.repeat(image, args.clients, axis=0)
  large_batch = np.repeat(image, args.large_batch, axis=0)
  body = json.dumps({'instances': image.tolist()}).encode()

  batched = ServerProcess(base_path, '--max_batch_size=%d' % args.large_batch,
                          '--batch_timeout_micros=%d' % args.batch_timeout_micros,
                          '--num_batch_threads=%d' % args.num_batch_threads)
  unbatched = ServerProcess(base_path, '--max_batch_size=1', '--num_batch_threads=2')
  figures = {k: [] for k in ('local_p50', 'local_p99', 'rest_p50', 'rest_p99', 'local_tput',
                             'local_tput_large', 'rest_tput', 'rest_tput_unbatched')}
  try:
    for round_index in range(args.rounds):
      local = in_process_latencies(loaded, signature, image, args.latency_requests)
      rest = rest_latencies(batched.port, body, args.latency_requests)
      figures['local_p50'].append(_ms(local, 50))
      figures['local_p99'].append(_ms(local, 99))
      figures['rest_p50'].append(_ms(rest, 50))
      figures['rest_p99'].append(_ms(rest, 99))
      figures['local_tput'].append(in_process_throughput(loaded, signature, client_batch,
                                                         args.seconds))
      figures['local_tput_large'].append(in_process_throughput(loaded, signature, large_batch,
                                                               args.seconds))
      figures['rest_tput'].append(rest_throughput(batched.port, body, args.clients,
                                                  args.requests_per_client))
      figures['rest_tput_unbatched'].append(rest_throughput(
          unbatched.port, body, args.clients, args.requests_per_client))
      print('round %d: %s' % (round_index + 1, ', '.join(
          '%s %.1f' % (k, v[-1]) for k, v in figures.items())), file=sys.stderr)
  finally:
    batched.stop()
    unbatched.stop()
    loaded.close_when_drained()

  ratio = statistics.median(figures['rest_tput']) / statistics.median(figures['local_tput'])
  print('| path | batch-1 latency p50 ms | p99 ms | throughput, images/s |')
  print('|---|---:|---:|---:|')
  print('| in process (Session on the export) | %s | %s | %s (batches of %d) |' % (
      _spread(figures['local_p50'], '%.2f'), _spread(figures['local_p99'], '%.2f'),
      _spread(figures['local_tput']), args.clients))
  print('| in process, larger batches | - | - | %s (batches of %d) |' % (
      _spread(figures['local_tput_large']), args.large_batch))
  print('| REST server, 1 client | %s | %s | - |' % (
      _spread(figures['rest_p50'], '%.2f'), _spread(figures['rest_p99'], '%.2f')))
  print('| REST server, %d clients, batching | - | - | %s |' % (
      args.clients, _spread(figures['rest_tput'])))
  print('| REST server, %d clients, no batching | - | - | %s |' % (
      args.clients, _spread(figures['rest_tput_unbatched'])))
  print('\nbatched REST throughput / in-process throughput in batches of %d: %.2f' % (
      args.clients, ratio))


if __name__ == '__main__':
  main()
