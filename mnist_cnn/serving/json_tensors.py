"""TF Serving's REST JSON <-> tensors: row format (`instances`) and columnar format (`inputs`),
binary values as {"b64": ...}, responses in TensorFlow's float text (tensorflow/serving,
api_rest.md). The limits one request may ask of the server are checked here, before any
tensor is built.
"""

import base64
import collections
import math

import numpy as np
import orjson
import tensorflow as tf

from mnist_cnn.serving import image_headers

from mnist_cnn.serving import models

# numpy's limit on dimensions: deeper JSON lists cannot be a tensor.
MAX_RANK = 32

# What one request may ask of the server (serve.py's flags; README "Reliability").
Limits = collections.namedtuple('Limits', ['max_images_per_request', 'max_image_pixels'])
DEFAULT_LIMITS = Limits(max_images_per_request=1000, max_image_pixels=2048 * 2048)


_FLOAT_LEAVES = frozenset([int, float])
_INTEGER_LEAVES = frozenset([int])


def _leaf_json(value):
  """A JSON value as the client wrote it, cut to 40 characters, for error messages."""
  try:
    text = orjson.dumps(value).decode('utf-8', 'replace')
  except (TypeError, orjson.JSONEncodeError):
    text = repr(value)
  return text if len(text) <= 40 else text[:37] + '...'


def _check_nesting(value, max_depth, leaf_types, dtype_name, where):
  """Walks nested JSON lists without recursion; raises a 400 naming the problem.

  Lists may nest at most max_depth deep (numpy's limit). With leaf_types, every leaf must
  be a JSON number of those Python types: true, null, "0.5" or objects are refused, as TF
  Serving refuses them, where numpy would quietly turn them into floats.
  """
  stack = [(value, 0)]
  while stack:
    item, depth = stack.pop()
    if type(item) is not list:  # pylint: disable=unidiomatic-typecheck
      if leaf_types is not None and type(item) not in leaf_types:
        raise models.bad_request('%s: %s is not of expected type: %s' % (
            where, _leaf_json(item), dtype_name))
      continue
    if depth >= max_depth:
      raise models.bad_request(
          '%s: lists nest more than %d deep, deeper than any tensor can be' % (where, max_depth))
    if leaf_types is not None and item and set(map(type, item)) <= leaf_types:
      continue  # a row of numbers: the common case, checked without a Python loop
    stack.extend((child, depth + 1) for child in item)


_BASE64_WHITESPACE = str.maketrans('', '', ' \t\r\n')


def _b64decode(text):
  """Standard base64 as absl's Base64Unescape takes it (and so TF Serving): line breaks (what
  `base64` prints without -w0) and missing '=' padding are fine, other characters are not."""
  text = text.translate(_BASE64_WHITESPACE)
  return base64.b64decode(text + '=' * (-len(text) % 4), validate=True)


def _decode_b64(value, where, max_image_pixels):
  """Replaces {"b64": "..."} objects in a nested list by bytes, and str by utf-8 bytes; images
  over max_image_pixels are refused from their headers, before anything decodes them."""
  if isinstance(value, list):
    return [_decode_b64(v, where, max_image_pixels) for v in value]
  if isinstance(value, dict):
    if set(value) != {'b64'} or not isinstance(value['b64'], str):
      raise models.bad_request('%s: a binary value must be an object with one key "b64" '
                               'holding a base64 string' % where)
    try:
      data = _b64decode(value['b64'])
    except (ValueError, TypeError):
      raise models.bad_request('%s: "b64" does not hold valid base64 data' % where) from None
  elif isinstance(value, str):
    data = value.encode('utf-8')
  else:
    raise models.bad_request('%s: expected a string or {"b64": ...}, got %s' % (
        where, _leaf_json(value)))
  try:
    image_headers.check_pixels(data, max_image_pixels)
  except image_headers.ImageSizeError as e:
    raise models.bad_request('%s: %s' % (where, e)) from None
  return data


