import numpy as np
import pytest

from postembed_jax.serving.store import Post, PostStore, QueueFull

DIM = 4


def _vectors(n, seed=0):
  return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def test_submit_statuses_and_queue_order(store):
  assert store.submit([Post("a", "one"), Post("b", "two")], max_queue=10) == ["created", "created"]
  assert store.submit([Post("a", "one")], max_queue=10) == ["unchanged"]
  assert store.submit([Post("c", "three"), Post("a", "one, edited")], max_queue=10) == ["created", "updated"]
  assert [p.id for p in store.next_batch(10)] == ["b", "c", "a"]  # an edit goes to the back of the queue
  assert [p.id for p in store.next_batch(2)] == ["b", "c"]
  assert store.counts() == dict(posts=3, with_embedding=0, queued=3)


def test_duplicate_ids_in_one_request_keep_the_last_text(store):
  assert store.submit([Post("a", "first"), Post("a", "second")], max_queue=10) == ["created", "updated"]
  assert store.get("a")["text"] == "second"
  assert store.queue_depth() == 1


def test_timestamp_only_change_is_stored_without_re_embedding(store):
  store.submit([Post("a", "one", 1.0)], max_queue=10)
  batch = store.next_batch(10)
  store.save_embeddings(batch, _vectors(1))
  assert store.submit([Post("a", "one", 2.0)], max_queue=10) == ["unchanged"]
  assert store.get("a")["timestamp"] == 2.0
  assert store.queue_depth() == 0


def test_save_embeddings_skips_posts_edited_while_embedding(store):
  store.submit([Post("a", "old"), Post("b", "bee")], max_queue=10)
  batch = store.next_batch(10)
  store.submit([Post("a", "new")], max_queue=10)  # arrives while the worker embeds "old"
  stored = store.save_embeddings(batch, _vectors(2))
  assert stored.tolist() == [False, True]
  assert store.get("a")["status"] == "pending" and store.get("a")["embedding"] is None
  assert store.get("b")["status"] == "embedded"
  np.testing.assert_array_equal(store.get("b")["embedding"], _vectors(2)[1])
  assert [p.text for p in store.next_batch(10)] == ["new"]


def test_queue_full_stores_nothing_of_the_request(store):
  store.submit([Post(str(i), f"text {i}") for i in range(3)], max_queue=4)
  with pytest.raises(QueueFull) as e:
    store.submit([Post("x", "x"), Post("y", "y")], max_queue=4)
  assert e.value.depth == 3
  assert store.get("x") is None and store.queue_depth() == 3
  # Re-sending queued posts unchanged never counts against the bound.
  assert store.submit([Post("0", "text 0"), Post("z", "z")], max_queue=4) == ["unchanged", "created"]


def test_edits_of_queued_posts_do_not_grow_the_queue(store):
  store.submit([Post("a", "1"), Post("b", "2")], max_queue=2)
  assert store.submit([Post("a", "1 edited")], max_queue=2) == ["updated"]


def test_committed_posts_and_counters_survive_reopening(tmp_path):
  path = tmp_path / "posts.sqlite3"
  s = PostStore(path)
  s.bind_model("m", DIM)
  s.submit([Post("a", "one"), Post("b", "two")], max_queue=10)
  s.save_embeddings(s.next_batch(1), _vectors(1))
  store_id, embed_seq = s.store_id, s.last_embed_seq
  s.close()
  s = PostStore(path)
  assert (s.store_id, s.last_embed_seq, s.model) == (store_id, embed_seq, ("m", DIM))
  assert [p.id for p in s.next_batch(10)] == ["b"]
  s.submit([Post("c", "three")], max_queue=10)
  assert [p.id for p in s.next_batch(10)] == ["b", "c"]  # submission order continues after the restart
  s.close()


def test_one_process_per_database(tmp_path, store):
  with pytest.raises(RuntimeError, match="in use by another process"):
    PostStore(store.path)


def test_refuses_another_model(tmp_path, store):
  with pytest.raises(ValueError, match="holds embeddings of model 'm'"):
    store.bind_model("other", DIM)
  store.bind_model("m", DIM)


