"""The durable truth of the near-line service: posts, their embeddings, and the queue of posts still to embed.

SQLite in WAL mode. A submission is committed (with synchronous=FULL, on disk) before the API acknowledges it, so
a crash loses nothing acknowledged, and the queue needs no table of its own: it is the posts whose current
version is not embedded yet, in submission order. Each post has a stable integer ``key`` (the nearest-neighbour
index's key) and each change to the index's contents (an embedding stored, a post deleted) an increasing
``embed_seq``, so an index saved up to some embed_seq is brought up to date by replaying only the changes after it.
One process owns a database (a lock file enforces it), except with a broker (``shared=True``): then the API and
any number of embed workers open it together, each write is one short transaction, and the embedded versions come
from the broker's log (``save_versions``), so there is no queue in the database.

Nothing on the hot path scans the table: triggers keep the counts (posts, with an embedding, queued) in a one-row
``counts`` table in the same transaction as the change, together with the last ``seq`` and ``embed_seq``, so
``counts()`` and opening the store are constant-time at any size.

Deleting a post removes its row and leaves a tombstone: its key (so an index saved before the delete drops it on
replay), the ``embed_seq`` of the deletion and the log position ``seq`` of the deletion. A submission is a
replay, and ignored (status ``"deleted"``), when it carries a log position (``Post.log_seq``, e.g. a broker's
stream sequence) at or before its id's latest tombstone; a submission without one is new by definition (it gets
the store's next ``seq``), so it brings the post back. Store sequence numbers and a broker's are not comparable:
a database takes its log positions from one of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
  key INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  text TEXT NOT NULL,
  timestamp REAL,
  submitted_at REAL NOT NULL,
  seq INTEGER NOT NULL,
  pending INTEGER NOT NULL,
  embedding BLOB,
  embedded_at REAL,
  embed_seq INTEGER
);
CREATE INDEX IF NOT EXISTS queue ON posts(seq) WHERE pending = 1;
CREATE INDEX IF NOT EXISTS by_embed_seq ON posts(embed_seq) WHERE embed_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones (
  key INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  embed_seq INTEGER NOT NULL,
  deleted_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_by_id ON tombstones(id, seq);
CREATE INDEX IF NOT EXISTS tombstones_by_embed_seq ON tombstones(embed_seq);
CREATE TABLE IF NOT EXISTS counts (
  one INTEGER PRIMARY KEY CHECK (one = 1),
  posts INTEGER NOT NULL,
  with_embedding INTEGER NOT NULL,
  queued INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  embed_seq INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS count_insert AFTER INSERT ON posts BEGIN
  UPDATE counts SET posts = posts + 1, queued = queued + NEW.pending,
    with_embedding = with_embedding + (NEW.embedding IS NOT NULL);
END;
CREATE TRIGGER IF NOT EXISTS count_delete AFTER DELETE ON posts BEGIN
  UPDATE counts SET posts = posts - 1, queued = queued - OLD.pending,
    with_embedding = with_embedding - (OLD.embedding IS NOT NULL);
END;
CREATE TRIGGER IF NOT EXISTS count_update AFTER UPDATE OF pending, embedding ON posts BEGIN
  UPDATE counts SET queued = queued + NEW.pending - OLD.pending,
    with_embedding = with_embedding + (NEW.embedding IS NOT NULL) - (OLD.embedding IS NOT NULL);
END;
"""
# Once, for a database written before the counts table existed: the only full scan the store ever makes.
_COUNT_EVERYTHING = """
INSERT INTO counts (one, posts, with_embedding, queued, seq, embed_seq)
SELECT 1, COUNT(*), COUNT(embedding), COALESCE(SUM(pending), 0),
  MAX(COALESCE(MAX(seq), 0), (SELECT COALESCE(MAX(seq), 0) FROM tombstones)),
  MAX(COALESCE(MAX(embed_seq), 0), (SELECT COALESCE(MAX(embed_seq), 0) FROM tombstones))
FROM posts
"""


@dataclasses.dataclass(frozen=True)
class Post:
  """A post as submitted: ``timestamp`` is the client's creation time (Unix seconds), if it sent one."""

  id: str
  text: str
  timestamp: float | None = None
  log_seq: int | None = None  # position in an external log (a broker's stream): a replay after a delete is ignored


@dataclasses.dataclass(frozen=True)
class QueuedPost:
  key: int
  id: str
  text: str
  seq: int  # submission order of this version; an edit gets a new one
  submitted_at: float


class QueueFull(Exception):
  """The worker is behind: accepting more would grow the queue past its bound."""

  def __init__(self, depth: int, incoming: int, max_queue: int):
    super().__init__(f"{depth} posts are queued and this request adds {incoming}; the limit is {max_queue}.")
    self.depth = depth


