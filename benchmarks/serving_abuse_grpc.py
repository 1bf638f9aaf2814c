"""The gRPC counterparts of serving_abuse.py's hostile cases: the same payloads as Predict
requests, with the gRPC code TF Serving gives for the verdict REST gives (400 ->
INVALID_ARGUMENT, 404 -> NOT_FOUND, 413 -> RESOURCE_EXHAUSTED). Cases REST has and gRPC
cannot have (JSON nesting, malformed HTTP) are left out; gRPC's own are added: 33 dimensions,
a shape of 10^9 elements from one value, a tensor_content of the wrong length, and bytes that
are no protobuf (INVALID_ARGUMENT, as REST's 400 for a body that is no JSON). Run by
serving_abuse.py when the server has a gRPC port.
"""

import concurrent.futures
import time

import grpc
import numpy as np
import tensorflow as tf

from mnist_cnn.serving import proto_tensors
from mnist_cnn.serving import tfs_protos

BYTES_SIGNATURE = 'image_bytes:serving_default'


def predict_request(inputs, name='mnist', signature_name='', version=None):
  """A serialized PredictRequest: inputs maps names to arrays or TensorProtos of our pool."""
  request = tfs_protos.PredictRequest()
  request.model_spec.name = name
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = version
  for key, value in inputs.items():
    if isinstance(value, np.ndarray):
      proto_tensors.fill(request.inputs[key], value)
    else:
      request.inputs[key].CopyFrom(value)
  return request.SerializeToString()


def _tensor(dtype, shape, **values):
  proto = tfs_protos.TensorProto(dtype=dtype.as_datatype_enum, **values)
  for size in shape:
    proto.tensor_shape.dim.add(size=size)
  return proto


