import json

import numpy as np
import pytest

from postembed_jax.serving.index import PostIndex, open_index, save_index
from postembed_jax.serving.store import Post

DIM = 8


def _unit(n, seed=0, dim=DIM):
  v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
  return v / np.linalg.norm(v, axis=1, keepdims=True)


def _exact_top(vectors, queries, k):
  return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("exact", [True, False])
def test_search_returns_nearest_with_cosine_scores(exact):
  vectors = _unit(50)
  index = PostIndex(DIM)
  index.add(np.arange(50), vectors)
  results = index.search(vectors[[3, 7]], 5, exact=exact)
  for query, (keys, scores) in zip([3, 7], results):
    assert keys[0] == query and scores[0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(scores, vectors[keys.astype(int)] @ vectors[query], atol=1e-5)
    assert np.all(np.diff(scores) <= 1e-6)
  ((keys, _),) = index.search(vectors[3], 5, exact=exact)  # one query, unbatched
  assert keys[0] == 3 and len(keys) == 5


def test_adding_a_present_key_replaces_its_vector():
  vectors = _unit(3)
  index = PostIndex(DIM)
  index.add([1, 2, 3], vectors)
  index.add([2], vectors[:1])
  assert len(index) == 3
  ((keys, scores),) = index.search(vectors[0], 3)
  assert sorted(keys[:2].tolist()) == [1, 2] and scores[1] == pytest.approx(1.0, abs=1e-5)
  with pytest.raises(ValueError, match="same key twice"):
    index.add([5, 5], vectors[:2])


def test_small_and_empty_indexes():
  index = PostIndex(DIM)
  assert [len(k) for k, _ in index.search(_unit(2), 4)] == [0, 0]
  index.add([7], _unit(1))
  ((keys, _),) = index.search(_unit(1, seed=1), 4)
  assert keys.tolist() == [7]


def test_save_and_load_round_trip(tmp_path):
  vectors = _unit(20)
  index = PostIndex(DIM)
  index.add(np.arange(100, 120), vectors)
  index.save(tmp_path / "i.usearch", meta=dict(embed_seq=5))
  loaded, meta = PostIndex.load(tmp_path / "i.usearch")
  assert meta == dict(embed_seq=5) and len(loaded) == 20 and loaded.dim == DIM
  assert loaded.search(vectors[4], 1)[0][0].tolist() == [104]
  assert PostIndex.load(tmp_path / "missing.usearch") is None
  (tmp_path / "i.usearch").write_bytes(b"not an index")
  assert PostIndex.load(tmp_path / "i.usearch") is None


def _embed_all(store, seed):
  batch = store.next_batch(1000)
  vectors = _unit(len(batch), seed)
  store.save_embeddings(batch, vectors)
  return {p.key: v for p, v in zip(batch, vectors)}


def _assert_matches_store(index, store):
  keys, vectors = store.embeddings([p for p in store.ids(range(1, 1000)).values()])
  assert len(index) == len(keys)
  for key, (found, scores) in zip(keys, index.search(vectors, 1, exact=True)):
    assert found[0] == key and scores[0] == pytest.approx(1.0, abs=1e-5)


def test_open_index_replays_only_what_the_saved_index_lacks(tmp_path, store, caplog):
  path = tmp_path / "posts.usearch"
  store.submit([Post(str(i), f"t{i}") for i in range(10)], max_queue=100)
  _embed_all(store, 0)
  save_index(open_index(path, store), path, store)
  store.submit([Post("3", "edited"), Post("new", "n")], max_queue=100)
  _embed_all(store, 1)
  caplog.set_level("INFO")
  index = open_index(path, store)
  assert "Added 2 embeddings" in caplog.text
  _assert_matches_store(index, store)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "other_store", "lost_vectors"])
def test_open_index_rebuilds_a_stale_or_foreign_index(tmp_path, store, damage):
  path = tmp_path / "posts.usearch"
  store.submit([Post(str(i), f"t{i}") for i in range(10)], max_queue=100)
  _embed_all(store, 0)
  index = open_index(path, store)
  save_index(index, path, store)
  meta = json.loads((tmp_path / "posts.usearch.json").read_text())
  if damage == "missing":
    path.unlink()
  elif damage == "corrupt":
    path.write_bytes(b"\0" * 100)
  elif damage == "other_store":
    (tmp_path / "posts.usearch.json").write_text(json.dumps(dict(meta, store_id="another")))
  else:  # an index saved with a watermark it does not actually hold
    small = PostIndex(DIM)
    small.add([1], _unit(1))
    small.save(path, meta=meta)
  _assert_matches_store(open_index(path, store), store)


