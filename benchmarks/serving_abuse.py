"""Hostile and unlucky clients against the server, over REST and gRPC: what each gets, how
fast, at what cost.

  python benchmarks/serving_abuse.py --export_dir=EXPORT [--quick]     # starts its own server
  python benchmarks/serving_abuse.py --port=8501 [--grpc_port=8500] --pid=PID [--quick]

EXPORT is an AlexNet export (a base directory of versions, or one version). Every case talks to
127.0.0.1 alone, with bounded counts and timeouts. Prints one markdown row per case: what a
careful endpoint should answer, what came back, latency, and the server's resident memory
(VmRSS) before and after. With its own server it also moves versions on disk (a stray '²'
directory, a version copied in without a rename, a deleted version). --quick shrinks the counts
for a smoke test.
"""

import argparse
import base64
import concurrent.futures
import http.client
import io
import json
import os
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = '/v1/models/mnist:predict'
BYTES_SIGNATURE = 'image_bytes:serving_default'


################################################################################
# Payloads
################################################################################


def png_bomb(side=20000):
  """A grey PNG of side x side zero pixels: ~400 KB that decode to side^2 bytes."""
  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
  compressor = zlib.compressobj(9)
  row = b'\x00' * (side + 1)  # filter byte + pixels
  parts = [compressor.compress(row) for _ in range(side)]
  parts.append(compressor.flush())
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0))
          + chunk(b'IDAT', b''.join(parts)) + chunk(b'IEND', b''))


def gif_bomb(side=20000, frames=4):
  """A GIF whose screen and frames declare side x side pixels, with almost no pixel data."""
  header = b'GIF89a' + struct.pack('<HHBBB', side, side, 0x80, 0, 0) + b'\x00' * 6
  frame = (b'\x2c' + struct.pack('<HHHHB', 0, 0, side, side, 0) + b'\x02' +
           b'\x02\x4c\x01\x00')
  return header + frame * frames + b'\x3b'


def digit_image(seed=0):
  """A 28x28 grey image of a bright stroke, as uint8."""
  image = np.zeros((28, 28), np.uint8)
  rng = np.random.RandomState(seed)
  column = rng.randint(8, 20)
  image[4:24, column:column + 4] = 255
  return image


def encoded(image, fmt):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, fmt)
  return buffer.getvalue()


def b64(data):
  return {'b64': base64.b64encode(data).decode('ascii')}


def nested(depth):
  return '{"instances": [%s0.5%s]}' % ('[' * depth, ']' * depth)


################################################################################
# Talking to the server
################################################################################


def rss_mb(pid):
  try:
    with open('/proc/%d/status' % pid) as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return float('nan')


def request(port, method, path, body=None, timeout=60):
  """Returns (status, body as parsed JSON or raw bytes, content type, seconds)."""
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
  started = time.monotonic()
  try:
    if body is not None and not isinstance(body, (bytes, str)):
      body = json.dumps(body)
    connection.request(method, path, body=body)
    response = connection.getresponse()
    raw = response.read()
    seconds = time.monotonic() - started
    content_type = response.getheader('Content-Type', '')
    try:
      parsed = json.loads(raw)
    except ValueError:
      parsed = raw
    return response.status, parsed, content_type, seconds
  except (OSError, http.client.HTTPException) as e:
    return 'error: %s' % type(e).__name__, None, '', time.monotonic() - started
  finally:
    connection.close()


def raw_request(port, data, timeout=10):
  """Sends raw bytes; returns (status line, content type, seconds)."""
  started = time.monotonic()
  with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
    sock.sendall(data)
    received = b''
    try:
      while b'\r\n\r\n' not in received:
        chunk = sock.recv(65536)
        if not chunk:
          break
        received += chunk
    except OSError:
      pass
  head = received.split(b'\r\n\r\n')[0].decode('latin-1').split('\r\n')
  content_type = next((h.split(':', 1)[1].strip() for h in head[1:]
                       if h.lower().startswith('content-type:')), '')
  status = head[0].split(' ')[1] if head and len(head[0].split(' ')) > 1 else 'closed'
  return status, content_type, time.monotonic() - started


