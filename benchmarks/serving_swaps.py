"""Version swaps under a steady client: the server's memory after each swap, and every answer
checked against the version that gave it.

  python benchmarks/serving_swaps.py --export_dir=EXPORT [--second_export_dir=OTHER] \
      [--swaps=300] [--server_flags=--optimize_graph=false]

Starts the REST server over a base directory holding EXPORT as version 1, with one client
calling :predict throughout. Each swap publishes the next version as exports appear (copied
beside, then renamed into place; versions alternate between EXPORT and OTHER), waits until the
server serves it, deletes the previous one and waits for the server to log its retirement,
then reads the server's resident memory (VmRSS). An answer to a request sent after a version
was served and answered before the next one was published must be that version's; with two
different exports, an answer of the retired one shows. Prints RSS after each swap, then one
summary row; the target is RSS after the last swap within 10% of RSS once the first load has
settled, with no failed request and no answer from a retired version.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import serving_abuse  # pylint: disable=g-import-not-at-top,wrong-import-position


def wait_for(condition, timeout, what):
  """serving_abuse.wait_for, raising where it would give None."""
  if serving_abuse.wait_for(condition, timeout) is None:
    raise RuntimeError('timed out after %.0f s waiting for %s' % (timeout, what))


class Client(threading.Thread):
  """Calls :predict with one fixed image until stopped; keeps (sent, answered, status,
  probabilities) of every call."""

  def __init__(self, port, interval_s):
    super().__init__(daemon=True)
    self.port = port
    self.interval_s = interval_s
    image = np.random.RandomState(0).rand(28, 28, 1).astype(np.float32)
    self.body = json.dumps({'instances': [image.tolist()]})
    self.calls = []
    self.stopping = threading.Event()

  def run(self):
    connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
    while not self.stopping.is_set():
      sent = time.monotonic()
      try:
        connection.request('POST', serving_abuse.PATH, body=self.body)
        response = connection.getresponse()
        status, body = response.status, response.read()
        answer = (np.array(json.loads(body)['predictions'][0]['probabilities'])
                  if status == 200 else body[:200])
      except (OSError, http.client.HTTPException) as e:
        status, answer = 'error: %s' % type(e).__name__, None
        connection.close()
        connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
      self.calls.append((sent, time.monotonic(), status, answer))
      self.stopping.wait(self.interval_s)
    connection.close()

  def answer_after(self, moment, count=3):
    """The answer of a call sent after `moment` (waits for `count` of them)."""
    wait_for(lambda: sum(c[0] > moment for c in self.calls) >= count, 60, 'answers')
    return next(c[3] for c in self.calls if c[0] > moment and c[2] == 200)


def publish(source, base, version):
  staging = os.path.join(base, '.staging-%d' % version)
  shutil.copytree(source, staging)
  os.rename(staging, os.path.join(base, str(version)))


def run(export_dirs, swaps, server_flags, interval_s, hold_s=0.5, progress=None):
  """Returns the summary row (a dict) of `swaps` swaps of alternating exports."""
  progress = progress or (lambda line: print(line, flush=True))
  # Here, not above: it imports TensorFlow, which --help need not wait for.
  from benchmarks import serving  # pylint: disable=g-import-not-at-top
  base = tempfile.mkdtemp(prefix='serving_swaps_')
  publish(export_dirs[0], base, 1)
  server = serving.ServerProcess(base, '--file_system_poll_wait_seconds=0.2', *server_flags)
  client = Client(server.port, interval_s)
  try:
    pid = server.process.pid
    started = time.monotonic()
    client.start()
    expected = {0: client.answer_after(started, count=20)}  # the first load settles
    rss_first = serving_abuse.rss_mb(pid)
    progress('after the first load settled: %.0f MB' % rss_first)
    served_at, published_at, rss, swap_s = {1: started}, {}, [], []
    for version in range(2, swaps + 2):
      source = export_dirs[(version - 1) % len(export_dirs)]
      began = published_at[version] = time.monotonic()
      publish(source, base, version)
      wait_for(lambda: serving_abuse.version_served(server.port) == version, 300,
               'version %d' % version)
      served_at[version] = time.monotonic()
      swap_s.append(served_at[version] - began)
      shutil.rmtree(os.path.join(base, str(version - 1)))
      wait_for(lambda: any('retired version %d' % (version - 1) in line for line in server.log),
               300, 'version %d to retire' % (version - 1))
      kind = (version - 1) % len(export_dirs)
      if kind not in expected:
        expected[kind] = client.answer_after(served_at[version])
      time.sleep(hold_s)  # the client's answers now are the new version's alone
      rss.append(serving_abuse.rss_mb(pid))
      progress('swap %d: version %d served %.1f s after it appeared, RSS %.0f MB' % (
          version - 1, version, swap_s[-1], rss[-1]))
    client.answer_after(time.monotonic())
  finally:
    client.stopping.set()
    client.join(60)
    server.stop()
    shutil.rmtree(base, ignore_errors=True)
  return summary(client.calls, expected, served_at, published_at, len(export_dirs), rss_first,
                 rss, swap_s, server.log)


def summary(calls, expected, served_at, published_at, kinds, rss_first, rss, swap_s, log):
  """The summary row of a run: calls are (sent, answered, status, answer); expected[k] is the
  answer of export k; version v (from 1) serves export (v - 1) % kinds."""
  failed = [c for c in calls if c[2] != 200]
  checked = wrong = 0
  distinct = kinds > 1 and not np.allclose(expected[0], expected[1], atol=1e-6)
  for sent, answered, status, answer in calls:
    if status != 200 or not distinct:
      continue
    # The version served when the call was sent, if no other was published before its answer.
    version = max(v for v, t in served_at.items() if t <= sent)
    if published_at.get(version + 1, float('inf')) <= answered:
      continue
    checked += 1
    if not np.allclose(answer, expected[(version - 1) % kinds], atol=1e-6):
      wrong += 1
  return {
      'swaps': len(rss), 'requests': len(calls), 'failed': len(failed),
      'failures': [str(c[2:]) for c in failed[:3]],
      'answers_checked': checked, 'answers_from_another_version': wrong,
      'exports_differ': distinct,
      'rss_first_mb': rss_first, 'rss_last_mb': rss[-1], 'rss_max_mb': max(rss),
      'rss_last_over_first': rss[-1] / rss_first,
      'swap_s_median': statistics.median(swap_s),
      'still_referenced': sum('still referenced' in line for line in log),
  }


def table(rows):
  lines = ['| server | swaps | requests (failed) | answers checked (another version\'s) | '
           'RSS MB: first -> last (max) | last / first | swap s (median) | retired versions '
           'still referenced |', '|---|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append('| %s | %d | %d (%d) | %d (%d) | %.0f -> %.0f (%.0f) | %.3f | %.2f | %d |' % (
        r['server'], r['swaps'], r['requests'], r['failed'], r['answers_checked'],
        r['answers_from_another_version'], r['rss_first_mb'], r['rss_last_mb'],
        r['rss_max_mb'], r['rss_last_over_first'], r['swap_s_median'],
        r['still_referenced']))
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--export_dir', required=True, help='an export (base dir or version)')
  parser.add_argument('--second_export_dir',
                      help='another export of the same model, alternated with the first so that '
                      'an answer from the wrong version shows')
  parser.add_argument('--swaps', type=int, default=300)
  parser.add_argument('--server_flags', action='append', default=[],
                      help='a flag for the server, e.g. --server_flags=--optimize_graph=false; '
                      'repeat it for more')
  parser.add_argument('--client_interval_s', type=float, default=0.02,
                      help='pause between the client\'s calls')
  parser.add_argument('--hold_s', type=float, default=0.5,
                      help='seconds between a retirement and the next publication')
  parser.add_argument('--json', help='also write the summary row to this file')
  args = parser.parse_args(argv)
  if args.swaps < 1:
    parser.error('--swaps must be at least 1')
  from mnist_cnn import predict  # pylint: disable=g-import-not-at-top
  try:
    exports = [predict.resolve_export(d) for d in filter(None, (args.export_dir,
                                                                args.second_export_dir))]
  except ValueError as e:
    sys.exit('error: %s' % e)
  row = run(exports, args.swaps, args.server_flags, args.client_interval_s, args.hold_s)
  row['server'] = ' '.join(args.server_flags) or 'defaults'
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(row, f, indent=2)
  print(table([row]))
  if row['failures']:
    print('first failures: %s' % '; '.join(row['failures']))
  return row


if __name__ == '__main__':
  main()
