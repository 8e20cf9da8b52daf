"""The micro-batching loop that turns queued posts into searchable embeddings, on one background thread.

A batch goes when it is full (``max_batch``) or when its oldest post has waited ``max_wait_s``; posts arriving
meanwhile join it, and a backlog is drained in full batches at once. The queue is read from the store, not kept
in memory, so a restart carries on exactly where a crash stopped. Each batch is stored before it is added to the
index, so the index never holds a vector the store lacks; both happen under ``publish_lock``, so a reader holding
it never sees a post stored as embedded that search cannot find yet.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from postembed_jax.serving.index import PostIndex, save_index
from postembed_jax.serving.metrics import ServiceMetrics
from postembed_jax.serving.store import PostStore, QueuedPost

log = logging.getLogger(__name__)

_IDLE_POLL_S = 1.0  # wake-ups are signalled; this only bounds how long a missed one could stall
_MAX_BACKOFF_S = 30.0


class BackgroundIndexer:
  """The face the service sees of the thread that keeps the index (start, stop, alive, last_error, notify,
  publish_lock): EmbedWorker here, IndexFollower in broker mode. Subclasses define ``_run`` and ``stop``."""

  def __init__(self, name: str):
    self._stopping = threading.Event()
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)
    self.publish_lock = threading.Lock()
    self._saved_at = time.monotonic()
    self.last_error: str | None = None

  @property
  def alive(self) -> bool:
    return self._thread.is_alive()

  def start(self) -> None:
    self._thread.start()


class EmbedWorker(BackgroundIndexer):
  """Owns the embed -> store -> index path; ``embed_lock`` serialises the Embedder with query embedding."""

  def __init__(
    self,
    store: PostStore,
    index: PostIndex,
    embedder,
    *,
    embed_lock: threading.Lock,
    metrics: ServiceMetrics,
    max_batch: int,
    max_wait_s: float,
    index_path: str | Path,
    index_save_every_s: float,
  ):
    self._store, self._index, self._embedder = store, index, embedder
    self._embed_lock, self._metrics = embed_lock, metrics
    self.max_batch, self.max_wait_s = max_batch, max_wait_s
    self._index_path, self._save_every_s = index_path, index_save_every_s
    super().__init__("embed-worker")
    self._wake = threading.Event()
    self._index_dirty = False

  def notify(self) -> None:
    """Tells the worker that posts were queued (it would find them anyway, up to a second later)."""
    self._wake.set()

  def stop(self, timeout: float = 60.0) -> None:
    """Finishes the batch in flight, then saves the index."""
    self._stopping.set()
    self._wake.set()
    if self._thread.is_alive():
      self._thread.join(timeout)
    if self._thread.is_alive():  # saving now could record a batch that is stored but not yet indexed
      log.warning("Embed worker did not stop within %.0f s; the index is left to be caught up on start.", timeout)
    else:
      self._save_index()

  def _run(self) -> None:
    backoff = 1.0
    while not self._stopping.is_set():
      try:
        batch = self._store.next_batch(self.max_batch)
        wait = self.max_wait_s - (time.time() - batch[0].submitted_at) if batch else _IDLE_POLL_S
        if not batch or (len(batch) < self.max_batch and wait > 0):
          if not batch and time.monotonic() - self._saved_at > self._save_every_s:
            self._save_index()
          self._wake.wait(wait)
          self._wake.clear()
          continue
        self._process(batch)
        if time.monotonic() - self._saved_at > self._save_every_s:
          self._save_index()
        backoff = 1.0
      except Exception as e:  # keep serving: the posts stay queued in the store and are retried
        self.last_error = f"{type(e).__name__}: {e}"
        self._metrics.count("worker_errors")
        log.exception("Embedding batch failed; retrying in %.0f s.", backoff)
        self._stopping.wait(backoff)
        backoff = min(2 * backoff, _MAX_BACKOFF_S)

  def _process(self, batch: list[QueuedPost]) -> None:
    start = time.perf_counter()
    with self._embed_lock:
      vectors = self._embedder.embed([p.text for p in batch])
    self._metrics.observe_batch(len(batch), time.perf_counter() - start)
    with self.publish_lock:
      stored = self._store.save_embeddings(batch, vectors)
      self._index.add([p.key for p, s in zip(batch, stored) if s], vectors[stored])
    self._index_dirty = True
    now = time.time()
    for post, s in zip(batch, stored):
      if s:
        self._metrics.submit_to_searchable_seconds.observe(now - post.submitted_at)
    self._metrics.count("posts_embedded", int(stored.sum()))

  def _save_index(self) -> None:
    if self._index_dirty:
      save_index(self._index, self._index_path, self._store)
      self._index_dirty = False
    self._saved_at = time.monotonic()
