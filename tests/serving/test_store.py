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