def classify(port, image):
  status, body, _, _ = request(port, 'POST', PATH, {'instances': [(image / 255.0).reshape(
      784).tolist()]})
  return body['predictions'][0]['classes'] if status == 200 else None


def version_served(port):
  status, body, _, _ = request(port, 'GET', '/v1/models/mnist')
  return int(body['model_version_status'][0]['version']) if status == 200 else None


def open_stalled(port, count, data):
  """count connections to port that send `data` and then nothing; (sockets, when opened)."""
  sockets = []
  for _ in range(count):
    sock = socket.create_connection(('127.0.0.1', port), timeout=10)
    sock.sendall(data)
    sock.setblocking(False)
    sockets.append(sock)
  return sockets, time.monotonic()


def wait_closed(sockets, opened, timeout, want=None):
  """{index: seconds after `opened`} of the sockets the server closed, once `want` of them
  (default: all) are or after timeout; closes them all."""
  closed_at = {}
  deadline = opened + timeout
  want = len(sockets) if want is None else want
  while len(closed_at) < want and time.monotonic() < deadline:
    for index, sock in enumerate(sockets):
      if index in closed_at:
        continue
      try:
        # Whatever arrives first is drained (gRPC's server sends its HTTP/2 settings at once).
        if sock.recv(65536) == b'':
          closed_at[index] = time.monotonic() - opened
      except BlockingIOError:
        pass
      except OSError:
        closed_at[index] = time.monotonic() - opened
    time.sleep(0.05)
  for sock in sockets:
    sock.close()
  return closed_at


def wait_for(condition, timeout):
  """Seconds until condition() held, or None after timeout."""
  started = time.monotonic()
  while time.monotonic() - started < timeout:
    if condition():
      return time.monotonic() - started
    time.sleep(0.1)
  return None


################################################################################
# Cases
################################################################################


