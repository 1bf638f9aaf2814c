"""What the export, serving and benchmark tests share: the REST server as a process, versions
published the way exports appear, test images."""

import base64
import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import tensorflow as tf

from mnist_cnn.serving import models
from official.utils import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
BYTES_SIGNATURE = export.alternative_signature(export.IMAGE_BYTES_INPUT)


def images(count, seed=0, shape=(28, 28, 1)):
  return np.random.RandomState(seed).rand(count, *shape).astype(np.float32)


def png(seed, shape=(28, 28, 1)):
  pixels = np.random.RandomState(seed).randint(0, 256, size=shape).astype(np.uint8)
  return tf.io.encode_png(pixels).numpy()


def b64(data):
  return {'b64': base64.b64encode(data).decode('ascii')}


class Server(object):
  """`python -m mnist_cnn.serve` in a subprocess on a free port."""

  def __init__(self, base_path, *extra, base_path_flag=True):
    """base_path_flag=False: base_path is only kept (extra names a --model_config_file)."""
    self.base_path = base_path
    models_flag = ['--model_base_path=' + str(base_path)] if base_path_flag else []
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'mnist_cnn.serve'] + models_flag +
        ['--port=0', '--rest_api_port=0', '--file_system_poll_wait_seconds=0.2'] + list(extra),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=REPO)
    self.lines = queue.Queue()
    self.output = []
    threading.Thread(target=self._read, daemon=True).start()
    self.port = self.grpc_port = None  # REST's and gRPC's
    deadline = time.time() + 120
    while (self.port is None or self.grpc_port is None) and time.time() < deadline:
      try:
        line = self.lines.get(timeout=1)
      except queue.Empty:
        assert self.process.poll() is None, ''.join(self.output)
        continue
      match = re.search(r'REST API at http://127\.0\.0\.1:(\d+)/', line)
      if match:
        self.port = int(match.group(1))
      match = re.search(r'gRPC API at 127\.0\.0\.1:(\d+) ', line)
      if match:
        self.grpc_port = int(match.group(1))
    assert self.port and self.grpc_port, ''.join(self.output)

  def _read(self):
    for line in self.process.stdout:
      self.output.append(line)
      self.lines.put(line)

  def _exchange(self, method, path, body=None, connection=None):
    """(status, body bytes); a connection of its own unless one is given."""
    own = connection is None
    connection = connection or http.client.HTTPConnection('127.0.0.1', self.port, timeout=60)
    try:
      if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
      connection.request(method, path, body=body)
      response = connection.getresponse()
      return response.status, response.read()
    finally:
      if own:
        connection.close()

  def request(self, method, path, body=None, connection=None):
    """Returns (status, parsed JSON body)."""
    status, data = self._exchange(method, path, body, connection)
    return status, json.loads(data)

  def raw_get(self, path):
    """(status, body text) of a GET."""
    status, data = self._exchange('GET', path)
    return status, data.decode('utf-8')

  def post_in_one_write(self, path, body):
    """Status of a POST whose headers and body go out in one write, so the whole request is
    in the server's buffer when its handler starts (http.client writes them apart)."""
    body = json.dumps(body).encode('utf-8')
    head = ('POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
            'Content-Length: %d\r\nConnection: close\r\n\r\n' % (path, len(body)))
    with socket.create_connection(('127.0.0.1', self.port), timeout=60) as sock:
      sock.sendall(head.encode('ascii') + body)
      response = http.client.HTTPResponse(sock)
      try:
        response.begin()
        return response.status
      finally:
        response.close()

  def predict(self, body, path='/v1/models/mnist:predict', connection=None):
    return self.request('POST', path, body, connection)

  def stop(self):
    if self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM)
      self.process.wait(timeout=60)
    return self.process.returncode


def publish(source, base, version):
  """Copies an export in as a new version the way exports appear: whole, by a rename."""
  staging = base / ('.tmp-%d' % version)
  shutil.copytree(source, str(staging))
  os.rename(str(staging), str(base / str(version)))


def in_process(version_dir, signature_name, feeds):
  loaded = models.LoadedVersion(0, version_dir)
  try:
    return loaded.run(loaded.signatures[signature_name], feeds)
  finally:
    loaded.close_when_drained()


def wait_for_version(server, version, timeout=60):
  deadline = time.time() + timeout
  while time.time() < deadline:
    status, body = server.request('GET', '/v1/models/mnist')
    if status == 200 and body['model_version_status'][0]['version'] == version:
      return
    time.sleep(0.1)
  raise AssertionError('version %s never served; log:\n%s' % (version, ''.join(server.output)))
