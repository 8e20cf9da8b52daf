import base64
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from postembed_jax import config_overrides
from postembed_jax.serving import batch_embed, vectors
from postembed_jax.serving.service import check_exposure, create_app

REPO = Path(__file__).resolve().parents[2]


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
  stats = client.get("/stats").json()
  assert stats["posts_accepted"] == 6 and stats["posts_unchanged"] == 1 and stats["queue_depth"] == 0
  assert stats["embed_batch_seconds"]["count"] >= 1 and stats["submit_to_searchable_seconds"]["count"] == 6
  r = client.get("/metrics")
  assert r.headers["content-type"].startswith("text/plain")
  samples = {
    (s.name, tuple(sorted(s.labels.items()))): s.value
    for family in text_string_to_metric_families(r.text)
    for s in family.samples
  }
  assert samples[("postembed_posts_accepted_total", ())] == 6 and samples[("postembed_indexed", ())] == 6
  assert samples[("postembed_submit_to_searchable_seconds_count", ())] == 6
  submitted = (("method", "POST"), ("route", "/posts"), ("status", "202"))
  assert samples[("postembed_http_request_seconds_count", submitted)] == 1
  assert (
    samples[
      (
        "postembed_http_request_seconds_count",
        (("method", "GET"), ("route", "/posts/{post_id:path}"), ("status", "404")),
      )
    ]
    == 1
  )


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
  assert client.get("/stats").json()["requests_rejected_busy"] == 1


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


def _embed_job(tmp_path, model, texts, **overrides):
  """The vectors launch/embed.py writes for ``texts`` (configs/embed.py with ``overrides``)."""
  posts = tmp_path / "posts.jsonl"
  posts.write_text("".join(json.dumps(dict(id=str(i), text=t)) + "\n" for i, t in enumerate(texts)))
  out = tmp_path / f"emb-{len(list(tmp_path.glob('emb-*')))}.parquet"
  config = config_overrides.load_config(str(REPO / "configs/embed.py"))
  config.update(input=str(posts), output=str(out), model=model, **overrides)
  batch_embed.run_embed_job(config)
  return vectors.decode(pq.read_table(out))


def test_openai_embeddings_equal_the_batch_job(tmp_path, serve_config, matryoshka_export, debian_posts):
  texts = debian_posts[0][:7] + ["GIMP", "an image editor " * 40]  # one word, and one cut at max_length
  full = _embed_job(tmp_path, matryoshka_export, texts, max_length=64)
  narrow = _embed_job(tmp_path, matryoshka_export, texts, max_length=64, dim=16)
  with TestClient(create_app(serve_config(model=matryoshka_export))) as client:
    r = client.post("/v1/embeddings", json=dict(input=texts, model=matryoshka_export))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == matryoshka_export
    assert [d["object"] for d in body["data"]] == ["embedding"] * 9 and [d["index"] for d in body["data"]] == list(
      range(9)
    )
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], full, atol=1e-5, rtol=0)
    tokens = client.app.state.nearline.embedder.tokenize(texts)
    assert body["usage"] == dict(prompt_tokens=sum(map(len, tokens)), total_tokens=sum(map(len, tokens)))
    assert max(map(len, tokens)) == 64  # the long text was cut where the batch job cuts it

    request = dict(input=texts, model=matryoshka_export, encoding_format="base64", dimensions=16)
    data = client.post("/v1/embeddings", json=request).json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
    np.testing.assert_allclose(decoded, narrow, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-6)

    one = client.post("/v1/embeddings", json=dict(input=texts[2], model=matryoshka_export)).json()
    assert len(one["data"]) == 1 and one["data"][0]["index"] == 0
    np.testing.assert_allclose(one["data"][0]["embedding"], full[2], atol=1e-5, rtol=0)

    for request, message in [
      (dict(dimensions=12), "'dimensions'=12: .* was trained at widths 8, 16, 32"),
      (dict(model="text-embedding-3-small"), "'model'='text-embedding-3-small': this service embeds with"),
      (dict(encoding_format="int8"), "encoding_format"),
      (dict(input=[]), "at least 1 item"),
      (dict(input=["fine", " "]), "text is empty or only whitespace"),
      (dict(input=[[101, 2023]]), "valid string"),
    ]:
      r = client.post("/v1/embeddings", json=dict(dict(input=texts[:1], model=matryoshka_export), **request))
      assert r.status_code == 422, r.text
      assert re.search(message, r.text), r.text
    assert client.get("/health").json()["posts"] == 0  # nothing was stored
    assert client.get("/stats").json()["texts_embedded_sync"] == 9 + 9 + 1


def test_openai_dimensions_need_a_matryoshka_export(make_client):
  client = make_client()
  r = client.post("/v1/embeddings", json=dict(input="x", model="all-MiniLM-L6-v2", dimensions=128))
  assert r.status_code == 422
  assert "'dimensions'=128: all-MiniLM-L6-v2 was not trained with Matryoshka widths" in r.json()["detail"]
  r = client.post("/v1/embeddings", json=dict(input="x", model="all-MiniLM-L6-v2", dimensions=384))
  assert len(r.json()["data"][0]["embedding"]) == 384


