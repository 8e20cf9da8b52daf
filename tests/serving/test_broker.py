"""Broker mode (config.queue="nats") with a real nats-server: publishing and de-duplication, the embed worker and
its dead letters, the API's index following the store, and (slow) the failures: a worker SIGKILLed mid-batch
under load, the API SIGKILLed, the broker restarted."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from postembed_jax.serving import broker
from postembed_jax.serving.broker_worker import READY_LINE, BrokerWorker
from postembed_jax.serving.service import Nearline, create_app
from postembed_jax.serving.store import Post, PostStore

REPO = Path(__file__).resolve().parents[2]
DIM = 4
_STARTUP_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def tiny_embedder(tiny_model_dir):
  from postembed_jax.models.embedder import Embedder

  return Embedder.from_pretrained(str(tiny_model_dir), max_length=64)


@pytest.fixture
def nats_config(serve_config, nats_server, tiny_model_dir):
  def make(**overrides):
    config = serve_config(queue="nats", model=str(tiny_model_dir), **overrides)
    config.broker.url = nats_server.url
    config.broker.ack_wait_s = 2.0
    config.index_save_every_s = 0.5
    return config

  return make


def _wait(condition, timeout_s=60, what="condition"):
  deadline = time.monotonic() + timeout_s
  while not condition():
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.05)


async def _stream_messages(config) -> list:
  """Every message of the post stream, oldest first."""
  nc = await broker.connect(config.broker, name="test")
  try:
    js = nc.jetstream()
    info = await js.stream_info(config.broker.stream)
    return [await js.get_msg(config.broker.stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
  finally:
    await nc.close()


async def _consumer_info(config):
  """The workers' durable consumer as the server sees it: open pull requests, undelivered and unacknowledged."""
  nc = await broker.connect(config.broker, name="test")
  try:
    return await nc.jetstream().consumer_info(config.broker.stream, config.broker.durable)
  finally:
    await nc.close()


def _both_workers_wait_in_a_pull(config) -> bool:
  info = asyncio.run(_consumer_info(config))
  return info.num_waiting >= 2 and info.num_pending == 0 and info.num_ack_pending == 0


async def _dead_letters(config) -> list:
  nc = await broker.connect(config.broker, name="test")
  try:
    js = nc.jetstream()
    info = await js.stream_info(config.broker.dead_letter_stream)
    stream = config.broker.dead_letter_stream
    return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
  finally:
    await nc.close()


class WorkerThread:
  """A BrokerWorker on its own event loop in this process (the subprocess tests run launch/embed_worker.py)."""

  def __init__(self, config, embedder):
    self.store = PostStore(config.db_path, shared=True)
    self.store.bind_model(embedder.name, embedder.dim)
    self.worker = BrokerWorker(config, embedder, self.store)
    self.loop = asyncio.new_event_loop()
    self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.worker.run(),), daemon=True)
    self.thread.start()

  def stop(self):
    self.loop.call_soon_threadsafe(self.worker.stop)
    self.thread.join(30)
    self.store.close()


def test_decode_checks_what_the_api_checks():
  good = broker.encode("a", "some text", 1.5, 100.0)
  message = broker.decode(good, 7, max_text_chars=20)
  assert (message.id, message.text, message.timestamp, message.submitted_at, message.log_seq) == (
    "a",
    "some text",
    1.5,
    100.0,
    7,
  )
  assert message.post == Post("a", "some text", 1.5, log_seq=7)
  assert broker.decode(broker.encode("a", None, None, 1.0), 8, max_text_chars=20).is_delete
  bad = {
    b"\xff\xfe": "not JSON",
    b"[1, 2]": "exactly the fields",
    json.dumps(dict(id="a", text="x", timestamp=None)).encode(): "exactly the fields",
    broker.encode("", "x", None, 1.0): "id must be",
    broker.encode("a", "x" * 21, None, 1.0): "at most 20 characters (config.max_text_chars)",
    broker.encode("a", "   ", None, 1.0): "whitespace",
    broker.encode("a", "x", float("inf"), 1.0): "timestamp must be a finite number",
    json.dumps(dict(id="a", text="x", timestamp=None, submitted_at="now")).encode(): "submitted_at",
  }
  for data, reason in bad.items():
    with pytest.raises(broker.BadMessage, match=re.escape(reason)):
      broker.decode(data, 1, max_text_chars=20)