class GrpcProbe(object):
  """Runs the gRPC cases against 127.0.0.1:port, adding rows through `row` (Probe.row)."""

  def __init__(self, port, row, rss, quick=False, header_timeout_s=10.0):
    self.channel = grpc.insecure_channel('127.0.0.1:%d' % port, options=[
        ('grpc.max_send_message_length', 64 * 1024 * 1024)])
    self.predict = self.channel.unary_unary(
        '/tensorflow.serving.PredictionService/Predict', request_serializer=None,
        response_deserializer=tfs_protos.PredictResponse.FromString)
    self.row = row
    self.rss = rss
    self.quick = quick
    self.port = port
    self.header_timeout_s = header_timeout_s

  def call(self, request_bytes):
    """(code name, details or '', response or None, seconds)."""
    started = time.monotonic()
    try:
      response = self.predict(request_bytes, timeout=120)
      return 'OK', '', response, time.monotonic() - started
    except grpc.RpcError as e:
      return e.code().name, e.details() or '', None, time.monotonic() - started

  def one(self, case, expected, request_bytes, want=None):
    before = self.rss()
    code, details, _, seconds = self.call(request_bytes)
    self.row('gRPC: ' + case, expected, '%s %s' % (code, details[:60]), seconds, before,
             code == expected and (want is None or want in details))

  def concurrent(self, case, expected, requests):
    before = self.rss()
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
      results = list(pool.map(self.call, requests))
    self.row('gRPC: ' + case, 'all ' + expected, ', '.join(sorted(r[0] for r in results)),
             max(r[3] for r in results), before, all(r[0] == expected for r in results))

  def bombs(self, png, gif):
    def images(*blobs):
      return predict_request({'image_bytes': _tensor(tf.string, [len(blobs)],
                                                     string_val=list(blobs))},
                             signature_name=BYTES_SIGNATURE)
    self.one('PNG bomb in a string tensor', 'INVALID_ARGUMENT', images(png), want='pixels')
    self.one('GIF bomb in a string tensor', 'INVALID_ARGUMENT', images(gif), want='pixels')
    self.one('two PNG bombs in one request', 'INVALID_ARGUMENT', images(png, png),
             want='pixels')
    self.concurrent('four concurrent PNG bombs', 'INVALID_ARGUMENT', [images(png)] * 4)

  def malformed(self, max_images):
    image = np.random.RandomState(0).rand(1, 784).astype(np.float32)
    short = _tensor(tf.float32, [1, 784], tensor_content=image.tobytes()[:-4])
    cases = [
        ('unknown model', 'NOT_FOUND', predict_request({'images': image}, name='nope')),
        ('unknown version', 'NOT_FOUND', predict_request({'images': image}, version=99)),
        ('float64 for a float32 input', 'INVALID_ARGUMENT',
         predict_request({'images': image.astype(np.float64)})),
        ('strings for a float32 input', 'INVALID_ARGUMENT',
         predict_request({'images': _tensor(tf.string, [1], string_val=[b'0.5'])})),
        ('33 dimensions', 'INVALID_ARGUMENT',
         predict_request({'images': _tensor(tf.float32, [1] * 33, float_val=[0.5])})),
        ('one value filling a shape of 1 x 10^9', 'INVALID_ARGUMENT',
         predict_request({'images': _tensor(tf.float32, [1, 10 ** 9], float_val=[0.5])})),
        ('tensor_content 4 bytes short', 'INVALID_ARGUMENT', predict_request({'images': short})),
        ('%d images (one over the most allowed)' % (max_images + 1), 'INVALID_ARGUMENT',
         predict_request({'images': np.zeros((max_images + 1, 784), np.float32)})),
        ('a message over 16 MiB', 'RESOURCE_EXHAUSTED',
         predict_request({'images': np.zeros((5500, 784), np.float32)})),
        ('bytes that are no protobuf', 'INVALID_ARGUMENT', b'\xff' * 64),
    ]
    for case, expected, request_bytes in cases:
      self.one(case, expected, request_bytes)

  def mixed_clients(self):
    """Clients sending valid and invalid requests at once: each valid one gets its own image's
    class (as REST's case, no answer meant for another client)."""
    threads, per_thread = (4, 20) if self.quick else (16, 200)
    images = [np.random.RandomState(i).rand(1, 784).astype(np.float32) for i in range(32)]
    requests = [predict_request({'images': image}) for image in images]
    truth = [int(tf.make_ndarray(self.call(r)[2].outputs['classes'])[0]) for r in requests]
    invalid = [b'\xff' * 8, predict_request({'images': np.zeros((1, 5), np.float32)}),
               predict_request({'images': images[0].astype(np.float64)}),
               predict_request({'images': images[0]}, name='nope')]
    before = self.rss()

    def client(index):
      wrong = server_errors = 0
      for n in range(per_thread):
        k = (index * 7 + n) % len(images)
        bad = n % 4 == 3
        code, _, response, _ = self.call(invalid[(index + n) % len(invalid)] if bad
                                         else requests[k])
        server_errors += code in ('INTERNAL', 'UNKNOWN')
        if bad:
          wrong += code == 'OK'
        else:
          wrong += code != 'OK' or int(tf.make_ndarray(response.outputs['classes'])[0]) != (
              truth[k])
      return wrong, server_errors

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      results = list(pool.map(client, range(threads)))
    wrong, server_errors = sum(r[0] for r in results), sum(r[1] for r in results)
    self.row('gRPC: %d clients x %d, a quarter invalid' % (threads, per_thread),
             '0 wrong, 0 INTERNAL', '%d wrong, %d INTERNAL' % (wrong, server_errors),
             '%.0f total' % ((time.monotonic() - started) * 1000), before,
             wrong == 0 and server_errors == 0)

  def large_requests(self, max_images):
    """Two requests of the most images allowed and one image meanwhile: the small one is not
    held behind them (as REST's case)."""
    big = predict_request({'images': np.random.RandomState(0).rand(
        max_images, 784).astype(np.float32)})
    small = predict_request({'images': np.zeros((1, 784), np.float32)})
    before = self.rss()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      bigs = [pool.submit(self.call, big) for _ in range(2)]
      time.sleep(0.3)
      code, _, _, seconds = self.call(small)
      results = [f.result() for f in bigs]
    self.row('gRPC: two requests of %d images + one image meanwhile' % max_images,
             'big: OK; small: OK within 2 s', 'big: %s in %.1f s; small: %s in %.0f ms' % (
                 ', '.join(r[0] for r in results), max(r[3] for r in results), code,
                 seconds * 1000), seconds, before,
             all(r[0] == 'OK' for r in results) and code == 'OK' and seconds < 2.0)

  def stalled(self):
    """Connections that never finish HTTP/2's preface are closed within the header timeout
    (gRPC's handshake timeout is set to it), and others are served meanwhile."""
    from benchmarks import serving_abuse  # pylint: disable=g-import-not-at-top
    count = 50 if self.quick else 500
    before = self.rss()
    sockets, opened = serving_abuse.open_stalled(self.port, count, b'PRI * HTTP/2.0\r\n')
    request = predict_request({'images': np.zeros((1, 784), np.float32)})
    calls = [self.call(request) for _ in range(10)]
    closed_at = serving_abuse.wait_closed(sockets, opened, self.header_timeout_s + 10)
    slowest = max(closed_at.values()) if closed_at else float('nan')
    latency = sorted(c[3] for c in calls)[len(calls) // 2]
    served = all(c[0] == 'OK' for c in calls)
    self.row('gRPC: %d stalled connections (preface never ends)' % count,
             'others served; all closed within the header timeout (%g s)' % (
                 self.header_timeout_s), 'others: %s, p50 %.0f ms; %d/%d closed, last after '
             '%.1f s' % ('served' if served else 'NOT served', latency * 1000, len(closed_at),
                         count, slowest), latency, before,
             served and len(closed_at) == count and slowest <= self.header_timeout_s + 1.5)

  def run(self, png, gif, max_images):
    self.mixed_clients()
    self.bombs(png, gif)
    self.malformed(max_images)
    self.large_requests(50 if self.quick else max_images)
    self.stalled()
    self.channel.close()
