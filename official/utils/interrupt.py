"""Ctrl-C that stops a training loop between steps instead of inside one.

A KeyboardInterrupt raised at an arbitrary point can land inside a checkpoint write or inside
TensorFlow's own Python code and leave the process hanging; with StopOnInterrupt the first
SIGINT only sets a flag, the loop checks it after each step, saves and stops. A second SIGINT
interrupts at once, as usual.
"""

import signal
import threading


class StopOnInterrupt(object):
  """Context manager: `.requested` turns True at the first SIGINT while it is active."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    print('\nStopping after this step (Ctrl-C again to stop at once).', flush=True)

  def __enter__(self):
    # Signal handlers can only be set from the main thread; elsewhere Ctrl-C is not ours.
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None
    return False
