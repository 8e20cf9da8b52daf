"""Nearest-neighbour search over post embeddings: a usearch HNSW index kept in step with the store.

The store is the truth and the index file a cache of it, saved with the highest ``embed_seq`` it holds. On start
the file is loaded and only the embeddings stored after that are replayed; it is rebuilt from the store when it
is missing, unreadable, from another database or model, or holds a different number of posts. While the
collection is small the index is searched exactly (brute force over the same vectors): HNSW buys nothing there,
and exact answers are free.

The index may hold its vectors at a lower precision (``config.index_dtype``; the store keeps float32 either way):
``f16`` and ``i8`` are usearch's own cosine quantisations, ``b1`` is one sign bit per dimension searched by Hamming
distance, whose score is the cosine estimate 1 - 2 * Hamming / dim. Recall@10 of each against float32 on real
posts: benchmarks/index_precision.py, quoted in docs/serving.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
from usearch.index import Index

log = logging.getLogger(__name__)

DTYPES = ("f32", "f16", "i8", "b1")


def check_dtype(dtype: str) -> str:
  if dtype not in DTYPES:
    raise ValueError(f"config.index_dtype={dtype!r} is not one of {', '.join(DTYPES)}.")
  return dtype


class PostIndex:
  """Cosine similarity search by integer key; adding a key that is present replaces its vector."""

  def __init__(self, dim: int, *, dtype: str = "f32", exact_below: int = 20_000, index: Index | None = None):
    self.dim = dim
    self.dtype = check_dtype(dtype)
    self.exact_below = exact_below
    if index is None:
      index = Index(ndim=dim, metric="hamming" if dtype == "b1" else "cos", dtype=dtype)
    self._index = index
    self._lock = threading.Lock()  # usearch's Python wrapper is not documented as safe for add during search

  def __len__(self) -> int:
    return len(self._index)

  def add(self, keys: np.ndarray, vectors: np.ndarray, *, threads: int = 1) -> None:
    """``threads=0`` uses every core: much faster, for bulk loads where the graph is large anyway."""
    keys = np.asarray(keys, np.uint64)
    if not len(keys):
      return
    if len(keys) != len(np.unique(keys)):
      raise ValueError("add() got the same key twice; the index holds one vector per post.")
    with self._lock:
      present = keys[self._index.contains(keys)] if len(self._index) else keys[:0]
      if len(present):
        self._index.remove(present)
      # One thread by default: inserting a batch concurrently lets its members miss each other as neighbours, which
      # costs recall on near-duplicate posts, differently from run to run (docs/serving.md, "Index recall").
      self._index.add(keys, self._encode(vectors), threads=threads)

  def remove(self, keys: np.ndarray) -> None:
    """Drops the posts of ``keys`` that are present."""
    keys = np.asarray(keys, np.uint64)
    with self._lock:
      present = keys[self._index.contains(keys)] if len(self._index) and len(keys) else keys[:0]
      if len(present):
        self._index.remove(present)

  def _encode(self, vectors: np.ndarray) -> np.ndarray:
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    return np.packbits(vectors > 0, axis=1) if self.dtype == "b1" else vectors

  def search(self, queries: np.ndarray, k: int, *, exact: bool | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query, (keys, cosine similarities) of its ``k`` nearest posts, best first (fewer if the index is smaller).

    ``exact`` defaults to brute force below ``exact_below`` posts and HNSW above.
    """
    queries = self._encode(queries)
    with self._lock:
      if not len(self._index) or k <= 0:
        return [(np.zeros(0, np.uint64), np.zeros(0, np.float32)) for _ in queries]
      exact = len(self._index) < self.exact_below if exact is None else exact
      matches = self._index.search(queries, min(k, len(self._index)), exact=exact)
    if len(queries) == 1:  # usearch answers a single query with unbatched Matches
      rows = [(matches.keys, matches.distances)]
    else:
      rows = [(matches.keys[i, :n], matches.distances[i, :n]) for i, n in enumerate(matches.counts)]
    # Cosine distance is 1 - cosine; a Hamming distance h between sign vectors estimates a cosine of 1 - 2h / dim.
    scale = 2.0 / self.dim if self.dtype == "b1" else 1.0
    return [(keys.astype(np.uint64), (1.0 - scale * distances).astype(np.float32)) for keys, distances in rows]

  def save(self, path: str | Path, *, meta: dict) -> None:
    """Writes the index and its metadata atomically (each by rename; the metadata last, so a crash in between
    leaves an older watermark, which only makes the next start replay a little more)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with self._lock:
      _atomic_write(path, lambda tmp: self._index.save(str(tmp)))
    _atomic_write(_meta_path(path), lambda tmp: tmp.write_text(json.dumps(meta)))

  @classmethod
  def load(cls, path: str | Path, *, exact_below: int = 20_000) -> tuple[PostIndex, dict] | None:
    """(index, metadata) from ``save``, or None if either file is missing or unreadable."""
    path = Path(path)
    try:
      meta = json.loads(_meta_path(path).read_text())
      index = Index.restore(str(path))
    except (OSError, ValueError, RuntimeError) as e:
      log.info("No usable index at %s (%s).", path, e)
      return None
    if index is None:
      return None
    dtype = index.dtype.name.lower()
    if dtype not in DTYPES:
      log.info("Index %s holds %s vectors, not one of %s.", path, dtype, ", ".join(DTYPES))
      return None
    return cls(index.ndim, dtype=dtype, exact_below=exact_below, index=index), meta


def open_index(path: str | Path, store, *, dtype: str = "f32", exact_below: int = 20_000) -> PostIndex:
  """The saved index brought up to date with ``store`` (a PostStore bound to a model), or one rebuilt from it."""
  model, dim = store.model
  expected = dict(store_id=store.store_id, model=model, dim=dim, dtype=check_dtype(dtype))
  loaded = PostIndex.load(path, exact_below=exact_below)
  index, since = None, 0
  if loaded is not None:
    index, meta = loaded
    meta = {"dtype": "f32", **meta}  # indexes saved before index_dtype existed are float32
    if {k: meta.get(k) for k in expected} != expected or meta.get("embed_seq", 0) > store.last_embed_seq:
      log.warning("Index %s was built for %s, not %s; rebuilding it.", path, meta, expected)
      index = None
    else:
      since = meta["embed_seq"]
  index = index or PostIndex(dim, dtype=dtype, exact_below=exact_below)
  _replay(index, store, since)
  if len(index) != store.counts()["with_embedding"]:
    log.warning(
      "Index %s holds %d posts but the store has %d embeddings; rebuilding it.",
      path,
      len(index),
      store.counts()["with_embedding"],
    )
    index = PostIndex(dim, dtype=dtype, exact_below=exact_below)
    _replay(index, store, 0)
  return index


def save_index(index: PostIndex, path: str | Path, store, *, embed_seq: int | None = None) -> None:
  """Saves ``index`` as holding every embedding the store has written so far (call it between worker batches), or
  those up to ``embed_seq`` (an index that follows a store other processes write)."""
  # Read before the index is written: a deletion that lands in between is then only replayed again on the next start
  # (service.Nearline.delete removes from the index before the store).
  embed_seq = store.last_embed_seq if embed_seq is None else embed_seq
  index.save(
    path,
    meta=dict(store_id=store.store_id, model=store.model[0], dim=index.dim, dtype=index.dtype, embed_seq=embed_seq),
  )


def _replay(index: PostIndex, store, since: int) -> None:
  replayed = 0
  for keys, vectors in store.embeddings_since(since):
    index.add(keys, vectors, threads=0)  # a rebuild can be millions of posts; below exact_below HNSW is unused
    replayed += len(keys)
  deleted = store.deleted_since(since)
  index.remove(deleted)
  if replayed or len(deleted):
    log.info("Added %d embeddings from the store to the index and removed %d deleted posts.", replayed, len(deleted))


def _meta_path(path: Path) -> Path:
  return path.with_name(path.name + ".json")


def _atomic_write(path: Path, write) -> None:
  tmp = path.with_name(path.name + ".tmp")
  write(tmp)
  with open(tmp, "rb") as f:
    os.fsync(f.fileno())
  os.replace(tmp, path)