class Probe(object):
  """Runs cases and keeps one table row per case."""

  def __init__(self, port, pid, quick=False, header_timeout_s=10.0, base_path=None,
               grpc_port=None):
    self.port = port
    self.grpc_port = grpc_port
    self.pid = pid
    self.quick = quick
    self.header_timeout_s = header_timeout_s
    self.base_path = base_path
    self.rows = []

  def row(self, case, expected, got, seconds, before, ok):
    latency = seconds if isinstance(seconds, str) else '%.0f' % (seconds * 1000)
    self.rows.append({'case': case, 'expected': expected, 'got': got, 'latency_ms': latency,
                      'rss_before_mb': before, 'rss_after_mb': rss_mb(self.pid), 'ok': ok})

  def one(self, case, expected_status, body, path=PATH, want=None):
    before = rss_mb(self.pid)
    status, answer, content_type, seconds = request(self.port, 'POST', path, body)
    error = answer.get('error', '') if isinstance(answer, dict) else ''
    ok = status == expected_status and 'json' in content_type and (want is None or want in error)
    self.row(case, str(expected_status), '%s %s' % (status, error[:60]), seconds, before, ok)

  def concurrent(self, case, expected_status, bodies):
    before = rss_mb(self.pid)
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
      results = list(pool.map(lambda b: request(self.port, 'POST', PATH, b), bodies))
    statuses = sorted(str(r[0]) for r in results)
    self.row(case, 'all %s' % expected_status, ', '.join(statuses),
             max(r[3] for r in results), before,
             all(r[0] == expected_status for r in results))

  def mixed_clients(self):
    threads, per_thread = (4, 20) if self.quick else (16, 200)
    images = [np.random.RandomState(i).rand(784).round(3).tolist() for i in range(32)]
    truth = [request(self.port, 'POST', PATH, {'instances': [im]})[1]['predictions'][0]
             ['classes'] for im in images]
    invalid = ['{"instances": [', {'instances': [[0.0] * 5]},
               {'instances': [images[0] + images[1]]},  # one instance of two images
               {'signature_name': BYTES_SIGNATURE, 'instances': [b64(b'junk')]},
               {'instances': [[None] * 784]}]
    before = rss_mb(self.pid)

    def client(index):
      wrong = server_errors = 0
      connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
      for n in range(per_thread):
        bad = n % 4 == 3
        body = invalid[(index + n) % len(invalid)] if bad else {
            'instances': [images[(index * 7 + n) % len(images)]]}
        connection.request('POST', PATH, body if isinstance(body, str) else json.dumps(body))
        response = connection.getresponse()
        answer = json.loads(response.read())
        server_errors += response.status >= 500
        if bad:
          wrong += not 400 <= response.status < 500
        else:
          wrong += response.status != 200 or answer['predictions'][0]['classes'] != truth[
              (index * 7 + n) % len(images)]
      connection.close()
      return wrong, server_errors

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      results = list(pool.map(client, range(threads)))
    seconds = time.monotonic() - started
    wrong, server_errors = sum(r[0] for r in results), sum(r[1] for r in results)
    self.row('%d clients x %d, a quarter invalid (incl. one instance of two images)' % (
        threads, per_thread), '0 wrong, 0 5xx', '%d wrong, %d 5xx' % (wrong, server_errors),
             '%.0f total' % (seconds * 1000), before, wrong == 0 and server_errors == 0)

  def bombs(self):
    png = png_bomb(5000 if self.quick else 20000)
    gif = gif_bomb()
    request_png = {'signature_name': BYTES_SIGNATURE, 'instances': [b64(png)]}
    self.one('PNG bomb (%d KB, %s pixels)' % (len(png) // 1024, '5000^2' if self.quick else
                                              '20000^2'), 400, request_png, want='pixels')
    self.one('GIF bomb (4 frames of 20000^2)', 400,
             {'signature_name': BYTES_SIGNATURE, 'instances': [b64(gif)]}, want='pixels')
    self.one('two PNG bombs in one request', 400,
             {'signature_name': BYTES_SIGNATURE, 'instances': [b64(png), b64(png)]},
             want='pixels')
    self.concurrent('four concurrent PNG bombs', 400, [request_png] * 4)

  def formats(self):
    image = digit_image()
    png_class = None
    for fmt in ('PNG', 'GIF', 'BMP', 'JPEG'):
      before = rss_mb(self.pid)
      status, answer, _, seconds = request(self.port, 'POST', PATH, {
          'signature_name': BYTES_SIGNATURE, 'instances': [b64(encoded(image, fmt))]})
      got = answer['predictions'][0]['classes'] if status == 200 else None
      png_class = got if fmt == 'PNG' else png_class
      self.row('28x28 grey digit as %s' % fmt, '200, class of the PNG',
               '%s, class %s' % (status, got), seconds, before,
               status == 200 and got == png_class)

  def malformed(self):
    self.one('lists nested 33 deep', 400, nested(33))
    self.one('lists nested 1000 deep', 400, nested(1000))
    self.one('version of 5,000 digits', 400, {'instances': [[0.0] * 784]},
             path='/v1/models/mnist/versions/%s:predict' % ('9' * 5000))
    for name, pixel in (('null', None), ('true', True), ('"0.5"', '0.5'), ('"NaN"', 'NaN')):
      self.one('%s as a pixel' % name, 400, {'instances': [[pixel] + [0.0] * 783]},
               want='expected type')
    for case, data in (
        ('header line without a colon', b'GET /v1/models/mnist HTTP/1.1\r\nHost: x\r\n'
         b'no colon here\r\n\r\n'),
        ('URL of 20,000 characters', b'GET /' + b'a' * 20000 + b' HTTP/1.1\r\nHost: x\r\n\r\n')):
      before = rss_mb(self.pid)
      status, content_type, seconds = raw_request(self.port, data)
      self.row(case, '400, JSON body', '%s, %s' % (status, content_type or '-'), seconds,
               before, status == '400' and 'json' in content_type)

  def large_requests(self, max_images):
    rng = np.random.RandomState(0)
    full = {'instances': rng.rand(max_images, 784).round(3).tolist()}
    over = ('{"instances": [' + ','.join(['[' + ','.join(['0'] * 784) + ']'] * 10500) +
            ']}').encode()[:16 * 1024 * 1024 - 1]
    over = over[:over.rindex(b'],[') + 1] + b']}'
    one = {'instances': [rng.rand(784).round(3).tolist()]}
    for case, body, expected in (
        ('two requests of %d images (the most allowed) + one image meanwhile' % max_images,
         json.dumps(full), 200),
        ('two 16 MiB requests (%d images) + one image meanwhile' % over.count(b'],[') +
         ' ', over, 400)):
      before = rss_mb(self.pid)
      results = {}

      def big(index, body=body):
        results[index] = request(self.port, 'POST', PATH, body, timeout=120)

      workers = [threading.Thread(target=big, args=(i,)) for i in range(2)]
      for worker in workers:
        worker.start()
      time.sleep(0.3)
      small = request(self.port, 'POST', PATH, one)
      for worker in workers:
        worker.join()
      time.sleep(1.0)
      statuses = [results[i][0] for i in range(2)]
      self.row(case.strip(), 'big: %d; small: 200 within 2 s; RSS back within 20%%' % expected,
               'big: %s in %.1f s; small: %s in %.0f ms' % (
                   ', '.join(map(str, statuses)), max(results[i][3] for i in range(2)),
                   small[0], small[3] * 1000), small[3], before,
               statuses == [expected] * 2 and small[0] == 200 and small[3] < 2.0 and
               rss_mb(self.pid) <= before * 1.2)

  def stalled(self):
    count = 50 if self.quick else 500
    before = rss_mb(self.pid)
    # A request line and one header, never finished.
    sockets, opened = open_stalled(self.port, count,
                                   b'POST ' + PATH.encode() + b' HTTP/1.1\r\nHost: x\r\n')
    latencies = [request(self.port, 'GET', '/v1/models/mnist')[3] for _ in range(10)]
    served = version_served(self.port) is not None
    closed_at = wait_closed(sockets, opened, self.header_timeout_s + 10)
    slowest = max(closed_at.values()) if closed_at else float('nan')
    self.row('%d stalled connections (headers never end)' % count,
             'others served; all closed within the header timeout (%g s)' % self.header_timeout_s,
             'others: %s, p50 %.0f ms; %d/%d closed, last after %.1f s' % (
                 'served' if served else 'NOT served', statistics.median(latencies) * 1000,
                 len(closed_at), count, slowest), statistics.median(latencies), before,
             served and len(closed_at) == count and slowest <= self.header_timeout_s + 1.5)

  def versions(self):
    """Moves versions on disk under the server's base path (own server only)."""
    base = self.base_path
    current = version_served(self.port)
    source = os.path.join(base, str(current))
    before = rss_mb(self.pid)
    os.mkdir(os.path.join(base, '\u00b2'))
    newer = current + 1
    staging = os.path.join(base, '.staging')
    shutil.copytree(source, staging)
    os.rename(staging, os.path.join(base, str(newer)))
    took = wait_for(lambda: version_served(self.port) == newer, 30)
    self.row("stray directory '\u00b2', then a new version", 'new version served',
             'served after %.1f s' % took if took is not None else 'not served', took or 0,
             before, took is not None)
    before = rss_mb(self.pid)
    partial = os.path.join(base, str(newer + 1))
    os.mkdir(partial)
    shutil.copy(os.path.join(source, 'saved_model.pb'), partial)
    time.sleep(1.5)  # the server sees it without variables/ and fails to load it
    for name in os.listdir(source):
      if name != 'saved_model.pb':
        copy = shutil.copytree if os.path.isdir(os.path.join(source, name)) else shutil.copy
        copy(os.path.join(source, name), os.path.join(partial, name))
    took = wait_for(lambda: version_served(self.port) == newer + 1, 30)
    self.row('version copied saved_model.pb first, variables/ 1.5 s later', 'loaded on a retry',
             'served %.1f s after the copy ended' % took if took is not None else 'not served',
             took or 0, before, took is not None)
    before = rss_mb(self.pid)
    shutil.rmtree(partial)
    took = wait_for(lambda: version_served(self.port) == newer, 30)
    self.row('served version deleted', 'the next highest served',
             'fell back after %.1f s' % took if took is not None else 'still served',
             took or 0, before, took is not None)

  def run(self, max_images):
    self.mixed_clients()
    self.bombs()
    self.formats()
    self.malformed()
    self.large_requests(50 if self.quick else max_images)
    self.stalled()
    if self.grpc_port:
      if REPO not in sys.path:
        sys.path.insert(0, REPO)
      from benchmarks import serving_abuse_grpc  # pylint: disable=g-import-not-at-top
      serving_abuse_grpc.GrpcProbe(self.grpc_port, self.row, lambda: rss_mb(self.pid),
                                   self.quick, self.header_timeout_s).run(
                                       png_bomb(5000 if self.quick else 20000), gif_bomb(),
                                       max_images)
    if self.base_path:
      self.versions()
    return self.rows


