"""The Beam pipeline (serving/beam.py) against the local path, on real texts.

These tests run Beam's Python runner (the FnApiRunner, what ``--config.runner=DirectRunner`` maps to): Beam's own
DirectRunner first tries the Prism runner, which downloads a binary at run time and so cannot work offline (Beam
then falls back to the FnApiRunner, after the failed download).
"""

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from postembed_jax import config_overrides
from postembed_jax.serving import beam, embed_job
from postembed_jax.serving.embed_io import BadRecordError

REPO = Path(__file__).resolve().parents[2]


def _config(model_dir, **overrides):
  config = config_overrides.load_config(str(REPO / "configs/embed.py"))
  config.update(model=str(model_dir), max_length=128, batch_size=8, chunk_size=32, **overrides)
  return config


def _mixed_input(tmp_path, texts) -> Path:
  """The texts split over a JSONL file and a Parquet file, so one job reads both formats."""
  folder = tmp_path / "posts"
  folder.mkdir()
  half = len(texts) // 2
  (folder / "a.jsonl").write_text(
    "".join(json.dumps({"id": f"j{i}", "text": t}) + "\n" for i, t in enumerate(texts[:half]))
  )
  ids = [f"p{i}" for i in range(len(texts) - half)]
  pq.write_table(pa.table({"id": ids, "text": texts[half:]}), folder / "b.parquet")
  return folder


@pytest.mark.slow
def test_direct_runner_writes_what_the_local_path_writes(tmp_path, tiny_model_dir, parity_texts):
  """64 real texts (Debian descriptions, long ones cut at max_length, translations, emoji, one empty) read from JSONL
  and Parquet: the same ids, each exactly once, the same vectors within 1e-5, the same metadata and counts."""
  config = _config(tiny_model_dir, input=str(_mixed_input(tmp_path, parity_texts)), skip_empty_texts=True)
  local = config.copy_and_resolve_references()
  local.output = str(tmp_path / "local")
  local_stats = embed_job.run(local)
  on_beam = config.copy_and_resolve_references()
  on_beam.update(output=str(tmp_path / "beam"), runner="DirectRunner", num_parts=3)
  beam_stats = embed_job.run(on_beam)

  for field in ("read", "skipped", "empty", "truncated"):
    assert getattr(beam_stats, field) == getattr(local_stats, field), field
  assert (beam_stats.read, beam_stats.empty) == (len(parity_texts) - 1, 1) and beam_stats.truncated > 0
  parts = sorted(p.name for p in (tmp_path / "beam").iterdir())
  assert parts == [f"part-{k:05d}-of-00003.parquet" for k in range(3)]
  local_ids, local_vectors = beam.read_output(local.output)
  beam_ids, beam_vectors = beam.read_output(on_beam.output)
  assert len(beam_ids) == len(set(beam_ids)) == beam_stats.read
  assert sorted(beam_ids) == sorted(local_ids)
  order = {post: i for i, post in enumerate(beam_ids)}
  np.testing.assert_allclose(beam_vectors[[order[i] for i in local_ids]], local_vectors, atol=1e-5, rtol=0)
  local_schema = pq.read_schema(next((tmp_path / "local").glob("part-*.parquet")))
  for part in parts:
    assert pq.read_schema(tmp_path / "beam" / part).equals(local_schema, check_metadata=True)


def test_a_bad_record_stops_the_pipeline_naming_its_file_and_text(tmp_path, tiny_model_dir):
  posts = tmp_path / "posts.jsonl"
  posts.write_text('{"id": "a", "text": "first post"}\n\n{"id": "b", "text": 3}\n')
  config = _config(tiny_model_dir, input=str(posts), output=str(tmp_path / "emb.parquet"))
  config.runner = "DirectRunner"
  with pytest.raises(
    BadRecordError, match=r"posts.jsonl, the line starting '\{\"id\": \"b\", \"text\": 3\}': field 'text'"
  ):
    embed_job.run(config)
  config.skip_bad_lines = True
  stats = embed_job.run(config)
  assert (stats.read, stats.skipped) == (1, 1)
  assert pq.read_table(config.output).column("id").to_pylist() == ["a"]


@pytest.mark.parametrize(
  "overrides,message",
  [
    (dict(runner="FastRunner"), r"config.runner='FastRunner': give 'local' or a Beam runner"),
    (dict(pipeline_options="--runner=FlinkRunner"), r"config.pipeline_options: give the runner as --config.runner"),
    (dict(input="posts.txt"), r"config.input: plain-text input .* runs on --config.runner=local only"),
    (dict(output="done"), r"config.output: .*done already holds part files"),
  ],
)
def test_bad_settings_fail_before_any_work(tmp_path, overrides, message):
  (tmp_path / "posts.jsonl").write_text('{"id": "a", "text": "first post"}\n')
  (tmp_path / "posts.txt").write_text("first post\n")
  (tmp_path / "done").mkdir()
  (tmp_path / "done" / "part-00000-of-00001.parquet").write_bytes(b"")
  config = _config("no-such-model", input=str(tmp_path / "posts.jsonl"), output=str(tmp_path / "out"))
  config.runner = "DirectRunner"
  for field in ("input", "output"):
    if field in overrides:
      overrides[field] = str(tmp_path / overrides[field])
  config.update(overrides)
  with pytest.raises(ValueError, match=message):  # before the (missing) model would load
    embed_job.run(config)


def test_without_apache_beam_a_beam_runner_names_the_extra_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # what an install without the beam extra looks like
  monkeypatch.delitem(sys.modules, "postembed_jax.serving.beam")
  monkeypatch.delattr("postembed_jax.serving.beam")
  config = _config("all-MiniLM-L6-v2", input=str(tmp_path / "posts.jsonl"), output=str(tmp_path / "out"))
  config.runner = "FlinkRunner"
  with pytest.raises(ValueError, match=r"config.runner='FlinkRunner' needs Apache Beam: pip install .*\[beam\]"):
    embed_job.run(config)
