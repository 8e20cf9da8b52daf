"""The batch embedding job: real posts in, Parquet out, equal to sentence-transformers; bad input named."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from postembed_jax import config_overrides
from postembed_jax.serving import batch_embed, embed_io

REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path, texts):
  path.write_text("".join(json.dumps({"id": f"post-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))


def test_embed_file_matches_sentence_transformers(tmp_path, default_embedder, parity_texts):
  from sentence_transformers import SentenceTransformer

  from postembed_jax.models import hf_io

  posts = tmp_path / "posts.jsonl"
  _write_jsonl(posts, parity_texts)
  out = tmp_path / "emb.parquet"
  kept = [i for i, t in enumerate(parity_texts) if t.strip()]
  stats = batch_embed.embed_file(default_embedder, posts, out, chunk_size=20, progress=False, skip_empty_texts=True)
  # The fixture has one empty text; truncation is counted against the tokenizer's untruncated lengths.
  untruncated = default_embedder.tokenizer([parity_texts[i] for i in kept], add_special_tokens=True)["input_ids"]
  assert stats.truncated == sum(len(ids) > 128 for ids in untruncated) > 0
  assert (stats.read, stats.skipped, stats.empty) == (len(kept), 0, len(parity_texts) - len(kept)) and stats.empty
  parity_texts = [parity_texts[i] for i in kept]
  table = pq.read_table(out)
  assert table.column("id").to_pylist() == [f"post-{i}" for i in kept]
  assert table.schema.metadata[b"model"] == b"all-MiniLM-L6-v2" and table.schema.metadata[b"dim"] == b"384"
  ours = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
  assert ours.dtype == np.float32
  reference = SentenceTransformer(str(hf_io.resolve_model_dir("all-MiniLM-L6-v2")), device="cpu")
  reference.max_seq_length = 128
  np.testing.assert_allclose(ours, reference.encode(parity_texts, convert_to_numpy=True), atol=1e-5, rtol=0)


def test_count_truncated_tells_a_text_that_fills_max_length_from_one_cut_at_it(default_embedder):
  fits = " ".join(["a"] * 126)  # 126 tokens plus [CLS] and [SEP]: exactly max_length=128
  cut = " ".join(["a"] * 127)
  texts = ["short", fits, cut, "word " * 300]
  token_ids = default_embedder.tokenize(texts)
  assert [len(t) for t in token_ids] == [3, 128, 128, 128]
  assert default_embedder.count_truncated(texts, token_ids) == 2


def test_failed_job_leaves_no_output(tmp_path, default_embedder):
  path = tmp_path / "posts.jsonl"
  path.write_text('{"id": 0, "text": "fine"}\n' * 5 + "oops\n")
  out = tmp_path / "emb.parquet"
  with pytest.raises(embed_io.BadRecordError, match=":6:"):
    batch_embed.embed_file(default_embedder, path, out, chunk_size=2, progress=False)
  assert list(tmp_path.iterdir()) == [path]


def test_memory_is_bounded_by_chunk(default_embedder):
  """embed_stream consumes its input lazily: after the first chunk at most two chunks were read (the next one is
  read and tokenised in the background while the first is embedded)."""
  consumed = []

  def records():
    for i in range(100):
      consumed.append(i)
      yield i, f"post number {i}"

  stream = default_embedder.embed_stream(records(), chunk_size=8)
  ids, vectors = next(stream)
  assert ids == list(range(8)) and vectors.shape == (8, 384) and len(consumed) <= 16


def _embed_cmd(posts, out, *flags):
  return [
    sys.executable,
    "launch/embed.py",
    "--config",
    "configs/embed.py",
    f"--config.input={posts}",
    f"--config.output={out}",
    "--config.max_length=32",
    *flags,
  ]


def test_launch_embed_cli(tmp_path):
  posts = tmp_path / "posts.jsonl"
  _write_jsonl(posts, ["Debian package manager front-end", "image editor", "", "word " * 40])
  posts.write_text(posts.read_text() + "not json\n")
  out = tmp_path / "emb.parquet"
  failed = subprocess.run(_embed_cmd(posts, out), cwd=REPO, capture_output=True, text=True)
  assert failed.returncode != 0 and "posts.jsonl:3: text is empty" in failed.stderr and not out.exists()
  flags = "--config.skip_bad_lines=True", "--config.skip_empty_texts=True"
  ok = subprocess.run(_embed_cmd(posts, out, *flags), cwd=REPO, capture_output=True, text=True)
  assert ok.returncode == 0, ok.stderr
  assert "Wrote 3 embeddings of dim 384" in ok.stdout, ok.stdout
  assert "skipped 1 bad lines, skipped 1 empty texts, truncated 1 texts at max_length" in ok.stdout, ok.stdout
  assert "1 of 3 texts were longer than max_length=32 tokens" in ok.stdout
  assert pq.read_table(out).num_rows == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet", "posts.jsonl"]


def test_cpu_devices_loads_the_embedder_on_a_mesh_of_that_many(default_embedder):
  """config.cpu_devices reaches JAX through the job's own loader (a fresh process: JAX not started yet)."""
  texts = ["Debian package manager front-end", "image editor", "a library for parsing JSON"]
  code = (
    "import json, sys\n"
    "from postembed_jax import config_overrides\n"
    "from postembed_jax.serving import batch_embed\n"
    "config = config_overrides.load_config('configs/embed.py')\n"
    "config.cpu_devices, config.max_length = 2, 128\n"
    "embedder = batch_embed.load_embedder(config)\n"
    "print(json.dumps([embedder.mesh.devices.size, embedder.embed(json.loads(sys.argv[1])).tolist()]))\n"
  )
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")  # the setting must beat it
  done = subprocess.run(
    [sys.executable, "-c", code, json.dumps(texts)], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr[-2000:]
  devices, vectors = json.loads(done.stdout.strip().splitlines()[-1])
  assert devices == 2
  np.testing.assert_allclose(vectors, default_embedder.embed(texts), atol=1e-5)


@pytest.mark.parametrize(
  "output,message",
  [
    ("old.parquet", "is a directory; give a file name, e.g."),
    ("posts.jsonl/emb.parquet", "is not a directory (a file is in the way)"),
    ("posts.jsonl", "is a file; give a directory for part files, or a name ending in .parquet"),
    (".", "holds the input file"),
  ],
)
def test_unwritable_output_fails_before_the_model_loads(tmp_path, output, message):
  posts = tmp_path / "posts.jsonl"
  _write_jsonl(posts, ["fine"])
  (tmp_path / "old.parquet").mkdir()  # a directory named like an output file
  config = config_overrides.load_config(str(REPO / "configs/embed.py"))
  # A model that does not exist: the output check must come first, so this is never reached.
  config.update(input=str(posts), output=str(tmp_path / output), model=str(tmp_path / "no-such-model"))
  with pytest.raises(ValueError, match=f"config.output: .*{re.escape(message)}"):
    batch_embed.run_embed_job(config)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["old.parquet", "posts.jsonl"]


@pytest.mark.parametrize("output", ["emb.parquet", "parts"])
def test_sigterm_removes_the_temporary_file(tmp_path, output):
  """SIGTERM mid-job: exit 143 at once, no temporary file left (one output file: nothing; part files: the
  manifest, which a rerun resumes from)."""
  posts = tmp_path / "posts.txt"
  posts.write_text("".join(f"post number {i} about package {i % 97}\n" for i in range(50_000)))
  out = tmp_path / output
  env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # SIGABRT then prints every thread's Python stack
  job = subprocess.Popen(
    _embed_cmd(posts, out, "--config.chunk_size=256"), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )
  try:
    deadline = time.monotonic() + 180
    while not list(tmp_path.glob("**/.*parquet.tmp-*")):
      assert job.poll() is None and time.monotonic() < deadline, job.communicate()
      time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    try:
      assert job.wait(timeout=60) == 128 + signal.SIGTERM
    except subprocess.TimeoutExpired:
      job.send_signal(signal.SIGABRT)
      pytest.fail(f"no exit 60 s after SIGTERM; its stacks: {job.communicate(timeout=30)[1].decode()[-6000:]}")
  finally:
    job.kill()
    job.communicate()
  left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  assert left == (["posts.txt"] if output == "emb.parquet" else ["parts", "parts/manifest.json", "posts.txt"])


def test_temp_files_of_dead_jobs_are_removed(tmp_path, default_embedder):
  posts = tmp_path / "posts.txt"
  posts.write_text("one post\n")
  out = tmp_path / "emb.parquet"
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  stale = tmp_path / f".emb.parquet.tmp-{int(dead.stdout)}"
  live = tmp_path / f".emb.parquet.tmp-{os.getppid()}"  # a running process's: maybe still being written
  stale.write_bytes(b"partial")
  live.write_bytes(b"partial")
  batch_embed.embed_file(default_embedder, posts, out, progress=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "emb.parquet", "posts.txt"])