def test_save_versions_stores_each_version_once_and_keeps_the_latest(store):
  v = lambda x: np.full((1, DIM), x, np.float32)
  save = lambda post_id, text, seq, x: store.save_versions([Post(post_id, text, log_seq=seq)], [1.0], v(x))[0]
  assert save("a", "first", 10, 1.0) == "stored"
  assert save("a", "first", 10, 9.0) == "unchanged"  # a redelivery: not rewritten
  assert save("a", "second", 12, 2.0) == "stored"
  assert save("a", "first", 11, 9.0) == "stale"  # an older version, stored late by a slower worker
  assert save("a", "second", 14, 9.0) == "unchanged"  # a resend after the broker's duplicate window
  assert store.get("a")["text"] == "second" and store.get("a")["embedding"][0] == 2.0
  assert store.last_embed_seq == 2 and store.counts() == dict(posts=1, with_embedding=1, queued=0)
  store.delete("a", log_seq=15)
  assert save("a", "second", 13, 9.0) == "deleted"  # published before the deletion, delivered after it
  assert store.get("a") is None
  assert save("a", "third", 16, 3.0) == "stored"  # a new post under the same id after the deletion


def test_publisher_drops_resends_but_not_reverts(nats_config):
  config = nats_config()
  publisher = broker.Publisher(config.broker)
  try:
    assert publisher.publish([Post("p", "A"), Post("q", "Q")]) == [False, False]
    assert publisher.publish([Post("p", "A")]) == [True]  # a resend: the broker drops it
    assert publisher.publish([Post("p", "B")]) == [False]
    assert publisher.publish([Post("p", "A")]) == [False]  # a revert within the window is a new version
  finally:
    publisher.close()
  messages = asyncio.run(_stream_messages(config))
  assert [(json.loads(m.data)["id"], json.loads(m.data)["text"]) for m in messages] == [
    ("p", "A"),
    ("q", "Q"),
    ("p", "B"),
    ("p", "A"),
  ]
  assert messages[0].subject == broker.post_subject(config.broker, "p") == messages[3].subject


