"""The server's memory: what the garbage collector walks, and what glibc gives back.

A server that takes a new version every day must end each swap where it began; the measures
and their figures are in docs/reliability.md (Version swaps).
"""

import asyncio
import contextlib
import gc
import os


def _load_libc():
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    libc = ctypes.CDLL('libc.so.6')
    return libc if hasattr(libc, 'malloc_trim') and hasattr(libc, 'mallopt') else None
  except OSError:  # not glibc
    return None


_LIBC = _load_libc()
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
LOAD_MMAP_THRESHOLD_BYTES = 128 * 1024
SERVE_MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024


def map_large_blocks():
  """Fixes glibc's thresholds for serving; returns False where it cannot (not glibc, or the
  user set MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_), and then loading() does nothing.

  glibc maps blocks of 128 KiB or more on their own, but raises that threshold to the size of
  each mapped block freed (up to 32 MiB): once the first version's weights and load-time copies
  were freed, the next version's came from the heap, whose holes stay. Over 100 swaps of a
  40-step AlexNet export RSS wandered between 630 and 751 MB (612 after the first load).
  What a version keeps is allocated while it loads, so loads map every block of 128 KiB or
  more (see loading()): 583 -> 590 MB over 300 swaps. Requests allocate from the heap, with
  blocks of up to 4 MiB and a 64 MiB trim threshold (glibc's own upper values): fixed at 128
  KiB for requests too, the trim threshold fixed with it returned the heap's top after each call
  for the next one to fault in again (batch-1 p50 +13% AlexNet, +18% ResNet-18); fixed at 4 MiB
  for loads too, RSS wandered again (591 -> 642 MB over 33 AlexNet swaps).
  """
  global _TUNED
  if _LIBC is None or any(name in os.environ for name in ('MALLOC_MMAP_THRESHOLD_',
                                                          'MALLOC_TRIM_THRESHOLD_')):
    return False
  _TUNED = bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) and
                _LIBC.mallopt(_M_MMAP_THRESHOLD, SERVE_MMAP_THRESHOLD_BYTES))
  return _TUNED


_TUNED = False


@contextlib.contextmanager
def loading():
  """While a version loads (after map_large_blocks), blocks of 128 KiB or more are mapped: its
  weights and every load-time copy go back to the system when freed. The threshold is the
  process's: requests answered during a load map their large blocks too, a little slower."""
  if _TUNED:
    _LIBC.mallopt(_M_MMAP_THRESHOLD, LOAD_MMAP_THRESHOLD_BYTES)
  try:
    yield
  finally:
    if _TUNED:
      _LIBC.mallopt(_M_MMAP_THRESHOLD, SERVE_MMAP_THRESHOLD_BYTES)


def release_memory():
  """Frees garbage and hands the pages back to the system: after a large request, and after a
  version loads (freezing and optimising its graph peaks at several times the final size).

  A 16 MiB request's JSON is ~80 MB of Python lists. A refused request's exception traceback
  holds them in a reference cycle, and having lived through the parse they sit in the oldest
  garbage-collector generation, which is rarely collected; once freed, glibc keeps the pages in
  its per-thread arenas. Two such requests left the server 25% larger for good (592 -> 737 MB).
  """
  gc.collect()
  if _LIBC is not None:
    _LIBC.malloc_trim(0)


# After a request this large (its body or message), freed memory is handed back.
RELEASE_AFTER_BYTES = 1024 * 1024


def release_after_request(size, executor=None):
  """Schedules release_memory on `executor` 0.2 s from now if a request of `size` bytes is
  large enough for it: later, once the request's frames and tasks are gone too. Called on the
  event loop by the REST and gRPC handlers."""
  if size >= RELEASE_AFTER_BYTES:
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, loop.run_in_executor, executor, release_memory)


def keep_out_of_collections():
  """Moves every object alive now out of the garbage collector's way (gc.freeze).

  A loaded graph is hundreds of thousands of long-lived Python objects; the JSON of every
  request allocates enough to trigger collections that would walk them all again (measured:
  JSON parsing 1.2 -> 0.1 ms with them frozen). Frozen objects are never collected, though, and
  a graph is full of reference cycles: frozen with the version that served it, a retired
  version's graph stayed in memory for good (+55 MB per AlexNet swap). So only what is
  served is frozen: the manager calls this after a load with nothing left to retire, and after
  each retirement, once `collect_all` has freed the retired version.
  """
  gc.freeze()


def collect_all():
  """Collects everything, frozen objects included, and returns the freed pages to the system."""
  gc.unfreeze()
  release_memory()
