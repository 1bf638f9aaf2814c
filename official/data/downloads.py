"""Downloads that leave nothing half-written: a temporary file, an md5 check, then a rename.

The MNIST IDX files and the CIFAR-10 archive both come through download_file.
"""

import hashlib
import os
import shutil
import tempfile
import urllib.request


def md5(path):
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def download_file(url, dest, expected_md5, timeout, error=ValueError):
  """Downloads url to dest through a temporary file, checking expected_md5 when given.

  Raises:
    error (the caller's format error): the md5 differs; the message names dest and both sums,
      and nothing is left behind.
    urllib.error.URLError, OSError: the download failed (offline, say).
  """
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix='.download-')
  try:
    with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=timeout) as response:
      shutil.copyfileobj(response, out)
    actual = md5(tmp)
    if expected_md5 and actual != expected_md5:
      raise error('%s: downloaded from %s but its md5 %s is not the expected %s' %
                  (os.path.basename(dest), url, actual, expected_md5))
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