def test_worker_embeds_dead_letters_bad_messages_and_the_api_follows(nats_config, tiny_embedder):
  config = nats_config()
  client = TestClient(create_app(config, embedder=tiny_embedder))
  worker = None
  with client:
    texts = {f"p{i}": f"post number {i} about package {i * 7}" for i in range(20)}
    r = client.post("/posts/batch", json=dict(posts=[dict(id=i, text=t) for i, t in texts.items()]))
    assert r.status_code == 202 and {x["status"] for x in r.json()["results"]} == {"accepted"}
    assert client.post("/posts", json=dict(id="p0", text=texts["p0"])).json()["status"] == "unchanged"
    assert client.get("/posts/p0").status_code == 404  # accepted into the log, not stored until a worker runs

    # Poison between good posts: an undecodable message and a text over the limit, published around the API.
    async def poison():
      nc = await broker.connect(config.broker, name="test")
      js = nc.jetstream()
      await js.publish(broker.post_subject(config.broker, "x"), b"\x00not json")
      await js.publish(broker.post_subject(config.broker, "y"), broker.encode("y", "z" * 20_001, None, time.time()))
      await nc.close()

    asyncio.run(poison())
    assert client.post("/posts", json=dict(id="late", text="posted after the poison")).status_code == 202
    worker = WorkerThread(config, tiny_embedder)
    _wait(lambda: client.get("/health").json()["indexed"] == 21, what="21 posts indexed")

    texts["late"] = "posted after the poison"
    expected = tiny_embedder.embed(list(texts.values()))
    for (post_id, text), vector in zip(texts.items(), expected):
      post = client.get(f"/posts/{post_id}").json()
      assert post["status"] == "embedded" and post["text"] == text
      np.testing.assert_allclose(post["embedding"], vector, atol=1e-5)
      assert client.post("/search", json=dict(vector=post["embedding"], k=1)).json()["results"][0]["id"] == post_id

    dead = asyncio.run(_dead_letters(config))
    reasons = [m.headers[broker.REASON_HEADER] for m in dead]
    assert len(dead) == 2 and reasons[0].startswith("not JSON") and "config.max_text_chars" in reasons[1]
    assert dead[0].data == b"\x00not json" and dead[1].headers["Original-Subject"].startswith("posts.")
    assert worker.worker.counts["dead_lettered"] == 2 and worker.worker.counts["stored"] == 21

    assert client.delete("/posts/p3").status_code == 200  # through the log; a worker applies it
    _wait(lambda: client.get("/posts/p3").status_code == 404, what="the deletion")
    hits = client.post("/search", json=dict(vector=expected[3].tolist(), k=30)).json()["results"]
    assert "p3" not in {h["id"] for h in hits} and len(hits) == 20
    worker.stop()
  # The index the API saved on shutdown is what a restarted API loads.
  restarted = Nearline(config, tiny_embedder)
  try:
    assert len(restarted.index) == 20 and restarted.store.counts()["posts"] == 20
  finally:
    restarted.close()


def test_a_lost_broker_is_a_503_until_it_is_back(nats_config, nats_server, tiny_embedder):
  config = nats_config()
  config.broker.publish_timeout_s = 1.0
  with TestClient(create_app(config, embedder=tiny_embedder)) as client:
    nats_server.stop(kill=True)
    r = client.post("/posts", json=dict(id="a", text="some text"))
    assert r.status_code == 503 and "resending is safe" in r.json()["detail"]
    _wait(lambda: client.get("/health").status_code == 503, what="health to report the broker")
    assert client.get("/health").json()["status"] == "broker unreachable"
    nats_server.start()
    _wait(lambda: client.post("/posts", json=dict(id="a", text="some text")).status_code == 202, what="reconnect")
  config.broker.url = "nats://127.0.0.1:1"
  with pytest.raises(ConnectionError, match=re.escape("config.broker.url=nats://127.0.0.1:1: no NATS server answers")):
    broker.Publisher(config.broker, connect_for_s=0.5)


class Process:
  """A launcher in a subprocess with its output in a log file; ``wait_for`` a line matching a pattern."""

  def __init__(self, log_path: Path, *args):
    self.log_path = log_path
    self._log = open(log_path, "w")
    self.proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

  def wait_for(self, pattern: str, timeout_s: float = _STARTUP_TIMEOUT_S) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while not (match := re.search(pattern, self.log_path.read_text())):
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self.signal(signal.SIGKILL)
        raise AssertionError(f"no {pattern!r} in {self.log_path.name}:\n{self.log_path.read_text()[-3000:]}")
      time.sleep(0.1)
    return match

  def signal(self, sig) -> None:
    if self.proc.poll() is None:
      os.kill(self.proc.pid, sig)

  def stop(self) -> dict | None:
    """SIGTERM, then the worker's final counts (None for a process that logs none)."""
    self.signal(signal.SIGTERM)
    self.proc.wait(60)
    self._log.close()
    counts = re.search(r"Embed worker stopping: (\{.*\})", self.log_path.read_text())
    return counts and eval(counts.group(1))  # a dict of ints the worker logged

  def kill(self) -> None:
    self.signal(signal.SIGKILL)
    self.proc.wait(30)
    self._log.close()