def _float_array(value, np_dtype, max_depth):
  """The common request, a well-formed tensor of JSON numbers, as a float array; None for
  anything else, which the checked path then refuses with its message.

  numpy builds the nested lists into an object array and the leaf types are checked over it
  in C: a 28x28x1 image in 113 us against 343 us for the checked path (which walks the lists
  in Python), the largest cost of a one-image request in the server.
  """
  if type(value) is not list:  # pylint: disable=unidiomatic-typecheck
    return None
  try:
    objects = np.array(value, dtype=object)
  except (ValueError, RecursionError):
    return None
  if objects.ndim > max_depth or not set(map(type, objects.flat)) <= _FLOAT_LEAVES:
    return None  # ragged or too deep (lists left as leaves), or leaves of other types
  try:
    return objects.astype(np_dtype)
  except (OverflowError, ValueError, TypeError):
    return None


def _to_array(value, spec, where, limits, instance=False):
  """A JSON value -> numpy array of the input's dtype, or a 400 saying what is wrong."""
  max_depth = MAX_RANK - (1 if instance else 0)
  if spec.dtype == tf.string:
    _check_nesting(value, max_depth, None, spec.dtype.name, where)
    decoded = _decode_b64(value, where, limits.max_image_pixels)
    try:
      return np.array(decoded, dtype=object)
    except ValueError:
      raise models.bad_request('%s: nested lists of different lengths' % where) from None
  if spec.dtype.is_floating:
    fast = _float_array(value, spec.dtype.as_numpy_dtype, max_depth)
    if fast is not None:
      return fast
  if spec.dtype.is_integer:
    leaves = _INTEGER_LEAVES
  elif spec.dtype.is_floating:
    leaves = _FLOAT_LEAVES
  else:
    leaves = _FLOAT_LEAVES | {bool} if spec.dtype == tf.bool else None
  _check_nesting(value, max_depth, leaves, spec.dtype.name, where)
  try:
    return np.array(value, dtype=spec.dtype.as_numpy_dtype)
  except (ValueError, TypeError, OverflowError) as e:
    raise models.bad_request('%s: not a %s tensor (%s)' % (where, spec.dtype.name, e)) from None


def _check_rows(count, limits, where):
  if count > limits.max_images_per_request:
    raise models.bad_request('%s holds %d instances; this server takes at most %d per request '
                             '(--max_images_per_request): split it' % (
                                 where, count, limits.max_images_per_request))


def _is_named(instance):
  """An instance naming its inputs: an object other than a bare {"b64": ...}."""
  return isinstance(instance, dict) and not set(instance) <= {'b64'}


def parse_request(body, signature, limits=DEFAULT_LIMITS):
  """A predict request body (parsed JSON) -> (feeds, row_format, rows).

  rows is the common batch size of the feeds, or None when they disagree or one is a scalar
  (columnar requests may feed inputs of different first dimensions; those are never merged
  with others). Messages follow TF Serving's json_tensor.cc where it has one.
  """
  if not isinstance(body, dict):
    raise models.bad_request('the request body must be a JSON object')
  has_instances, has_inputs = 'instances' in body, 'inputs' in body
  if has_instances == has_inputs:
    raise models.bad_request(
        'Missing \'inputs\' or \'instances\' key' if not has_instances else
        'Request body has both \'inputs\' and \'instances\'; give one')
  if has_instances:
    feeds = _row_feeds(body['instances'], signature, limits)
  else:
    feeds = _columnar_feeds(body['inputs'], signature, limits)
  batch_sizes = {a.shape[0] if a.ndim else None for a in feeds.values()}
  rows = batch_sizes.pop() if len(batch_sizes) == 1 else None
  return feeds, has_instances, rows


def _row_feeds(instances, signature, limits):
  """Row format: a list of instances, each one example (an object naming every input, or a
  bare value when the signature has one input)."""
  names = sorted(signature.inputs)
  if not isinstance(instances, list) or not instances:
    raise models.bad_request('"instances" must be a non-empty list')
  _check_rows(len(instances), limits, '"instances"')
  named = _is_named(instances[0])
  for index, instance in enumerate(instances):
    if named and not isinstance(instance, dict):
      raise models.bad_request('Expecting object but got list at item %d of input list' % index)
    if not named and _is_named(instance):
      raise models.bad_request(
          'Expecting value/list but got object at item %d of input list' % index)
    if named and set(instance) != set(names):
      raise models.bad_request('instances[%d] names %s; the signature\'s inputs are %s' % (
          index, sorted(instance), names))
  if len(names) > 1 and not named:
    raise models.bad_request('this signature has inputs %s: every instance must be an object '
                             'naming all of them' % names)
  feeds = {}
  for name in names:
    arrays = [_to_array(instance[name] if named else instance, signature.inputs[name],
                        'instances[%d]' % index, limits, instance=True)
              for index, instance in enumerate(instances)]
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
      raise models.bad_request('instances of input %r have different shapes %s; all must have '
                               'the same' % (name, sorted(shapes)))
    feeds[name] = np.stack(arrays)
  return feeds