class PostStore:
  """Thread-safe access to one SQLite database (one connection behind a lock; every call is short)."""

  def __init__(self, path: str | Path, *, sync: str = "FULL", shared: bool = False):
    """``shared``: processes that all open it shared may use it together (a broker's API and workers); one that
    opens it unshared excludes every other."""
    sync = _checked_sync(sync)
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._lock_file = _lock(self.path.with_name(self.path.name + ".lock"), shared=shared)
    # Other processes' writes wait for the write lock (SQLite's busy timeout) instead of failing.
    self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
    mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
      self._db.close()
      self._lock_file.close()
      raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); is it on a network filesystem?")
    self._db.execute(f"PRAGMA synchronous={sync}")
    self._db.executescript(_SCHEMA)
    self._lock = threading.Lock()
    with self._transaction() as db:
      if db.execute("SELECT 1 FROM counts").fetchone() is None:
        db.execute(_COUNT_EVERYTHING)
    self.store_id = self._meta("store_id") or self._set_meta("store_id", uuid.uuid4().hex)

  def close(self) -> None:
    with self._lock:
      self._db.close()
      self._lock_file.close()

  @property
  def last_embed_seq(self) -> int:
    """The latest change to the index's contents (embedding stored or post deleted)."""
    with self._lock:
      return self._db.execute("SELECT embed_seq FROM counts").fetchone()[0]

  @property
  def model(self) -> tuple[str, int] | None:
    """(model name, embedding width) of the embeddings held, once a model is bound."""
    name = self._meta("model")
    return None if name is None else (name, int(self._meta("dim")))

  def bind_model(self, model: str, dim: int) -> None:
    """Refuses to mix two models' embeddings in one database; the first model to open it owns it."""
    if self.model is None:
      self._set_meta("model", model)
      self._set_meta("dim", str(dim))
    elif self.model != (model, dim):
      raise ValueError(
        f"{self.path} holds embeddings of model {self.model[0]!r} (dim {self.model[1]}), not "
        f"{model!r} (dim {dim}); give this model its own db_path and index_path."
      )

  def submit(self, posts: Sequence[Post], *, max_queue: int) -> list[str]:
    """Stores posts in one transaction; per post "created", "updated" (text changed: re-embed), "unchanged", or
    "deleted" (a replay from before the post's deletion: not stored; module docstring).

    Raises QueueFull, storing nothing, when the posts that would join the queue do not fit.
    """
    now = time.time()
    with self._transaction() as db:
      statuses, joining = [], 0
      (seq,) = db.execute("SELECT seq FROM counts").fetchone()
      for post in posts:
        if post.log_seq is not None and self._deleted_at_or_after(db, post.id, post.log_seq):
          statuses.append("deleted")
          continue
        row = db.execute("SELECT text, timestamp, pending FROM posts WHERE id = ?", (post.id,)).fetchone()
        if row is not None and row[0] == post.text:
          if row[1] != post.timestamp:  # only the creation time moved: nothing to re-embed
            db.execute("UPDATE posts SET timestamp = ? WHERE id = ?", (post.timestamp, post.id))
          statuses.append("unchanged")
          continue
        joining += row is None or not row[2]
        seq += 1
        db.execute(
          "INSERT INTO posts (id, text, timestamp, submitted_at, seq, pending) VALUES (?, ?, ?, ?, ?, 1) "
          "ON CONFLICT (id) DO UPDATE SET text = excluded.text, timestamp = excluded.timestamp, "
          "submitted_at = excluded.submitted_at, seq = excluded.seq, pending = 1",
          (post.id, post.text, post.timestamp, now, seq),
        )
        statuses.append("created" if row is None else "updated")
      db.execute("UPDATE counts SET seq = ?", (seq,))
      depth = self._queue_depth(db) if joining else 0
      if depth > max_queue:  # raising rolls the whole request back
        raise QueueFull(depth - joining, joining, max_queue)
    return statuses

  def delete(self, post_id: str, *, log_seq: int | None = None) -> int | None:
    """Removes a post and leaves its tombstone (module docstring); returns its index key, None if there is none.

    ``log_seq`` is the deletion's position in an external log; without one it takes the store's next ``seq``.
    With one, workers may apply a log out of order: a version stored from after the deletion stands, and a deletion
    that overtakes the version it deletes still leaves its tombstone (keyed ``-log_seq``, no index key), so that
    version is refused when it arrives.
    """
    with self._transaction() as db:
      row = db.execute("SELECT key, seq FROM posts WHERE id = ?", (post_id,)).fetchone()
      if row is None and log_seq is not None:
        db.execute(
          "INSERT OR IGNORE INTO tombstones (key, id, seq, embed_seq, deleted_at) "
          "VALUES (?, ?, ?, (SELECT embed_seq FROM counts), ?)",
          (-log_seq, post_id, log_seq, time.time()),
        )
      if row is None or (log_seq is not None and row[1] > log_seq):
        return None
      seq, embed_seq = db.execute("SELECT seq, embed_seq + 1 FROM counts").fetchone()
      if log_seq is None:
        seq = log_seq = seq + 1
      db.execute("DELETE FROM posts WHERE key = ?", (row[0],))
      db.execute(
        "INSERT INTO tombstones (key, id, seq, embed_seq, deleted_at) VALUES (?, ?, ?, ?, ?)",
        (row[0], post_id, log_seq, embed_seq, time.time()),
      )
      db.execute("UPDATE counts SET seq = ?, embed_seq = ?", (seq, embed_seq))
    return row[0]

  def deleted_since(self, embed_seq: int) -> np.ndarray:
    """Index keys of the posts deleted after ``embed_seq`` (a key is never reused, so order does not matter)."""
    with self._lock:
      rows = self._db.execute("SELECT key FROM tombstones WHERE embed_seq > ? AND key > 0", (embed_seq,)).fetchall()
    return np.array([r[0] for r in rows], np.uint64)

  @staticmethod
  def _deleted_at_or_after(db, post_id: str, log_seq: int) -> bool:
    row = db.execute("SELECT MAX(seq) FROM tombstones WHERE id = ?", (post_id,)).fetchone()
    return row[0] is not None and row[0] >= log_seq

  def next_batch(self, limit: int) -> list[QueuedPost]:
    """The oldest queued posts, at most ``limit``."""
    with self._lock:
      rows = self._db.execute(
        "SELECT key, id, text, seq, submitted_at FROM posts WHERE pending = 1 ORDER BY seq LIMIT ?", (limit,)
      ).fetchall()
    return [QueuedPost(*r) for r in rows]

  def save_embeddings(self, posts: Sequence[QueuedPost], vectors: np.ndarray) -> np.ndarray:
    """Stores the embeddings of posts taken from the queue; returns which were stored.

    A post edited after it was taken keeps its place in the queue (its new text still needs embedding), so its
    now-stale vector is not stored.
    """
    vectors = np.ascontiguousarray(vectors, np.float32)
    stored = np.zeros(len(posts), bool)
    now = time.time()
    with self._transaction() as db:
      (seq,) = db.execute("SELECT embed_seq FROM counts").fetchone()
      for i, (post, vector) in enumerate(zip(posts, vectors)):
        cursor = db.execute(
          "UPDATE posts SET embedding = ?, embedded_at = ?, embed_seq = ?, pending = 0 WHERE key = ? AND seq = ?",
          (vector.tobytes(), now, seq + 1, post.key, post.seq),
        )
        if cursor.rowcount:
          seq += 1
          stored[i] = True
      db.execute("UPDATE counts SET embed_seq = ?", (seq,))
    return stored

  def save_versions(self, posts: Sequence[Post], submitted_at: Sequence[float], vectors: np.ndarray) -> list[str]:
    """Stores embedded versions of posts read from an external log (``Post.log_seq`` set: a broker's stream
    sequence) in one transaction; per post "stored", "unchanged" (this text is stored already: a redelivery or a
    resend; nothing is rewritten), "stale" (a later version is stored) or "deleted" (from before its deletion).

    Idempotent and order-free, so several workers and redeliveries need no coordination: each post ends with the
    embedding of its latest version, written once.
    """
    vectors = np.ascontiguousarray(vectors, np.float32)
    statuses, now = [], time.time()
    with self._transaction() as db:
      seq, embed_seq = db.execute("SELECT seq, embed_seq FROM counts").fetchone()
      for post, submitted, vector in zip(posts, submitted_at, vectors):
        row = db.execute("SELECT text, seq FROM posts WHERE id = ?", (post.id,)).fetchone()
        if self._deleted_at_or_after(db, post.id, post.log_seq):
          statuses.append("deleted")
        elif row is not None and row[1] >= post.log_seq:
          statuses.append("unchanged" if row[1] == post.log_seq else "stale")
        elif row is not None and row[0] == post.text:
          db.execute("UPDATE posts SET seq = ?, timestamp = ? WHERE id = ?", (post.log_seq, post.timestamp, post.id))
          statuses.append("unchanged")
        else:
          embed_seq += 1
          db.execute(
            "INSERT INTO posts (id, text, timestamp, submitted_at, seq, pending, embedding, embedded_at, embed_seq) "
            "VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET text = excluded.text, "
            "timestamp = excluded.timestamp, submitted_at = excluded.submitted_at, seq = excluded.seq, pending = 0, "
            "embedding = excluded.embedding, embedded_at = excluded.embedded_at, embed_seq = excluded.embed_seq",
            (post.id, post.text, post.timestamp, submitted, post.log_seq, vector.tobytes(), now, embed_seq),
          )
          statuses.append("stored")
        seq = max(seq, post.log_seq)
      db.execute("UPDATE counts SET seq = ?, embed_seq = ?", (seq, embed_seq))
    return statuses

  def get(self, post_id: str) -> dict | None:
    """A post with its latest stored embedding (which, while ``pending``, belongs to its previous text)."""
    with self._lock:
      row = self._db.execute(
        "SELECT key, id, text, timestamp, submitted_at, pending, embedding, embedded_at FROM posts WHERE id = ?",
        (post_id,),
      ).fetchone()
    if row is None:
      return None
    key, post_id, text, timestamp, submitted_at, pending, blob, embedded_at = row
    return dict(
      key=key,
      id=post_id,
      text=text,
      timestamp=timestamp,
      submitted_at=submitted_at,
      status="pending" if pending else "embedded",
      embedded_at=embedded_at,
      embedding=None if blob is None else np.frombuffer(blob, np.float32),
    )

  def ids(self, keys: Sequence[int]) -> dict[int, str]:
    """Post ids of index keys."""
    return {
      key: post_id
      for key, post_id in self._select_in("SELECT key, id FROM posts WHERE key IN ({})", [int(k) for k in keys])
    }

  def embeddings(self, post_ids: Sequence[str]) -> tuple[list[int], np.ndarray]:
    """(keys, vectors) of those posts that have an embedding, in the order asked."""
    rows = dict(
      (post_id, (key, blob))
      for post_id, key, blob in self._select_in(
        "SELECT id, key, embedding FROM posts WHERE embedding IS NOT NULL AND id IN ({})", list(post_ids)
      )
    )
    found = [rows[i] for i in dict.fromkeys(post_ids) if i in rows]
    vectors = np.stack([np.frombuffer(blob, np.float32) for _, blob in found]) if found else None
    return [key for key, _ in found], vectors

  def embeddings_since(self, embed_seq: int, *, chunk: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(keys, vectors) chunks of the embeddings stored after ``embed_seq``, oldest first."""
    while True:
      with self._lock:
        rows = self._db.execute(
          "SELECT key, embedding, embed_seq FROM posts WHERE embed_seq > ? ORDER BY embed_seq LIMIT ?",
          (embed_seq, chunk),
        ).fetchall()
      if not rows:
        return
      embed_seq = rows[-1][2]
      yield (np.array([r[0] for r in rows], np.uint64), np.stack([np.frombuffer(r[1], np.float32) for r in rows]))

  def queue_depth(self) -> int:
    with self._lock:
      return self._queue_depth(self._db)

  def counts(self) -> dict[str, int]:
    """Constant time: read from the counts the triggers keep."""
    with self._lock:
      posts, embedded, queued = self._db.execute("SELECT posts, with_embedding, queued FROM counts").fetchone()
    return dict(posts=posts, with_embedding=embedded, queued=queued)

  @staticmethod
  def _queue_depth(db) -> int:
    return db.execute("SELECT queued FROM counts").fetchone()[0]

  @contextlib.contextmanager
  def _transaction(self):
    with self._lock:
      self._db.execute("BEGIN IMMEDIATE")
      try:
        yield self._db
      except BaseException:
        self._db.execute("ROLLBACK")
        raise
      self._db.execute("COMMIT")

  def _select_in(self, sql: str, values: list, *, chunk: int = 500) -> list[tuple]:
    out = []
    with self._lock:
      for start in range(0, len(values), chunk):
        part = values[start : start + chunk]
        out += self._db.execute(sql.format(",".join("?" * len(part))), part).fetchall()
    return out

  def _meta(self, name: str) -> str | None:
    row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return row and row[0]

  def _set_meta(self, name: str, value: str) -> str:
    self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))
    return value


def _checked_sync(sync: str) -> str:
  if sync.upper() not in ("FULL", "NORMAL", "EXTRA"):
    raise ValueError(f"sync must be FULL, EXTRA or NORMAL (OFF would lose acknowledged posts), not {sync!r}.")
  return sync.upper()


def _lock(path: Path, *, shared: bool):
  """Holds an flock for the process's lifetime (the kernel drops it when the process dies, even by SIGKILL)."""
  handle = open(path, "a+")
  try:
    fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or "?"
    handle.close()
    mode = "by a process that owns it alone" if shared else "by another process"
    raise RuntimeError(f"{path.with_suffix('')} is in use {mode} (pid {holder}).") from None
  if shared:  # the pid is an exclusive owner's; shared holders leave it
    return handle
  handle.truncate(0)
  handle.write(str(os.getpid()))
  handle.flush()
  return handle