def _flags(config) -> list[str]:
  return [
    "--config",
    "configs/serve.py:tiny",
    "--config.queue=nats",
    f"--config.model={config.model}",
    f"--config.db_path={config.db_path}",
    f"--config.index_path={config.index_path}",
    f"--config.broker.url={config.broker.url}",
    f"--config.broker.ack_wait_s={config.broker.ack_wait_s}",
    f"--config.compilation_cache_dir={Path(config.db_path).parent / 'jax_cache'}",
  ]


def _start_workers(config, tmp_path, n: int, first: int = 0) -> list[Process]:
  workers = [
    Process(tmp_path / f"worker{i}.log", "launch/embed_worker.py", *_flags(config)) for i in range(first, first + n)
  ]
  for w in workers:
    w.wait_for(READY_LINE)
  return workers


def _store_counts(config) -> dict:
  store = PostStore(config.db_path, shared=True)
  try:
    return dict(store.counts(), embed_seq=store.last_embed_seq)
  finally:
    store.close()


def _check_stored(config, expected: dict[str, str], embedder) -> None:
  """Every post in ``expected`` is stored once, with that text and its embedding."""
  store = PostStore(config.db_path, shared=True)
  try:
    stored = {post_id: store.get(post_id) for post_id in expected}
  finally:
    store.close()
  missing = [i for i, post in stored.items() if post is None]
  assert not missing, f"{len(missing)} acknowledged posts were lost, e.g. {missing[:5]}"
  assert {i: post["text"] for i, post in stored.items()} == expected
  vectors = embedder.embed(list(expected.values()))
  np.testing.assert_allclose(np.stack([stored[i]["embedding"] for i in expected]), vectors, atol=1e-5)


def _texts(n: int, prefix: str = "") -> dict[str, str]:
  return {f"{prefix}{i}": f"{prefix} post {i}: a package that does thing number {i * 13 % 997}" for i in range(n)}


@pytest.mark.slow
def test_sigkilled_workers_lose_nothing_and_store_each_post_once(nats_config, tmp_path, tiny_embedder):
  config = nats_config()
  Nearline(config, tiny_embedder).close()  # binds the model to the database, as the API's first start does
  workers = _start_workers(config, tmp_path, 2)
  publisher = broker.Publisher(config.broker)
  posts = _texts(440)
  acked: dict[str, str] = {}
  ids = list(posts)
  try:
    # Forty posts first, so that both workers have compiled the model's shapes (warmup is off in :tiny).
    publisher.publish([Post(i, posts[i]) for i in ids[:40]])
    acked.update((i, posts[i]) for i in ids[:40])
    ids = ids[40:]
    _wait(lambda: _store_counts(config)["posts"] == 40, timeout_s=120, what="the warm-up posts")
    for start in range(0, len(ids), 4):  # about 200 posts/s in requests of 4: a backlog builds
      batch = [i for i in ids[start : start + 4] if i not in acked]
      publisher.publish([Post(i, posts[i]) for i in batch])
      acked.update((i, posts[i]) for i in batch)
      if start == 200:  # SIGKILL one worker holding messages it fetched; the other carries on alone
        # Frozen while its pull request is open, so the burst fills that request too. Frozen at any other moment
        # (between an ack and its next fetch), it could hold nothing, and nothing would be redelivered.
        for _ in range(20):
          _wait(lambda: _both_workers_wait_in_a_pull(config), timeout_s=60, what="both workers idle in a pull")
          workers[0].signal(signal.SIGSTOP)
          if _both_workers_wait_in_a_pull(config):  # its request (open _IDLE_FETCH_S) did not expire at the freeze
            break
          workers[0].signal(signal.SIGCONT)
        else:
          raise AssertionError("never froze a worker with its pull request open")
        burst = ids[start + 4 : start + 104]
        publisher.publish([Post(i, posts[i]) for i in burst])
        acked.update((i, posts[i]) for i in burst)
        time.sleep(0.5)
        workers.pop(0).kill()
      time.sleep(0.02)
    _wait(lambda: _store_counts(config)["posts"] == len(acked), timeout_s=120, what="every post stored")
    time.sleep(3 * config.broker.ack_wait_s)  # any redelivery still to come arrives and is absorbed
  finally:
    publisher.close()
    (survivor,) = [w.stop() for w in workers]
  counts = _store_counts(config)
  # Each post written exactly once: a second write of any post would have taken another embed_seq.
  assert counts == dict(posts=440, with_embedding=440, queued=0, embed_seq=440)
  _check_stored(config, acked, tiny_embedder)
  # The killed worker held fetched, unacknowledged messages: the survivor got them again, and stored the posts the
  # killed one had not.
  assert survivor["redelivered"] > 0 and 0 < survivor["stored"] < 440, survivor