def test_hnsw_recall_against_exact_search_on_real_embeddings(post_vectors):
  """Leave 60 real posts out, query the rest with them: approximate top-10 must match brute force."""
  vectors = post_vectors / np.linalg.norm(post_vectors, axis=1, keepdims=True)
  queries, corpus = vectors[:60], vectors[60:]
  index = PostIndex(vectors.shape[1], exact_below=0)
  index.add(np.arange(len(corpus)), corpus)
  approx = index.search(queries, 10)
  exact = _exact_top(corpus, queries, 10)
  recall = np.mean([len(set(a[0].tolist()) & set(e.tolist())) / 10 for a, e in zip(approx, exact)])
  assert recall >= 0.99, recall  # single-threaded insertion makes this deterministic (1.0 on bookworm's data)
  # The exact path is brute force: numpy's top-10 similarities (neighbour order may differ only on float ties).
  for query, (_, scores), top in zip(queries, index.search(queries, 10, exact=True), exact):
    np.testing.assert_allclose(scores, corpus[top] @ query, atol=1e-5)


def test_open_index_applies_deletions_made_after_the_save(tmp_path, store, caplog):
  path = tmp_path / "posts.usearch"
  store.submit([Post(str(i), f"t{i}") for i in range(10)], max_queue=100)
  _embed_all(store, 0)
  save_index(open_index(path, store), path, store)
  keys = [store.delete("2"), store.delete("7")]
  caplog.set_level("INFO")
  index = open_index(path, store)
  assert "removed 2 deleted posts" in caplog.text and "rebuilding" not in caplog.text
  assert len(index) == 8 and not set(keys) & set(index.search(_unit(10), 10, exact=True)[0][0].tolist())
  _assert_matches_store(index, store)


def test_another_index_dtype_rebuilds(tmp_path, store, caplog):
  path = tmp_path / "posts.usearch"
  store.submit([Post(str(i), f"t{i}") for i in range(10)], max_queue=100)
  _embed_all(store, 0)
  save_index(open_index(path, store), path, store)
  caplog.set_level("INFO")
  index = open_index(path, store, dtype="f16")
  assert "rebuilding" in caplog.text and index.dtype == "f16" and len(index) == 10
  save_index(index, path, store)
  assert (
    PostIndex.load(path)[0].dtype == "f16"
    and json.loads((tmp_path / "posts.usearch.json").read_text())["dtype"] == "f16"
  )
  with pytest.raises(ValueError, match=r"config.index_dtype='f8' is not one of f32, f16, i8, b1"):
    open_index(path, store, dtype="f8")


@pytest.mark.parametrize("dtype,min_recall", [("f16", 0.99), ("i8", 0.95), ("b1", 0.5)])
def test_smaller_index_vectors_on_real_embeddings(post_vectors, dtype, min_recall):
  """recall@10 of each dtype's exact search against float32's on real posts; scores stay cosine estimates."""
  vectors = post_vectors / np.linalg.norm(post_vectors, axis=1, keepdims=True)
  queries, corpus = vectors[:60], vectors[60:]
  index = PostIndex(vectors.shape[1], dtype=dtype, exact_below=0)
  index.add(np.arange(len(corpus)), corpus)
  exact = _exact_top(corpus, queries, 10)
  for search_exact in (True, False):
    found = index.search(queries, 10, exact=search_exact)
    recall = np.mean([len(set(a[0].tolist()) & set(e.tolist())) / 10 for a, e in zip(found, exact)])
    assert recall >= min_recall, (search_exact, recall)
  error = np.mean([np.abs(s - corpus[k.astype(int)] @ q).mean() for (k, s), q in zip(found, queries)])
  assert error < {"f16": 1e-3, "i8": 0.02, "b1": 0.2}[dtype], error
  ((keys, scores),) = index.search(corpus[5], 1)
  assert keys.tolist() == [5] and scores[0] == pytest.approx(1.0, abs=1e-3)
