"""The API's index in broker mode (``config.queue="nats"``): embed workers in other processes write the store, and
a thread here adds what they wrote to this process's index, polling the store's ``embed_seq`` every
``follow_interval_ms``.

Workers commit their batches one at a time under SQLite's write lock and each takes the next embed_seqs, so the
store's latest embed_seq, read before the changes after a watermark, covers every change up to it: a change is
never skipped, and one read twice is harmless (adding a present key replaces it). ``catch_up`` lets a reader
bring the index up to the store before it answers, so the API never calls a post embedded that search misses.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from postembed_jax.serving.index import PostIndex, save_index
from postembed_jax.serving.metrics import ServiceMetrics
from postembed_jax.serving.store import PostStore
from postembed_jax.serving.worker import BackgroundIndexer

log = logging.getLogger(__name__)


class IndexFollower(BackgroundIndexer):
  """Keeps ``index`` in step with ``store`` from the change ``since``."""

  def __init__(
    self,
    store: PostStore,
    index: PostIndex,
    *,
    since: int,
    metrics: ServiceMetrics,
    interval_s: float,
    index_path: str | Path,
    index_save_every_s: float,
  ):
    self._store, self._index, self._metrics = store, index, metrics
    self._interval_s, self._index_path, self._save_every_s = interval_s, index_path, index_save_every_s
    self._watermark = since  # read before the index was opened: it holds at least the changes up to here
    self._saved_watermark = None
    super().__init__("index-follower")

  def notify(self) -> None:
    """Nothing to wake: posts reach the index through the broker and the workers."""

  def stop(self, timeout: float = 60.0) -> None:
    self._stopping.set()
    self._thread.join(timeout)
    with self.publish_lock:
      self.catch_up()
      self._save_index()

  def catch_up(self) -> None:
    """Applies the store's changes since the watermark; call it holding ``publish_lock``."""
    latest = self._store.last_embed_seq
    if latest == self._watermark:
      return
    added = 0
    for keys, vectors in self._store.embeddings_since(self._watermark):
      self._index.add(keys, vectors)
      added += len(keys)
    self._index.remove(self._store.deleted_since(self._watermark))
    self._watermark = latest
    self._metrics.count("posts_embedded", added)

  def _run(self) -> None:
    while not self._stopping.wait(self._interval_s):
      try:
        with self.publish_lock:
          self.catch_up()
          if time.monotonic() - self._saved_at > self._save_every_s:
            self._save_index()
        self.last_error = None
      except Exception as e:  # keep following: the store is the truth, the next poll retries
        self.last_error = f"{type(e).__name__}: {e}"
        self._metrics.count("worker_errors")
        log.exception("Following the store failed; retrying.")
        self._stopping.wait(1.0)

  def _save_index(self) -> None:
    if self._saved_watermark != self._watermark:
      save_index(self._index, self._index_path, self._store, embed_seq=self._watermark)
      self._saved_watermark = self._watermark
    self._saved_at = time.monotonic()
