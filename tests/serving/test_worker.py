import threading
import time

import numpy as np
import pytest

from postembed_jax.serving.index import PostIndex, open_index
from postembed_jax.serving.metrics import ServiceMetrics
from postembed_jax.serving.store import Post, PostStore
from postembed_jax.serving.worker import EmbedWorker

TEXTS = [
  "A photo viewer for the GNOME desktop.",
  "Library for reading PNG images.",
  "Chess engine with a GUI.",
  "Command-line audio converter.",
  "Spell checker dictionaries.",
  "Terminal emulator for X11.",
  "Fonts for mathematical typesetting.",
  "Network packet analyzer.",
  "Python bindings for SQLite.",
  "Tool to partition disks.",
]


class RecordingEmbedder:
  """The real model, plus a log of batch sizes and an optional failure on the first call."""

  def __init__(self, embedder, fail_first=False):
    self.embedder, self.batches, self.fail_first = embedder, [], fail_first

  def embed(self, texts):
    if self.fail_first:
      self.fail_first = False
      raise RuntimeError("device fell off")
    self.batches.append(len(texts))
    return self.embedder.embed(texts)


@pytest.fixture
def service_parts(tmp_path, default_embedder):
  """Builds (store, index, worker) around a RecordingEmbedder; stops them afterwards."""
  made = []

  def make(max_batch=4, max_wait_s=0.05, fail_first=False):
    store = PostStore(tmp_path / "posts.sqlite3")
    store.bind_model(default_embedder.name, default_embedder.dim)
    index = open_index(tmp_path / "posts.usearch", store)
    embedder = RecordingEmbedder(default_embedder, fail_first)
    metrics = ServiceMetrics()
    worker = EmbedWorker(
      store,
      index,
      embedder,
      embed_lock=threading.Lock(),
      metrics=metrics,
      max_batch=max_batch,
      max_wait_s=max_wait_s,
      index_path=tmp_path / "posts.usearch",
      index_save_every_s=3600,
    )
    worker.start()
    made.append((worker, store))
    return store, index, worker, embedder, metrics

  yield make
  for worker, store in made:
    worker.stop()
    store.close()


def _wait_until_embedded(store, worker, timeout=60.0):
  """Until every queued post is searchable (read under publish_lock, as the service does)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    with worker.publish_lock:
      if not store.queue_depth():
        return
    time.sleep(0.02)
  raise AssertionError("worker did not drain the queue")


def test_backlog_is_embedded_in_full_batches_with_the_right_vectors(service_parts, default_embedder):
  store, index, worker, embedder, metrics = service_parts(max_batch=4, max_wait_s=30.0)
  store.submit([Post(str(i), t) for i, t in enumerate(TEXTS[:8])], max_queue=100)
  worker.notify()
  start = time.monotonic()
  _wait_until_embedded(store, worker)
  assert time.monotonic() - start < 30.0  # full batches go at once, without waiting for the window
  worker.max_wait_s = 0.0
  store.submit([Post(str(i), t) for i, t in enumerate(TEXTS)], max_queue=100)
  worker.notify()
  _wait_until_embedded(store, worker)
  assert embedder.batches == [4, 4, 2]
  expected = default_embedder.embed(TEXTS)
  for i in range(len(TEXTS)):
    np.testing.assert_allclose(store.get(str(i))["embedding"], expected[i], atol=1e-4)
  ((keys, scores),) = index.search(expected[2], 1)
  assert store.ids(keys) == {int(keys[0]): "2"} and scores[0] == pytest.approx(1.0, abs=1e-4)
  snapshot = metrics.snapshot()
  assert snapshot["posts_embedded"] == 10 and snapshot["submit_to_searchable_seconds"]["count"] == 10


def test_posts_arriving_within_the_window_share_a_batch(service_parts):
  store, _, worker, embedder, _ = service_parts(max_batch=8, max_wait_s=1.0)
  store.submit([Post("a", TEXTS[0])], max_queue=100)
  worker.notify()
  time.sleep(0.2)
  store.submit([Post("b", TEXTS[1]), Post("c", TEXTS[2])], max_queue=100)
  worker.notify()
  _wait_until_embedded(store, worker)
  assert embedder.batches == [3]


def test_an_edit_replaces_the_embedding_in_store_and_index(service_parts, default_embedder):
  store, index, worker, _, _ = service_parts()
  store.submit([Post("a", TEXTS[0]), Post("b", TEXTS[1])], max_queue=100)
  worker.notify()
  _wait_until_embedded(store, worker)
  store.submit([Post("a", TEXTS[5])], max_queue=100)
  worker.notify()
  _wait_until_embedded(store, worker)
  new = default_embedder.embed([TEXTS[5]])[0]
  np.testing.assert_allclose(store.get("a")["embedding"], new, atol=1e-4)
  assert len(index) == 2
  ((keys, _),) = index.search(new, 2)
  assert [store.ids(keys)[int(k)] for k in keys] == ["a", "b"]


def test_a_failing_batch_is_retried_and_reported(service_parts):
  store, index, worker, embedder, metrics = service_parts(fail_first=True)
  store.submit([Post("a", TEXTS[0])], max_queue=100)
  worker.notify()
  _wait_until_embedded(store, worker, timeout=30)
  assert worker.alive and worker.last_error == "RuntimeError: device fell off"
  assert metrics.snapshot()["worker_errors"] == 1 and len(index) == 1


def test_stop_saves_the_index(tmp_path, service_parts, caplog):
  store, _, worker, _, _ = service_parts()
  store.submit([Post(str(i), t) for i, t in enumerate(TEXTS[:3])], max_queue=100)
  worker.notify()
  _wait_until_embedded(store, worker)
  worker.stop()
  caplog.set_level("INFO")
  reopened = open_index(tmp_path / "posts.usearch", store)
  assert len(reopened) == 3 and "Added" not in caplog.text  # nothing to replay


def test_index_rows_are_never_duplicated_under_repeated_edits(service_parts):
  store, index, worker, _, _ = service_parts(max_batch=2, max_wait_s=0.0)
  for round_ in range(3):
    store.submit([Post(str(i), f"{t} (v{round_})") for i, t in enumerate(TEXTS[:5])], max_queue=100)
    worker.notify()
  _wait_until_embedded(store, worker)
  assert len(index) == 5
  keys, vectors = store.embeddings([str(i) for i in range(5)])
  hits = PostIndex.search(index, vectors, 5, exact=True)
  assert all(len(set(k.tolist())) == 5 for k, _ in hits)