def table(rows):
  lines = ['| case | a careful endpoint | got | latency ms | RSS MB before -> after | ok |',
           '|---|---|---|---:|---:|---|']
  for r in rows:
    lines.append('| %s | %s | %s | %s | %.0f -> %.0f | %s |' % (
        r['case'], r['expected'], r['got'], r['latency_ms'], r['rss_before_mb'],
        r['rss_after_mb'], 'yes' if r['ok'] else '**NO**'))
  return '\n'.join(lines)


class OwnServer(object):
  """`python -m mnist_cnn.serve` over a copy of the export, in its own base directory."""

  def __init__(self, export_dir, header_timeout_s, extra=()):
    sys.path.insert(0, REPO)
    from benchmarks import serving  # pylint: disable=g-import-not-at-top
    from mnist_cnn import predict  # pylint: disable=g-import-not-at-top
    version_dir = predict.resolve_export(export_dir)
    self.base = tempfile.mkdtemp(prefix='serving_abuse_')
    shutil.copytree(version_dir, os.path.join(self.base, '1'))
    self._server = serving.ServerProcess(
        self.base, '--file_system_poll_wait_seconds=0.2',
        '--header_timeout_s=%g' % header_timeout_s, *extra)
    self.process, self.port, self.grpc_port, self.log = (
        self._server.process, self._server.port, self._server.grpc_port, self._server.log)

  def stop(self):
    self._server.stop()
    shutil.rmtree(self.base, ignore_errors=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--export_dir', help='an AlexNet export; the probe starts its own server')
  parser.add_argument('--port', type=int, help='port of a server already on 127.0.0.1')
  parser.add_argument('--grpc_port', type=int,
                      help='its gRPC port, for the gRPC cases (none without it)')
  parser.add_argument('--pid', type=int, help='its process id, for its memory')
  parser.add_argument('--header_timeout_s', type=float, default=10.0,
                      help='the server\'s --header_timeout_s')
  parser.add_argument('--max_images', type=int, default=1000,
                      help='the server\'s --max_images_per_request')
  parser.add_argument('--quick', action='store_true', help='small counts, for a smoke test')
  parser.add_argument('--json', help='also write the rows to this file')
  args = parser.parse_args(argv)
  if bool(args.export_dir) == bool(args.port):
    parser.error('give --export_dir or --port (with --pid)')
  server = None
  if args.export_dir:
    server = OwnServer(args.export_dir, args.header_timeout_s)
    port, pid, base = server.port, server.process.pid, server.base
    grpc_port = server.grpc_port
  else:
    port, pid, base, grpc_port = args.port, args.pid or 0, None, args.grpc_port
  try:
    rows = Probe(port, pid, args.quick, args.header_timeout_s, base, grpc_port).run(
        args.max_images)
  finally:
    if server:
      server.stop()
  print(table(rows))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == '__main__':
  main()