def test_embeddings_since_replays_in_write_order(store):
  store.submit([Post(i, i) for i in "abcde"], max_queue=10)
  store.save_embeddings(store.next_batch(3), _vectors(3))
  mark = store.last_embed_seq
  store.submit([Post("a", "a2")], max_queue=10)
  store.save_embeddings(store.next_batch(10), _vectors(3, seed=1))  # d, e, a2
  keys = {post_id: key for post_id, key in zip("abcde", range(1, 6))}
  chunks = list(store.embeddings_since(mark, chunk=2))
  assert [len(k) for k, _ in chunks] == [2, 1]
  assert np.concatenate([k for k, _ in chunks]).tolist() == [keys["d"], keys["e"], keys["a"]]
  np.testing.assert_array_equal(np.concatenate([v for _, v in chunks]), _vectors(3, seed=1))
  assert sum(len(k) for k, _ in store.embeddings_since(0)) == 5


def test_lookups(store):
  store.submit([Post("a", "one"), Post("b", "two")], max_queue=10)
  store.save_embeddings(store.next_batch(10), _vectors(2))
  assert store.ids([2, 1, 99]) == {1: "a", 2: "b"}
  keys, vectors = store.embeddings(["b", "missing", "a", "b"])
  assert keys == [2, 1]
  np.testing.assert_array_equal(vectors, _vectors(2)[::-1])
  assert store.embeddings(["missing"]) == ([], None)


def test_sync_mode_is_checked(tmp_path):
  with pytest.raises(ValueError, match="OFF would lose"):
    PostStore(tmp_path / "x.sqlite3", sync="OFF")


def test_delete_leaves_a_tombstone_that_only_a_new_submission_passes(store):
  store.submit([Post("a", "one"), Post("b", "two")], max_queue=10)
  store.save_embeddings(store.next_batch(10), _vectors(2))
  key_a, mark = store.get("a")["key"], store.last_embed_seq
  assert store.delete("a") == key_a and store.delete("a") is None and store.delete("never") is None
  assert store.get("a") is None and store.last_embed_seq == mark + 1
  assert store.counts() == dict(posts=1, with_embedding=1, queued=0)
  assert store.deleted_since(mark).tolist() == [key_a] and store.deleted_since(mark + 1).tolist() == []
  assert [k.tolist() for k, _ in store.embeddings_since(0)] == [[store.get("b")["key"]]]
  # A submission without a log position is new: the post is back, under a new key.
  assert store.submit([Post("a", "one")], max_queue=10) == ["created"]
  assert store.get("a")["key"] != key_a and store.get("a")["status"] == "pending"


def test_a_replay_from_before_the_delete_does_not_resurrect(store):
  """Log positions (a broker's stream sequence): a redelivery at or before the deletion's is ignored."""
  assert store.submit([Post("a", "one", log_seq=5)], max_queue=10) == ["created"]
  store.delete("a", log_seq=7)
  statuses = store.submit([Post("a", "one", log_seq=5), Post("a", "edit", log_seq=7)], max_queue=10)
  assert statuses == ["deleted", "deleted"] and store.get("a") is None
  assert store.submit([Post("a", "one", log_seq=8)], max_queue=10) == ["created"]
  assert store.get("a")["text"] == "one"


def test_log_deletions_applied_out_of_order(store):
  """Broker workers may apply a deletion before the version it deletes, or after a later version: the deletion
  overtaking its version still refuses that version, and a version published after the deletion stands."""
  mark = store.last_embed_seq
  assert store.delete("a", log_seq=7) is None  # nothing stored yet: only the tombstone
  assert store.save_versions([Post("a", "one", log_seq=5)], [0.0], _vectors(1)) == ["deleted"]
  assert store.get("a") is None and store.deleted_since(mark).tolist() == []  # no index key to remove
  assert store.delete("a", log_seq=7) is None  # a redelivered deletion is harmless
  assert store.save_versions([Post("a", "two", log_seq=9)], [0.0], _vectors(1)) == ["stored"]
  assert store.delete("a", log_seq=8) is None and store.get("a")["text"] == "two"  # older than the stored version
  key = store.get("a")["key"]
  assert store.delete("a", log_seq=10) == key and store.get("a") is None
  assert store.deleted_since(mark).tolist() == [key]


