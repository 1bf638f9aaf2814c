"""gRPC's TensorProto <-> numpy, with the limits json_tensors.py keeps for REST checked before
any array is built.

tf.make_ndarray is not used on requests: a proto declaring shape [10**9] with one float_val
would be expanded to 4 GB there (a single value fills the shape, as in TensorFlow). Here the
declared shape is checked against the limits first, then the values against the shape.
"""

import numpy as np
import tensorflow as tf

from mnist_cnn.serving import image_headers
from mnist_cnn.serving import json_tensors
from mnist_cnn.serving import models

# The TensorProto field holding each dtype's values when tensor_content is empty.
_VALUE_FIELDS = {
    tf.float32: 'float_val', tf.float64: 'double_val', tf.int32: 'int_val',
    tf.int16: 'int_val', tf.int8: 'int_val', tf.uint8: 'int_val', tf.uint16: 'int_val',
    tf.int64: 'int64_val', tf.bool: 'bool_val', tf.uint32: 'uint32_val',
    tf.uint64: 'uint64_val', tf.string: 'string_val', tf.float16: 'half_val',
    tf.bfloat16: 'half_val'}


def _shape(proto, where):
  if proto.tensor_shape.unknown_rank:
    raise models.bad_request('%s: the tensor has no shape (unknown_rank)' % where)
  shape = tuple(d.size for d in proto.tensor_shape.dim)
  if any(size < 0 for size in shape):
    raise models.bad_request('%s: shape %s has a negative dimension' % (where, list(shape)))
  if len(shape) > json_tensors.MAX_RANK:
    raise models.bad_request('%s: %d dimensions; at most %d' % (where, len(shape),
                                                                json_tensors.MAX_RANK))
  return shape


def to_array(proto, spec, where, limits, max_bytes):
  """A request TensorProto -> numpy array of the input's dtype, or a 400 (INVALID_ARGUMENT)
  saying what is wrong: another dtype, a shape over the limits, values that do not fill it."""
  try:
    dtype = tf.dtypes.as_dtype(proto.dtype)
  except TypeError:  # DT_INVALID or a number TensorFlow has no dtype for
    dtype = None
  if dtype != spec.dtype:
    raise models.bad_request('%s: expects a %s tensor, the request holds %s' % (
        where, spec.dtype.name, dtype.name if dtype is not None else 'dtype %d' % proto.dtype))
  shape = _shape(proto, where)
  if shape and shape[0] > limits.max_images_per_request:
    raise models.bad_request('%s holds %d instances; this server takes at most %d per request '
                             '(--max_images_per_request): split it' % (
                                 where, shape[0], limits.max_images_per_request))
  count = int(np.prod(shape, dtype=np.float64)) if shape else 1
  if dtype == tf.string:
    return _strings(proto, shape, count, where, limits)
  np_dtype = np.dtype(dtype.as_numpy_dtype)  # tensor_content is little-endian, as this CPU
  if count * np_dtype.itemsize > max_bytes:
    raise models.bad_request('%s: shape %s is %d bytes; this server takes at most %d '
                             '(--max_request_bytes)' % (where, list(shape),
                                                        count * np_dtype.itemsize, max_bytes))
  if proto.tensor_content:
    if len(proto.tensor_content) != count * np_dtype.itemsize:
      raise models.bad_request('%s: tensor_content holds %d bytes; shape %s of %s needs %d' % (
          where, len(proto.tensor_content), list(shape), dtype.name, count * np_dtype.itemsize))
    return np.frombuffer(proto.tensor_content, np_dtype).reshape(shape)
  values = getattr(proto, _VALUE_FIELDS[dtype])
  _check_count(len(values), count, shape, where)
  if dtype in (tf.float16, tf.bfloat16):  # half_val holds the 16-bit patterns
    array = np.array(values, dtype=np.uint16).view(dtype.as_numpy_dtype)
  else:
    try:
      array = np.array(values, dtype=dtype.as_numpy_dtype)
    except OverflowError as e:
      raise models.bad_request('%s: %s' % (where, e)) from None
  return np.broadcast_to(array, shape).copy() if len(values) == 1 else array.reshape(shape)


def _check_count(given, count, shape, where):
  """TensorFlow fills a shape from one value; anything else must give every value."""
  if given != count and not (given == 1 and count > 0):
    raise models.bad_request('%s: %d values for shape %s (%d elements)' % (
        where, given, list(shape), count))


def _strings(proto, shape, count, where, limits):
  values = proto.string_val
  _check_count(len(values), count, shape, where)
  if count > limits.max_images_per_request * 64:
    raise models.bad_request('%s: %d strings; this server takes at most %d' % (
        where, count, limits.max_images_per_request * 64))
  for index, data in enumerate(values):
    try:
      image_headers.check_pixels(data, limits.max_image_pixels)
    except image_headers.ImageSizeError as e:
      raise models.bad_request('%s[%d]: %s' % (where, index, e)) from None
  array = np.empty(len(values), dtype=object)
  array[:] = list(values)
  return np.broadcast_to(array, shape).copy() if len(values) == 1 else array.reshape(shape)


def fill(proto, array):
  """Writes a response array into a TensorProto (numbers as tensor_content, strings as
  string_val), as tf.make_tensor_proto would and without its copy into a proto of another
  pool."""
  array = np.asarray(array)
  if array.dtype == object or array.dtype.kind in 'SU':
    proto.dtype = tf.string.as_datatype_enum
    proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode('utf-8')
                            for v in array.reshape(-1))
  else:
    proto.dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    proto.tensor_content = np.ascontiguousarray(array).tobytes()
  for size in array.shape:
    proto.tensor_shape.dim.add(size=size)
