"""The batch job's directory output: part files that cover the input once, a killed or failed job that resumes,
a directory of another job refused, and smaller vectors (precision, Matryoshka width) end to end."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from postembed_jax import config_overrides
from postembed_jax.serving import batch_embed, vectors
from postembed_jax.serving.embed_io import BadRecordError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def job_config(tmp_path, tiny_model_dir):
  def make(**overrides):
    config = config_overrides.load_config(str(REPO / "configs/embed.py"))
    config.update(model=str(tiny_model_dir), max_length=32, batch_size=16, chunk_size=40, output=str(tmp_path / "emb"))
    config.update(overrides)
    return config

  return make


@pytest.fixture
def posts(tmp_path, parity_texts):
  """230 real texts (the parity fixture's, numbered to tell repeats apart) as JSONL."""
  texts = [t for t in parity_texts if t.strip()]
  path = tmp_path / "posts.jsonl"
  records = [{"id": f"p{i}", "text": f"{texts[i % len(texts)]} ({i})"} for i in range(230)]
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path, records


def _read_parts(out_dir: Path):
  tables = [pq.read_table(p) for p in sorted(out_dir.glob("part-*.parquet"))]
  table = pa.concat_tables(tables)
  return table.column("id").to_pylist(), vectors.decode(table), tables


def test_parts_cover_the_input_once_and_a_failed_job_resumes(tmp_path, posts, job_config):
  path, records = posts
  lines = path.read_text().splitlines(keepends=True)
  lines[170] = "not json\n"  # in part 3 of 5 (posts_per_part=50)
  path.write_text("".join(lines))
  out = tmp_path / "emb"
  with pytest.raises(BadRecordError, match=r"posts.jsonl:171: bad JSON"):
    batch_embed.run_embed_job(job_config(input=str(path), posts_per_part=50))
  names = sorted(p.name for p in out.iterdir())
  assert names == ["manifest.json"] + [f"part-0000{k}-of-00005.parquet" for k in range(3)]  # no temporary file
  finished = {n: (out / n).stat().st_mtime_ns for n in names}

  stats = batch_embed.run_embed_job(job_config(input=str(path), posts_per_part=50, skip_bad_lines=True))
  assert (stats.parts_done, stats.read, stats.skipped) == (3, 79, 1)
  assert stats.report().startswith("skipped 3 finished parts, skipped 1 bad lines")
  assert all((out / n).stat().st_mtime_ns == t for n, t in finished.items())  # finished parts left as they were
  ids, got, tables = _read_parts(out)
  assert ids == [r["id"] for i, r in enumerate(records) if i != 170]  # every post once, in input order
  assert [t.num_rows for t in tables] == [50, 50, 50, 49, 30]
  assert tables[0].schema.metadata[b"dim"] == b"32" and b"precision" not in tables[0].schema.metadata

  # The same vectors as one run into a single file.
  single = tmp_path / "single.parquet"
  batch_embed.run_embed_job(job_config(input=str(path), output=str(single), skip_bad_lines=True))
  table = pq.read_table(single)
  assert table.column("id").to_pylist() == ids
  np.testing.assert_allclose(got, vectors.decode(table), atol=1e-6, rtol=0)


def test_num_parts_splits_evenly_and_writes_empty_parts_when_there_are_few_posts(tmp_path, posts, job_config):
  path, records = posts
  stats = batch_embed.run_embed_job(job_config(input=str(path), num_parts=4))
  ids, _, tables = _read_parts(tmp_path / "emb")
  assert [t.num_rows for t in tables] == [58, 58, 58, 56] and ids == [r["id"] for r in records]
  assert stats.read == 230 and stats.parts_done == 0
  few = tmp_path / "few.jsonl"
  few.write_text('{"id": "a", "text": "one post"}\n{"id": "b", "text": "another post"}\n')
  batch_embed.run_embed_job(job_config(input=str(few), num_parts=3, output=str(tmp_path / "few")))
  ids, _, tables = _read_parts(tmp_path / "few")
  assert [t.num_rows for t in tables] == [1, 1, 0] and ids == ["a", "b"]


def test_a_directory_of_another_job_is_refused_naming_the_difference(tmp_path, posts, job_config):
  path, _ = posts
  batch_embed.run_embed_job(job_config(input=str(path), posts_per_part=100))
  before = sorted(p.name for p in (tmp_path / "emb").iterdir())
  differences = [
    (dict(precision="int8"), r"precision was 'float32', now 'int8'"),
    (dict(max_length=16), r"max_length was 32, now 16"),
    (dict(num_parts=2), r"num_parts was 3, now 2"),
    (dict(posts_per_part=50), r"num_parts was 3, now 5"),
    (dict(dtype="bfloat16"), r"dtype was 'float32', now 'bfloat16'"),
  ]
  for overrides, message in differences:
    with pytest.raises(ValueError, match=rf"config.output: .*emb holds parts of another job \({message}\)"):
      batch_embed.run_embed_job(job_config(input=str(path), **{"posts_per_part": 100, **overrides}))
  path.write_text(path.read_text() + '{"id": "new", "text": "one more"}\n')
  with pytest.raises(ValueError, match=r"input file 1 was .*posts.jsonl \(\d+ bytes\), now .*posts.jsonl \(\d+ bytes"):
    batch_embed.run_embed_job(job_config(input=str(path), posts_per_part=100))
  assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == before
  (tmp_path / "emb" / "manifest.json").unlink()
  with pytest.raises(ValueError, match=r"holds part files but no manifest.json"):
    batch_embed.run_embed_job(job_config(input=str(path), posts_per_part=100))


def test_bad_precision_or_width_fails_before_anything_is_written(tmp_path, posts, job_config):
  path, _ = posts
  missing_model = str(tmp_path / "no-such-model")  # never reached: these checks come before the model loads
  with pytest.raises(ValueError, match=r"config.precision='fp8' is not one of float32, float16, int8, binary"):
    batch_embed.run_embed_job(job_config(input=str(path), precision="fp8", model=missing_model))
  with pytest.raises(ValueError, match=r"config.num_parts=0 must be at least 1"):
    batch_embed.run_embed_job(job_config(input=str(path), num_parts=0, model=missing_model))
  assert not (tmp_path / "emb").exists()
  with pytest.raises(ValueError, match=r"config.dim=16: .* not trained with Matryoshka widths.*full width 32"):
    batch_embed.run_embed_job(job_config(input=str(path), dim=16))
  assert list((tmp_path / "emb").iterdir()) == []  # no manifest, no part


@pytest.mark.parametrize("precision", vectors.PRECISIONS)
def test_parquet_input_to_smaller_vectors_of_a_matryoshka_export(
  tmp_path, posts, job_config, matryoshka_export, precision
):
  path, records = posts
  table = pa.table({"post_id": [r["id"] for r in records], "body": [r["text"] for r in records]})
  pq.write_table(table, tmp_path / "posts.parquet")
  common = dict(input=str(tmp_path / "posts.parquet"), id_field="post_id", text_field="body", model=matryoshka_export)
  batch_embed.run_embed_job(job_config(output=str(tmp_path / "full.parquet"), **common))
  full = vectors.decode(pq.read_table(tmp_path / "full.parquet"))
  out = tmp_path / f"{precision}.parquet"
  batch_embed.run_embed_job(job_config(output=str(out), precision=precision, dim=16, **common))
  written = pq.read_table(out)
  assert written.column("id").to_pylist() == [r["id"] for r in records]
  assert written.schema.metadata[b"width"] == b"16" and written.schema.metadata[b"dim"] == b"32"
  expected = vectors.truncate(full, 16)
  got = vectors.decode(written)
  if precision == "binary":
    np.testing.assert_array_equal(got, np.where(expected > 0, 1.0, -1.0))
  else:
    np.testing.assert_allclose(got, expected, atol={"float32": 1e-6, "float16": 1e-3, "int8": 4e-3}[precision], rtol=0)
  with pytest.raises(ValueError, match=r"config.dim=12: .* was trained at widths 8, 16, 32"):
    batch_embed.run_embed_job(job_config(output=str(tmp_path / "x.parquet"), dim=12, **common))


def _embed_cmd(tiny_model_dir, posts, out):
  return [
    sys.executable,
    "launch/embed.py",
    "--config",
    "configs/embed.py",
    f"--config.model={tiny_model_dir}",
    f"--config.input={posts}",
    f"--config.output={out}",
    "--config.max_length=32",
    "--config.chunk_size=100",
    "--config.posts_per_part=300",
  ]


@pytest.mark.slow
def test_a_sigkilled_job_resumes_from_its_finished_parts(tmp_path, tiny_model_dir):
  posts = tmp_path / "posts.txt"
  posts.write_text("".join(f"post number {i} about package {i % 97}\n" for i in range(6000)))
  out = tmp_path / "emb"
  cmd = _embed_cmd(tiny_model_dir, posts, out)
  job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 180
    while not list(out.glob("part-*.parquet")):
      assert job.poll() is None and time.monotonic() < deadline, job.communicate()
      time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    assert job.wait(timeout=60) == -signal.SIGKILL
  finally:
    job.kill()
    job.communicate()
  finished = len(list(out.glob("part-*.parquet")))
  assert 1 <= finished < 20, finished
  rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr
  assert f"Wrote {6000 - 300 * finished} embeddings of dim 32 (float32)" in rerun.stdout, rerun.stdout
  assert f"skipped {finished} finished parts" in rerun.stdout, rerun.stdout
  ids, _, tables = _read_parts(out)
  assert ids == [str(i) for i in range(1, 6001)] and len(tables) == 20
  assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == ["manifest.json"]  # no temp file