def test_delete_removes_from_store_and_index_and_stays_removed(serve_config, default_embedder, debian_posts):
  texts = debian_posts[0][:4]
  config = serve_config()
  with TestClient(create_app(config, embedder=default_embedder)) as client:
    client.post("/posts/batch", json=dict(posts=[dict(id=f"d{i}", text=t) for i, t in enumerate(texts)]))
    _wait_embedded(client, [f"d{i}" for i in range(4)])
    assert client.delete("/posts/d1").json() == dict(id="d1", status="deleted")
    assert client.get("/posts/d1").status_code == 404
    assert client.delete("/posts/d1").status_code == 404
    assert client.delete("/posts/never").status_code == 404
    hits = client.post("/search", json=dict(text=texts[1], k=10)).json()["results"]
    assert sorted(h["id"] for h in hits) == ["d0", "d2", "d3"]
    assert client.get("/health").json() | dict(posts=3, with_embedding=3, indexed=3) == client.get("/health").json()
    assert client.get("/stats").json()["posts_deleted"] == 1
  with TestClient(create_app(config, embedder=default_embedder)) as client:  # the saved index and the store agree
    hits = client.post("/search", json=dict(text=texts[1], k=10)).json()["results"]
    assert sorted(h["id"] for h in hits) == ["d0", "d2", "d3"]
    # A submission after the delete is new: the post comes back, with a new index key.
    assert client.post("/posts", json=dict(id="d1", text=texts[1])).json()["status"] == "created"
    _wait_embedded(client, ["d1"])
    assert client.post("/search", json=dict(text=texts[1], k=1)).json()["results"][0]["id"] == "d1"


def _finite_cases():
  post = '{"id": "a", "text": "x", "timestamp": %s}'
  vector = '{"vector": [0.5, %s, 0.5], "k": 3}'
  return [
    ("/posts", post % "1e400", "timestamp", "finite number"),
    ("/posts", post % "NaN", "timestamp", "finite number"),
    ("/posts", post % "Infinity", "timestamp", "finite number"),
    ("/posts", post % "-Infinity", "timestamp", "finite number"),
    ("/posts", post % "1e12", "timestamp", "less than or equal to 253402300799"),
    ("/posts", post % "-1", "timestamp", "greater than or equal to 0"),
    ("/posts/batch", '{"posts": [{"id": "a", "text": "x"}, %s]}' % (post % "NaN"), "timestamp", "finite number"),
    ("/search", vector % "NaN", "vector", "finite number"),
    ("/search", vector % "Infinity", "vector", "finite number"),
    ("/search", vector % "1e39", "vector", "1e+39 is beyond float32's range (magnitude at most 3.403e+38)"),
    ("/search", '{"text": "x", "k": 1e400}', "k", "valid integer"),
  ]


@pytest.mark.parametrize("path,body,field,message", _finite_cases())
def test_non_finite_and_out_of_range_numbers_get_422_naming_the_field(make_client, path, body, field, message):
  client = make_client()
  r = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
  assert r.status_code == 422, r.text
  (error,) = r.json()["detail"]
  assert field in error["loc"] and message in error["msg"], error
  assert client.get("/health").json() | dict(status="ok", posts=0) == client.get("/health").json()


def test_bearer_token_guards_every_route_but_health(tmp_path, make_client):
  token_file = tmp_path / "token"
  token_file.write_text("s3cret-token\n")
  client = make_client(auth_token_file=str(token_file))
  post = dict(id="a", text="GIMP is an image editor")
  assert client.get("/health").status_code == 200
  for method, path, kwargs in [
    ("post", "/posts", dict(json=post)),
    ("get", "/posts/a", {}),
    ("delete", "/posts/a", {}),
    ("post", "/search", dict(json=dict(text="x"))),
    ("post", "/v1/embeddings", dict(json=dict(input="x", model="all-MiniLM-L6-v2"))),
    ("get", "/metrics", {}),
    ("get", "/stats", {}),
    ("get", "/docs", {}),
  ]:
    for header in [None, "Bearer wrong", "Bearer s3cret-toke", "s3cret-token", "Basic s3cret-token"]:
      headers = {} if header is None else {"Authorization": header}
      r = getattr(client, method)(path, headers=headers, **kwargs)
      assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, header)
  auth = {"Authorization": "Bearer s3cret-token"}
  assert client.post("/posts", json=post, headers=auth).status_code == 202
  assert client.get("/posts/a", headers=auth).json()["text"] == post["text"]
  assert client.get("/stats", headers=auth).json()["posts_accepted"] == 1


def test_token_file_and_exposure_are_checked(tmp_path, serve_config):
  with pytest.raises(FileNotFoundError, match=r"config.auth_token_file: .*missing does not exist"):
    create_app(serve_config(auth_token_file=str(tmp_path / "missing")))
  (tmp_path / "empty").write_text(" \n")
  with pytest.raises(ValueError, match=r"config.auth_token_file: .*empty is empty"):
    create_app(serve_config(auth_token_file=str(tmp_path / "empty")))
  for host in ["127.0.0.1", "127.0.0.2", "::1", "localhost"]:
    check_exposure(serve_config(host=host))
  for host in ["0.0.0.0", "::", "192.168.1.10", "example.org"]:
    with pytest.raises(ValueError, match=f"config.host='{host}' is reachable beyond this machine"):
      check_exposure(serve_config(host=host))
    check_exposure(serve_config(host=host, auth_token_file=str(tmp_path / "token")))


def test_serve_refuses_beyond_loopback_in_one_line_before_loading_the_model(tmp_path, serve_config):
  """What launch/serve.py prints (launching.error_line): one line, exit status 1; the model (here one that does not
  exist) is never loaded and no database is created."""
  from postembed_jax import launching
  from postembed_jax.serving.service import serve

  with pytest.raises(ValueError) as e:
    serve(serve_config(host="0.0.0.0", model=str(tmp_path / "no-such-model")))
  assert launching.error_line(e.value, "serve.py") == (
    "serve.py: error: config.host='0.0.0.0' is reachable beyond this machine; set config.auth_token_file (a file "
    "holding a bearer token) or listen on 127.0.0.1.",
    1,
  )
  assert not (tmp_path / "posts.sqlite3").exists()
