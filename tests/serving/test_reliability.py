"""The real service in a subprocess: SIGKILL it while posts stream in, restart it, and check that every acknowledged
post is embedded and searchable exactly once."""

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

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
_STARTUP_TIMEOUT_S = 180


class ServiceProcess:
  """launch/serve.py on 127.0.0.1 with an OS-chosen port, read from uvicorn's log."""

  def __init__(self, tmp_path, *flags):
    self.log = []
    self._port = threading.Event()
    self.proc = subprocess.Popen(
      [
        sys.executable,
        "launch/serve.py",
        "--config",
        "configs/serve.py:tiny",
        "--config.port=0",
        "--config.max_length=128",
        f"--config.db_path={tmp_path / 'posts.sqlite3'}",
        f"--config.index_path={tmp_path / 'posts.usearch'}",
        "--config.warmup=True",
        f"--config.compilation_cache_dir={tmp_path / 'jax_cache'}",
        *flags,
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    threading.Thread(target=self._read_log, daemon=True).start()
    if not self._port.wait(_STARTUP_TIMEOUT_S):
      self.kill()
      raise AssertionError("service did not start:\n" + "".join(self.log[-30:]))
    self.client = httpx.Client(base_url=self.url, timeout=30)

  def _read_log(self):
    for line in self.proc.stdout:
      self.log.append(line)
      match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
      if match:
        self.url = match.group(1)
        self._port.set()

  def kill(self):
    if self.proc.poll() is None:
      os.kill(self.proc.pid, signal.SIGKILL)
    self.proc.wait(30)

  def terminate(self):
    if self.proc.poll() is None:
      os.kill(self.proc.pid, signal.SIGTERM)
    self.proc.wait(60)


def _stream(client, texts, acked, sent, stop, errors):
  """Sends singles, batches, edits and malformed requests until stopped or the service dies. Every text is distinct
  within the model's 128 tokens (real descriptions led by the post id), so each post is its own nearest neighbour."""
  rng = np.random.default_rng(0)
  i = 0
  while not stop.is_set() and i < 2000:
    if i % 5 == 0:
      posts = [dict(id=f"p{j}", text=f"Post {j}: {texts[j % len(texts)]}") for j in range(i, i + 6)]
    elif i % 7 == 0 and i > 20:  # edit an earlier post
      j = int(rng.integers(0, i))
      posts = [dict(id=f"p{j}", text=f"Post {j}, edited at {i}: {texts[(j + 100) % len(texts)]}")]
    else:
      posts = [dict(id=f"p{i}", text=f"Post {i}: {texts[i % len(texts)]}")]
    for p in posts:
      sent.setdefault(p["id"], []).append(p["text"])
    try:
      if i % 11 == 0:
        bad = client.post("/posts", json=dict(id="bad", text=123))
        if bad.status_code != 422:
          errors.append(f"malformed request got {bad.status_code}")
      r = (
        client.post("/posts/batch", json=dict(posts=posts)) if len(posts) > 1 else client.post("/posts", json=posts[0])
      )
    except httpx.TransportError:
      return  # the service was killed mid-request: not acknowledged
    if r.status_code == 202:
      for p in posts:
        acked[p["id"]] = p["text"]
    elif r.status_code != 429:
      errors.append(f"{r.status_code}: {r.text}")
    i += len(posts)
    time.sleep(0.01)  # about 100 posts/s: faster than the worker, so a queue builds, but not a flood


def test_sigkill_while_streaming_loses_no_acknowledged_post(tmp_path, debian_posts, default_embedder):
  texts = debian_posts[0]
  acked, sent, errors = {}, {}, []
  first = ServiceProcess(tmp_path, "--config.index_save_every_s=0.5")
  try:
    stop = threading.Event()
    streamer = threading.Thread(target=_stream, args=(first.client, texts, acked, sent, stop, errors))
    streamer.start()
    deadline = time.monotonic() + 120
    while (
      len(acked) < 100 or first.client.get("/stats").json()["posts_embedded"] < 10
    ) and time.monotonic() < deadline:
      time.sleep(0.1)
    queued_at_kill = first.client.get("/stats").json()["queue_depth"]
    first.kill()  # SIGKILL: no shutdown, no index save, requests in flight are cut
    stop.set()
    streamer.join(30)
  finally:
    first.kill()
  assert not errors, errors[:3]
  assert len(acked) >= 100, "the stream did not get going"

  second = ServiceProcess(tmp_path)
  try:
    deadline = time.monotonic() + 120
    while second.client.get("/stats").json()["queue_depth"] and time.monotonic() < deadline:
      time.sleep(0.2)
    health = second.client.get("/health").json()
    assert health["queued"] == 0 and health["status"] == "ok"
    assert health["posts"] == health["with_embedding"] == health["indexed"]  # each post in the index once
    assert health["posts"] >= len(acked)

    stored = {i: second.client.get(f"/posts/{i}").json() for i in acked}
    for post_id, text in acked.items():
      post = stored[post_id]
      assert post["status"] == "embedded"
      # The last acknowledged text, or one sent after it whose answer the kill cut off.
      assert post["text"] in sent[post_id][sent[post_id].index(text) :]
    ids = list(acked)
    expected = default_embedder.embed([stored[i]["text"] for i in ids])
    got = np.array([stored[i]["embedding"] for i in ids], np.float32)
    np.testing.assert_allclose(np.sum(got * expected, axis=1), 1.0, atol=1e-3)
    for post_id in ids[::7]:
      hits = second.client.post("/search", json=dict(vector=stored[post_id]["embedding"], k=5)).json()["results"]
      assert hits[0]["id"] == post_id and len({h["id"] for h in hits}) == len(hits)
    everything = second.client.post("/search", json=dict(vector=got[0].tolist(), k=1000)).json()["results"]
    assert len(everything) == len({h["id"] for h in everything}) == min(health["posts"], 1000)
    print(f"acknowledged {len(acked)}, queued at kill {queued_at_kill}, stored {health['posts']}")
  finally:
    second.terminate()
  assert "Application shutdown complete." in "".join(second.log)
  assert (tmp_path / "posts.usearch").exists()
