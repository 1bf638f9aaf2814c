"""Pixel counts of encoded images read from their headers, so bombs are refused before decoding.

A 389 KB PNG can declare 20000x20000 pixels: decoding it costs 29 s and 1.6 GB, and the
allocator keeps most of that for good. The formats the exports decode (PNG, JPEG, GIF, BMP)
all state their size in the first bytes (GIF per frame, and TensorFlow decodes every frame of
a GIF), so a few hundred microseconds of header reading bound what decoding may cost.
Bytes in no known format pass unchecked: the decoder refuses them on its own.
"""

import struct

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
JPEG_MAGIC = b'\xff\xd8'
GIF_MAGICS = (b'GIF87a', b'GIF89a')
BMP_MAGIC = b'BM'
# Start-of-frame markers, which carry a JPEG's size (C4, C8 and CC are not frames).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageSizeError(ValueError):
  """An image that is too large to decode, or whose header is cut short."""


def _png_size(data):
  if len(data) < 24 or data[12:16] != b'IHDR':
    raise ImageSizeError('PNG header is truncated (no IHDR chunk)')
  width, height = struct.unpack('>II', data[16:24])
  return width * height


def _jpeg_size(data):
  position = 2
  while position + 4 <= len(data):
    if data[position] != 0xFF:
      raise ImageSizeError('JPEG header is malformed at byte %d' % position)
    marker = data[position + 1]
    if marker == 0xFF:  # fill byte
      position += 1
      continue
    if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # no length field
      position += 2
      continue
    (length,) = struct.unpack('>H', data[position + 2:position + 4])
    if marker in _JPEG_FRAME_MARKERS:
      if position + 9 > len(data):
        break
      height, width = struct.unpack('>HH', data[position + 5:position + 9])
      return width * height
    if marker == 0xDA:  # scan data before any frame header
      break
    position += 2 + length
  raise ImageSizeError('JPEG header is truncated (no frame header)')


def _skip_gif_sub_blocks(data, position):
  while position < len(data):
    size = data[position]
    position += 1
    if size == 0:
      return position
    position += size
  return position


def _gif_size(data, max_pixels):
  if len(data) < 13:
    raise ImageSizeError('GIF header is truncated')
  width, height, packed = struct.unpack('<HHB', data[6:11])
  frame_pixels = width * height
  position = 13
  if packed & 0x80:  # global colour table
    position += 3 * 2 ** ((packed & 7) + 1)
  total = 0
  while position < len(data):
    block = data[position]
    if block == 0x2C:  # image descriptor: one frame, decoded at the screen's size or its own
      if position + 10 > len(data):
        break
      frame_width, frame_height, frame_packed = struct.unpack('<HHB', data[position + 5:
                                                                          position + 10])
      total += max(frame_pixels, frame_width * frame_height)
      if total > max_pixels:
        return total  # enough to refuse; no need to walk the rest
      position += 10
      if frame_packed & 0x80:  # local colour table
        position += 3 * 2 ** ((frame_packed & 7) + 1)
      position = _skip_gif_sub_blocks(data, position + 1)  # + 1: LZW minimum code size
    elif block == 0x21:  # extension
      position = _skip_gif_sub_blocks(data, position + 2)
    else:  # trailer, or bytes the decoder will refuse
      break
  return max(total, frame_pixels)


def _bmp_size(data):
  if len(data) < 26:
    raise ImageSizeError('BMP header is truncated')
  (header_size,) = struct.unpack('<I', data[14:18])
  if header_size == 12:  # BITMAPCOREHEADER: 16-bit sizes
    width, height = struct.unpack('<HH', data[18:22])
  else:
    width, height = struct.unpack('<ii', data[18:26])
  return abs(width) * abs(height)


def pixel_count(data, max_pixels):
  """Pixels that decoding `data` would produce (all frames of a GIF), or None if `data` is in
  no format this module knows.

  Args:
    data: encoded image bytes.
    max_pixels: a GIF's frames are counted only until they pass this.

  Raises:
    ImageSizeError: the header of a known format is cut short or malformed.
  """
  if data.startswith(PNG_MAGIC):
    return _png_size(data)
  if data.startswith(JPEG_MAGIC):
    return _jpeg_size(data)
  if data.startswith(GIF_MAGICS):
    return _gif_size(data, max_pixels)
  if data.startswith(BMP_MAGIC):
    return _bmp_size(data)
  return None


def check_pixels(data, max_pixels):
  """Raises ImageSizeError when `data` is an image of more than max_pixels pixels."""
  pixels = pixel_count(data, max_pixels)
  if pixels is not None and pixels > max_pixels:
    raise ImageSizeError('the image has %d pixels (all frames), more than the limit of %d; '
                         'send a smaller image' % (pixels, max_pixels))