@pytest.mark.slow
def test_sigkilled_api_loses_no_acknowledged_post(nats_config, tmp_path, tiny_embedder):
  config = nats_config()
  api_flags = ["launch/serve.py", *_flags(config), "--config.port=0", "--config.access_log=False"]
  api = Process(tmp_path / "api.log", *api_flags)
  url = api.wait_for(r"Uvicorn running on (http://127\.0\.0\.1:\d+)").group(1)
  (worker,) = _start_workers(config, tmp_path, 1)
  posts, acked = _texts(2000, "a"), {}
  with httpx.Client(base_url=url, timeout=30) as client:
    for i, (post_id, text) in enumerate(posts.items()):
      if i == 150:
        api.kill()  # mid-stream: requests in flight are cut
      try:
        r = client.post("/posts", json=dict(id=post_id, text=text))
      except httpx.TransportError:
        break
      assert r.status_code == 202, r.text
      acked[post_id] = text
  assert len(acked) == 150
  _wait(lambda: _store_counts(config)["posts"] == len(acked), timeout_s=60, what="the worker to store them")
  _check_stored(config, acked, tiny_embedder)

  api = Process(tmp_path / "api2.log", *api_flags)  # a restarted API indexes what the worker stored meanwhile
  url = api.wait_for(r"Uvicorn running on (http://127\.0\.0\.1:\d+)").group(1)
  with httpx.Client(base_url=url, timeout=30) as client:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["indexed"] == health["posts"] == 150
    post = client.get("/posts/a7").json()
    assert client.post("/search", json=dict(vector=post["embedding"], k=1)).json()["results"][0]["id"] == "a7"
  api.stop()
  worker.stop()


@pytest.mark.slow
def test_workers_carry_on_after_the_broker_restarts(nats_config, nats_server, tmp_path, tiny_embedder):
  config = nats_config()
  Nearline(config, tiny_embedder).close()
  (worker,) = _start_workers(config, tmp_path, 1)
  publisher = broker.Publisher(config.broker)
  first, second, third = _texts(30, "f"), _texts(30, "s"), _texts(30, "t")
  try:
    publisher.publish([Post(i, t) for i, t in first.items()])
    _wait(lambda: _store_counts(config)["posts"] == 30, what="the first posts")
    worker.signal(signal.SIGSTOP)  # acknowledged by the broker, not yet consumed when it dies
    publisher.publish([Post(i, t) for i, t in second.items()])
    nats_server.stop(kill=True)
    nats_server.start()
    worker.signal(signal.SIGCONT)
    _wait(lambda: publisher.connected, what="the API's reconnect")
    publisher.publish([Post(i, t) for i, t in third.items()])
    _wait(lambda: _store_counts(config)["posts"] == 90, timeout_s=60, what="every post after the restart")
  finally:
    publisher.close()
    counts = worker.stop()
  assert _store_counts(config) == dict(posts=90, with_embedding=90, queued=0, embed_seq=90)
  _check_stored(config, {**first, **second, **third}, tiny_embedder)
  assert "Reconnected to the broker" in worker.log_path.read_text()
  assert counts["stored"] == 90 and counts["dead_lettered"] == 0
