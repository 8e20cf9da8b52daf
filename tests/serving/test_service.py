import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from postembed_jax.serving.service import create_app


@pytest.fixture
def make_client(serve_config, default_embedder):
  clients = []

  def make(**overrides):
    client = TestClient(create_app(serve_config(**overrides), embedder=default_embedder))
    client.__enter__()  # runs the lifespan: store, index, worker
    clients.append(client)
    return client

  yield make
  for client in clients:
    client.__exit__(None, None, None)


def _wait_embedded(client, ids, timeout=60.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if all(client.get(f"/posts/{i}").json()["status"] == "embedded" for i in ids):
      return
    time.sleep(0.05)
  raise AssertionError(f"posts {ids} were not embedded within {timeout} s")


def test_submit_read_and_search(make_client, debian_posts, post_vectors):
  client = make_client()
  texts = debian_posts[0][:6]
  r = client.post("/posts", json=dict(id="p0", text=texts[0], timestamp=1700000000.5))
  assert r.status_code == 202 and r.json() == dict(id="p0", status="created")
  posts = [dict(id=f"p{i}", text=t, timestamp=1700000000.5 if i == 0 else None) for i, t in enumerate(texts)]
  r = client.post("/posts/batch", json=dict(posts=posts))
  assert r.status_code == 202
  assert [x["status"] for x in r.json()["results"]] == ["unchanged"] + ["created"] * 5
  _wait_embedded(client, [f"p{i}" for i in range(6)])

  post = client.get("/posts/p0").json()
  assert post["text"] == texts[0] and post["timestamp"] == 1700000000.5
  assert post["submitted_at"] <= post["embedded_at"]
  np.testing.assert_allclose(post["embedding"], post_vectors[0], atol=1e-4)

  by_vector = client.post("/search", json=dict(vector=post_vectors[3].tolist(), k=3)).json()["results"]
  assert by_vector[0]["id"] == "p3" and by_vector[0]["score"] == pytest.approx(1.0, abs=1e-4)
  assert len(by_vector) == 3
  by_text = client.post("/search", json=dict(text=texts[4], k=1)).json()["results"]
  assert by_text == [dict(id="p4", score=pytest.approx(1.0, abs=1e-4))]

  assert client.get("/posts/nope").status_code == 404
  health = client.get("/health").json()
  assert health["status"] == "ok" and health["indexed"] == 6 and health["queued"] == 0
  metrics = client.get("/metrics").json()
  assert metrics["posts_accepted"] == 6 and metrics["posts_unchanged"] == 1 and metrics["queue_depth"] == 0
  assert metrics["embed_batch_seconds"]["count"] >= 1 and metrics["submit_to_searchable_seconds"]["count"] == 6


def test_an_edit_replaces_the_embedding(make_client, debian_posts, post_vectors):
  client = make_client()
  client.post("/posts", json=dict(id="x", text=debian_posts[0][0]))
  _wait_embedded(client, ["x"])
  assert client.post("/posts", json=dict(id="x", text=debian_posts[0][1])).json()["status"] == "updated"
  _wait_embedded(client, ["x"])
  np.testing.assert_allclose(client.get("/posts/x").json()["embedding"], post_vectors[1], atol=1e-4)
  hits = client.post("/search", json=dict(vector=post_vectors[1].tolist(), k=5)).json()["results"]
  assert [h["id"] for h in hits] == ["x"]


def test_back_pressure_answers_429_and_stores_nothing(make_client, debian_posts):
  client = make_client(max_queue=3)
  nearline = client.app.state.nearline
  with nearline._embed_lock:  # the worker is stuck: the queue fills up
    statuses = [
      client.post("/posts", json=dict(id=f"q{i}", text=t)).status_code for i, t in enumerate(debian_posts[0][:3])
    ]
    assert statuses == [202] * 3
    r = client.post("/posts/batch", json=dict(posts=[dict(id="q9", text="one"), dict(id="q0", text="edit")]))
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert "3 posts are queued" in r.json()["detail"] and "Nothing from this request was stored" in r.json()["detail"]
    assert client.get("/posts/q9").status_code == 404
    assert client.post("/posts", json=dict(id="q0", text=debian_posts[0][0])).json()["status"] == "unchanged"
  _wait_embedded(client, ["q0", "q1", "q2"])
  assert client.post("/posts", json=dict(id="q9", text="one")).status_code == 202
  assert client.get("/metrics").json()["requests_rejected_busy"] == 1


@pytest.mark.parametrize(
  "path,body,message",
  [
    ("/posts", dict(id="a"), "Field required"),
    ("/posts", dict(id="a", text=""), "text is empty or only whitespace"),
    ("/posts", dict(id="a", text=" \n\t"), "text is empty or only whitespace"),
    ("/search", dict(text="  ", k=3), "text is empty or only whitespace"),
    ("/posts", dict(id="a", text="x" * 5001), "at most 5000 characters"),
    ("/posts", dict(id="a", text=42), "valid string"),
    ("/posts", dict(id=7, text="seven"), "valid string"),
    ("/posts", dict(id="a", text="x", timestamp="yesterday"), "valid number"),
    ("/posts", dict(id="a", text="x", extra=1), "Extra inputs are not permitted"),
    ("/posts", [dict(id="a", text="x")], "valid dictionary"),
    ("/posts/batch", dict(posts=[]), "at least 1 item"),
    ("/posts/batch", dict(posts=[dict(id=str(i), text="x") for i in range(5)]), "at most 4 items"),
    ("/posts/batch", dict(posts=[dict(id="a", text="ok"), dict(id="b")]), "Field required"),
    ("/search", dict(k=3), "exactly one of 'text' or 'vector'"),
    ("/search", dict(text="x", k=0), "greater than or equal to 1"),
    ("/search", dict(vector=[1.0, 2.0]), "'vector' has 2 numbers"),
    ("/members/feed", dict(engaged="a"), "valid list"),
  ],
)
def test_malformed_requests_get_a_clear_4xx_and_leave_the_worker_alone(make_client, path, body, message):
  client = make_client(max_text_chars=5000, max_request_posts=4)
  r = client.post(path, json=body)
  assert r.status_code == 422, r.text
  assert message in r.text
  assert client.get("/health").json() | dict(status="ok", posts=0, queued=0) == client.get("/health").json()


def test_garbage_and_oversized_bodies(make_client):
  client = make_client(max_text_chars=100, max_request_posts=2)
  r = client.post("/posts", content=b"{not json", headers={"content-type": "application/json"})
  assert r.status_code == 422 and "JSON decode error" in r.text
  r = client.post("/posts/batch", content=b"x" * 10_000, headers={"content-type": "application/json"})
  assert r.status_code == 413 and "the limit is" in r.json()["detail"]
  r = client.post("/posts", json=dict(id="fine", text="still works"))
  assert r.status_code == 202
  _wait_embedded(client, ["fine"])
  assert client.get("/health").json()["worker_last_error"] is None


def test_member_feed_retrieves_per_interest(make_client, debian_posts, post_vectors):
  texts, _ = debian_posts
  client = make_client(max_request_posts=64)
  ids = [f"d{i}" for i in range(40)]
  client.post("/posts/batch", json=dict(posts=[dict(id=i, text=t) for i, t in zip(ids, texts)]))
  _wait_embedded(client, ids)
  r = client.post("/members/feed", json=dict(engaged=["d0", "d1", "d2", "d3", "unknown"], k=6, max_clusters=2))
  assert r.status_code == 200
  feed = r.json()
  assert sorted(sum((i["engaged"] for i in feed["interests"]), [])) == ["d0", "d1", "d2", "d3"]
  assert [i["size"] for i in feed["interests"]] == sorted([i["size"] for i in feed["interests"]], reverse=True)
  assert feed["not_embedded"] == ["unknown"]
  got = [h["id"] for h in feed["results"]]
  assert len(got) == 6 and len(set(got)) == 6 and not set(got) & {"d0", "d1", "d2", "d3"}
  assert client.post("/members/feed", json=dict(engaged=["unknown"])).status_code == 404


def test_restart_keeps_posts_and_index(serve_config, default_embedder, debian_posts):
  config = serve_config()
  with TestClient(create_app(config, embedder=default_embedder)) as client:
    client.post("/posts/batch", json=dict(posts=[dict(id=f"r{i}", text=t) for i, t in enumerate(debian_posts[0][:5])]))
    _wait_embedded(client, [f"r{i}" for i in range(5)])
  with TestClient(create_app(config, embedder=default_embedder)) as client:
    assert client.get("/health").json() | dict(indexed=5, with_embedding=5) == client.get("/health").json()
    assert client.post("/search", json=dict(text=debian_posts[0][2], k=1)).json()["results"][0]["id"] == "r2"


def test_serves_an_exported_model(tmp_path, serve_config, debian_posts):
  """The service loads our export format (here: the base model plus a fresh 64-d projection) from config.model."""
  from postembed_jax.models import hf_io

  model, tokenizer, settings = hf_io.load_pretrained("all-MiniLM-L6-v2", embed_dim=64)
  export = hf_io.export_model(model, tokenizer, settings, tmp_path / "export")
  with TestClient(create_app(serve_config(model=str(export)))) as client:
    assert client.get("/health").json()["dim"] == 64
    client.post("/posts/batch", json=dict(posts=[dict(id=f"e{i}", text=t) for i, t in enumerate(debian_posts[0][:3])]))
    _wait_embedded(client, ["e0", "e1", "e2"])
    assert len(client.get("/posts/e1").json()["embedding"]) == 64
    assert client.post("/search", json=dict(text=debian_posts[0][1], k=1)).json()["results"][0]["id"] == "e1"
