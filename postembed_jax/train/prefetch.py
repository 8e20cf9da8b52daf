"""Batches made ahead in a background thread while the device runs the current step.

The data side (``data/mixture.py``) makes batches on demand on the caller's thread; this runs it, and the
transfer of each batch to the devices (``transform``), one or two batches ahead of the step that consumes them,
so neither batch assembly nor a window's tokenisation nor the host-to-device copy holds up the device.

The data iterator's state moves ahead with the thread, but a checkpoint has to record the position of the last
batch a step consumed: each batch travels with the iterator state taken right after it was made, and
``get_state`` answers the state of the last batch handed out, so a resumed run continues exactly where the saved
step left off. An exception in the thread is raised again by the ``next`` call that would have received its
batch; ``close`` stops the thread (a preemption, an error, the end of the run).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_END = object()


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


class Prefetcher:
  """Iterates over ``iterator`` (which has ``get_state``), ``size`` batches ahead, each passed through
  ``transform`` in the thread; stops after ``count`` batches (None: never)."""

  def __init__(
    self, iterator, *, transform: Callable[[Any], Any] | None = None, size: int = 2, count: int | None = None
  ):
    if size < 1:
      raise ValueError(f"A prefetch queue holds at least one batch; got size={size}.")
    self._iterator, self._transform, self._count = iterator, transform, count
    self._state = iterator.get_state()  # before the thread moves it
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    made = 0
    try:
      while self._count is None or made < self._count:
        batch = next(self._iterator)
        state = self._iterator.get_state()
        if self._transform is not None:
          batch = self._transform(batch)
        if not self._put((state, batch)):
          return
        made += 1
      self._put(_END)
    except BaseException as error:  # noqa: BLE001 (handed to the consumer, which raises it)
      self._put(_Failure(error))

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if item is _END:
      self._queue.put(_END)  # later calls stop too
      raise StopIteration
    if isinstance(item, _Failure):
      self._queue.put(item)
      raise item.error
    self._state, batch = item
    return batch

  def get_state(self) -> dict[str, Any]:
    """The iterator state right after the last batch handed out: what a checkpoint of the step it fed saves."""
    return self._state

  def close(self) -> None:
    """Stops the thread and drops the batches made ahead; ``next`` then ends the iteration."""
    self._stop.set()
    while self._thread.is_alive():
      try:
        self._queue.get_nowait()
      except queue.Empty:
        self._thread.join(timeout=0.1)
    while not self._queue.empty():
      self._queue.get_nowait()
    self._queue.put(_END)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