def test_worker_result_for_a_deleted_post_is_not_stored(store):
  store.submit([Post("a", "one"), Post("b", "two")], max_queue=10)
  batch = store.next_batch(10)
  store.delete("a")  # while the worker embeds it
  assert store.save_embeddings(batch, _vectors(2)).tolist() == [False, True]
  assert store.counts() == dict(posts=1, with_embedding=1, queued=0)


def _statements(monkeypatch) -> list[str]:
  """Every SQL statement the store's connections run from now on (sqlite3's own trace hook)."""
  import sqlite3

  seen, connect = [], sqlite3.connect

  def traced(*args, **kwargs):
    db = connect(*args, **kwargs)
    db.set_trace_callback(seen.append)
    return db

  monkeypatch.setattr(sqlite3, "connect", traced)
  return seen


def _full_scans(path, statements: list[str]) -> list[str]:
  """The plan lines of ``statements`` that read a whole table: "SCAN posts", or "SEARCH posts" with no index (how
  SQLite plans MAX(seq) without one); an indexed read says "SEARCH ... USING ...". The queue's partial index
  (posts WHERE pending = 1) may be scanned in order: it holds at most max_queue rows."""
  import sqlite3

  db = sqlite3.connect(path)
  scans = []
  for sql in statements:
    if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
      continue
    for row in db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall():
      plan = row[-1]
      scan = plan.startswith("SCAN") and plan not in ("SCAN counts", "SCAN posts USING INDEX queue")
      if scan or (plan.startswith("SEARCH") and " USING " not in plan):
        scans.append(f"{sql} -> {plan}")
  db.close()
  return scans


def test_open_and_counts_use_no_full_scan_at_200k_posts(tmp_path, monkeypatch):
  """Opening, counting, submitting and the worker's reads stay constant-time (or indexed) at any size: checked on the
  query plans of the statements the store runs, not on timings."""
  import sqlite3

  path = tmp_path / "big.sqlite3"
  PostStore(path).close()
  n = 200_000
  db = sqlite3.connect(path)
  blob = _vectors(1).tobytes()
  db.executemany(  # the triggers keep the counts, as for posts submitted through the store
    "INSERT INTO posts (id, text, submitted_at, seq, pending, embedding, embedded_at, embed_seq) "
    "VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
    (
      (f"p{i}", f"text {i}", i + 1, int(i >= n - 5), None if i >= n - 5 else blob, 0, None if i >= n - 5 else i + 1)
      for i in range(n)
    ),
  )
  db.execute("UPDATE counts SET seq = ?, embed_seq = ?", (n, n - 5))
  db.commit()
  db.close()

  statements = _statements(monkeypatch)
  store = PostStore(path)
  assert store.counts() == dict(posts=n, with_embedding=n - 5, queued=5) and store.last_embed_seq == n - 5
  store.submit([Post("new", "new text"), Post("p7", "p7 edited")], max_queue=100)
  assert [p.id for p in store.next_batch(3)] == ["p199995", "p199996", "p199997"]
  store.delete("p3")
  assert store.counts() == dict(posts=n, with_embedding=n - 6, queued=7)  # p7 keeps its old embedding
  assert len(store.deleted_since(n - 5)) == 1 and sum(len(k) for k, _ in store.embeddings_since(n - 5)) == 0
  store.close()
  assert any("FROM counts" in s for s in statements)
  assert _full_scans(path, statements) == []


def test_a_database_from_before_the_counts_table_is_counted_once(tmp_path):
  path = tmp_path / "old.sqlite3"
  s = PostStore(path)
  s.bind_model("m", DIM)
  s.submit([Post("a", "one"), Post("b", "two"), Post("c", "three")], max_queue=10)
  s.save_embeddings(s.next_batch(2), _vectors(2))
  s.close()
  import sqlite3

  db = sqlite3.connect(path)
  db.execute("DROP TABLE counts")
  db.commit()
  db.close()
  s = PostStore(path)
  assert s.counts() == dict(posts=3, with_embedding=2, queued=1) and s.last_embed_seq == 2
  assert s.submit([Post("d", "four")], max_queue=10) == ["created"]
  assert [p.id for p in s.next_batch(10)] == ["c", "d"]
  s.close()
