"""The batch embedding job: real posts in, Parquet out, equal to sentence-transformers; bad input named."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from postembed_jax.serving import batch_embed

REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path, texts):
  path.write_text("".join(json.dumps({"id": f"post-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))


def test_embed_file_matches_sentence_transformers(tmp_path, default_embedder, parity_texts):
  from sentence_transformers import SentenceTransformer

  from postembed_jax.models import hf_io

  posts = tmp_path / "posts.jsonl"
  _write_jsonl(posts, parity_texts)
  out = tmp_path / "emb.parquet"
  stats = batch_embed.embed_file(default_embedder, posts, out, chunk_size=20, progress=False)
  assert stats.read == len(parity_texts) and stats.skipped == 0
  table = pq.read_table(out)
  assert table.column("id").to_pylist() == [f"post-{i}" for i in range(len(parity_texts))]
  assert table.schema.metadata[b"model"] == b"all-MiniLM-L6-v2" and table.schema.metadata[b"dim"] == b"384"
  ours = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
  assert ours.dtype == np.float32
  reference = SentenceTransformer(str(hf_io.resolve_model_dir("all-MiniLM-L6-v2")), device="cpu")
  reference.max_seq_length = 128
  np.testing.assert_allclose(ours, reference.encode(parity_texts, convert_to_numpy=True), atol=1e-5, rtol=0)


def test_plain_text_ids_are_line_numbers(tmp_path):
  path = tmp_path / "posts.txt"
  path.write_text("first post\nsecond post\n\nfourth\n")
  assert list(batch_embed.read_posts(path)) == [(1, "first post"), (2, "second post"), (3, ""), (4, "fourth")]


@pytest.mark.parametrize(
  "line,message",
  [
    (b'{"id": 1, "text": "ok"', "posts.jsonl:2: bad JSON"),
    (b'{"id": 1}', "posts.jsonl:2: missing field 'text'"),
    (b'{"text": "no id"}', "posts.jsonl:2: missing field 'id'"),
    (b'{"id": 1, "text": 5}', "posts.jsonl:2: field 'text' must be a string"),
    (b'["a", "b"]', "posts.jsonl:2: expected a JSON object"),
    (b'{"id": 1, "text": "caf\xe9"}', "posts.jsonl:2: invalid UTF-8"),
  ],
)
def test_bad_line_is_named(tmp_path, line, message):
  path = tmp_path / "posts.jsonl"
  path.write_bytes(b'{"id": 0, "text": "fine"}\n' + line + b"\n")
  with pytest.raises(batch_embed.BadRecordError, match=message):
    list(batch_embed.read_posts(path))
  stats = batch_embed.ReadStats()
  assert list(batch_embed.read_posts(path, skip_bad_lines=True, stats=stats)) == [("0", "fine")]
  assert (stats.read, stats.skipped) == (1, 1)


def test_failed_job_leaves_no_output(tmp_path, default_embedder):
  path = tmp_path / "posts.jsonl"
  path.write_text('{"id": 0, "text": "fine"}\n' * 5 + "oops\n")
  out = tmp_path / "emb.parquet"
  with pytest.raises(batch_embed.BadRecordError, match=":6:"):
    batch_embed.embed_file(default_embedder, path, out, chunk_size=2, progress=False)
  assert list(tmp_path.iterdir()) == [path]


def test_memory_is_bounded_by_chunk(default_embedder):
  """embed_stream consumes its input lazily: after the first chunk only chunk_size records were read."""
  consumed = []

  def records():
    for i in range(100):
      consumed.append(i)
      yield i, f"post number {i}"

  stream = default_embedder.embed_stream(records(), chunk_size=8)
  ids, vectors = next(stream)
  assert ids == list(range(8)) and vectors.shape == (8, 384) and len(consumed) == 8


def test_launch_embed_cli(tmp_path):
  posts = tmp_path / "posts.jsonl"
  _write_jsonl(posts, ["Debian package manager front-end", "image editor"])
  posts.write_text(posts.read_text() + "not json\n")
  out = tmp_path / "emb.parquet"
  cmd = [
    sys.executable,
    "launch/embed.py",
    "--config",
    "configs/embed.py",
    f"--config.input={posts}",
    f"--config.output={out}",
    "--config.max_length=32",
  ]
  failed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert failed.returncode != 0 and "posts.jsonl:3: bad JSON" in failed.stderr and not out.exists()
  ok = subprocess.run(cmd + ["--config.skip_bad_lines=True"], cwd=REPO, capture_output=True, text=True)
  assert ok.returncode == 0, ok.stderr
  assert "Wrote 2 embeddings of dim 384" in ok.stdout and "skipped 1 bad lines" in ok.stdout
  assert pq.read_table(out).num_rows == 2