def _columnar_feeds(inputs, signature, limits):
  """Columnar format: an object of one tensor per input (or a bare tensor for one input)."""
  names = sorted(signature.inputs)
  if _is_named(inputs):
    missing = set(names) - set(inputs)
    if missing:  # keys the signature does not have are ignored, as TF Serving does
      raise models.bad_request('"inputs" lacks %s; the signature\'s inputs are %s' % (
          sorted(missing), names))
    values = inputs
  elif len(names) == 1:
    values = {names[0]: inputs}
  else:
    raise models.bad_request('this signature has inputs %s: "inputs" must be an object naming '
                             'all of them' % names)
  feeds = {}
  for name in names:
    if isinstance(values[name], list):
      _check_rows(len(values[name]), limits, 'inputs[%r]' % name)
    feeds[name] = _to_array(values[name], signature.inputs[name], 'inputs[%r]' % name, limits)
  return feeds


def _float32_text(value):
  """A float32 as TF Serving writes it: %g's 6 significant digits, or 9 where 6 do not give the
  same float32 back; a whole number keeps a '.0'; non-finite values are NaN/Infinity tokens."""
  if not math.isfinite(value):
    return 'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')
  text = '%.6g' % value
  if np.float32(text) != np.float32(value):
    text = '%.9g' % value
  if text.lstrip('-').isdigit():
    text += '.0'
  return text


def _value_text(value):
  """JSON text of a value from ndarray.tolist(); non-finite floats as NaN/Infinity tokens."""
  if isinstance(value, float) and not math.isfinite(value):
    return _float32_text(value)
  if isinstance(value, list):
    return '[%s]' % ','.join(_value_text(v) for v in value)
  return orjson.dumps(value).decode('utf-8')


def _array_text(array, name):
  """JSON text of one output tensor, TF Serving's way: float32 by _float32_text, strings as
  {"b64": ...} for outputs whose name ends in _bytes, else as UTF-8 text."""
  if array.dtype == object:
    if name.endswith('_bytes'):
      values = np.vectorize(lambda b: {'b64': base64.b64encode(b).decode('ascii')},
                            otypes=[object])(array).tolist()
    else:
      values = np.vectorize(lambda b: b.decode('utf-8', 'replace'), otypes=[object])(
          array).tolist()
    return orjson.dumps(values).decode('utf-8')
  if array.dtype == np.float32:
    if array.ndim == 0:
      return _float32_text(float(array))
    return '[%s]' % ','.join(_array_text(row, name) for row in array)
  values = array.tolist()
  if array.dtype.kind == 'f' and not np.isfinite(array).all():
    return _value_text(values)
  return orjson.dumps(values).decode('utf-8')


def format_response(outputs, row_format):
  """{output key: array} -> the response body (bytes) TF Serving gives for the request's format.

  Written by hand rather than by a JSON library: TF Serving's float32 text (6 significant
  digits) and its NaN/Infinity tokens are not what any of them write.
  """
  if row_format:
    sizes = {a.shape[0] if a.ndim else None for a in outputs.values()}
    if len(sizes) != 1 or None in sizes:
      raise models.bad_request(
          'outputs have different batch sizes; use the columnar "inputs" format')
    if len(outputs) == 1:
      (name, array), = outputs.items()
      return ('{"predictions":%s}' % _array_text(array, name)).encode('utf-8')
    count = sizes.pop()
    names = sorted(outputs)
    rows = ['{%s}' % ','.join('%s:%s' % (orjson.dumps(name).decode('utf-8'),
                                         _array_text(outputs[name][i], name))
                              for name in names) for i in range(count)]
    return ('{"predictions":[%s]}' % ','.join(rows)).encode('utf-8')
  if len(outputs) == 1:
    (name, array), = outputs.items()
    return ('{"outputs":%s}' % _array_text(array, name)).encode('utf-8')
  return ('{"outputs":{%s}}' % ','.join(
      '%s:%s' % (orjson.dumps(name).decode('utf-8'), _array_text(outputs[name], name))
      for name in sorted(outputs))).encode('utf-8')


