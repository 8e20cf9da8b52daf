"""The batch embedding job: posts file (JSONL or plain text) -> Parquet of (id, embedding), streamed and atomic."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from postembed_jax.models.dtypes import dtype_of
from postembed_jax.models.embedder import Embedder


class BadRecordError(ValueError):
  """A malformed input line; the message names the file and line number."""


@dataclasses.dataclass
class ReadStats:
  read: int = 0
  skipped: int = 0


def _parse_line(raw: bytes, path: Path, line_no: int, fmt: str) -> tuple[object, str]:
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise BadRecordError(f"{path}:{line_no}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
  line = line.rstrip("\r\n")
  if fmt == "text":
    return line_no, line
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise BadRecordError(f"{path}:{line_no}: bad JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(record, dict):
    raise BadRecordError(f"{path}:{line_no}: expected a JSON object with 'id' and 'text'")
  for field in ("id", "text"):
    if field not in record:
      raise BadRecordError(f"{path}:{line_no}: missing field {field!r}")
  if not isinstance(record["text"], str):
    raise BadRecordError(f"{path}:{line_no}: field 'text' must be a string, got {type(record['text']).__name__}")
  if not isinstance(record["id"], (str, int)) or isinstance(record["id"], bool):
    raise BadRecordError(f"{path}:{line_no}: field 'id' must be a string or integer")
  return str(record["id"]), record["text"]


def read_posts(
  path: str | Path, *, skip_bad_lines: bool = False, stats: ReadStats | None = None, fmt: str = "auto"
) -> Iterator[tuple[object, str]]:
  """Yields (id, text). JSONL when the name ends in .jsonl/.json (or fmt="jsonl"); else one post per line, id =
  line number (1-based). Blank JSONL lines are ignored. Raises BadRecordError unless ``skip_bad_lines``."""
  path = Path(path)
  if fmt == "auto":
    fmt = "jsonl" if path.suffix in (".jsonl", ".json") else "text"
  if fmt not in ("jsonl", "text"):
    raise ValueError(f"Unknown input format {fmt!r}; choose 'auto', 'jsonl' or 'text'.")
  stats = stats if stats is not None else ReadStats()
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      if fmt == "jsonl" and not raw.strip():
        continue
      try:
        record = _parse_line(raw, path, line_no, fmt)
      except BadRecordError:
        if not skip_bad_lines:
          raise
        stats.skipped += 1
        continue
      stats.read += 1
      yield record


def embed_file(
  embedder: Embedder,
  input_path: str | Path,
  output_path: str | Path,
  *,
  skip_bad_lines: bool = False,
  chunk_size: int = 4096,
  progress: bool = True,
  fmt: str = "auto",
) -> ReadStats:
  """Embeds every post; the Parquet file appears under ``output_path`` only once complete."""
  output_path = Path(output_path)
  output_path.parent.mkdir(parents=True, exist_ok=True)
  tmp_path = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}")
  schema = pa.schema(
    [("id", pa.string()), ("embedding", pa.list_(pa.float32(), embedder.dim))],
    metadata={"model": embedder.name, "dim": str(embedder.dim), "max_length": str(embedder.max_length)},
  )
  stats = ReadStats()
  records = read_posts(input_path, skip_bad_lines=skip_bad_lines, stats=stats, fmt=fmt)
  try:
    with pq.ParquetWriter(tmp_path, schema) as writer:
      for ids, vectors in embedder.embed_stream(records, chunk_size=chunk_size, progress=progress):
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), embedder.dim)
        writer.write_table(pa.table({"id": pa.array([str(i) for i in ids]), "embedding": embedding}, schema=schema))
    os.replace(tmp_path, output_path)
  finally:
    tmp_path.unlink(missing_ok=True)
  return stats


def run_embed_job(config) -> ReadStats:
  """Entry point shared by launch/embed.py and notebooks: validates the config, embeds, reports."""
  for field in ("input", "output"):
    if not config.get(field):
      raise ValueError(f"config.{field} is required (e.g. --config.{field}=...).")
  if not Path(config.input).exists():
    raise FileNotFoundError(f"config.input: {config.input} does not exist.")
  dtype = dtype_of(config.dtype)
  embedder = Embedder.from_pretrained(
    config.model, max_length=config.max_length, batch_size=config.batch_size, dtype=dtype
  )
  stats = embed_file(
    embedder,
    config.input,
    config.output,
    skip_bad_lines=config.skip_bad_lines,
    chunk_size=config.chunk_size,
    fmt=config.input_format,
  )
  skipped = f", skipped {stats.skipped} bad lines" if stats.skipped else ""
  print(f"Wrote {stats.read} embeddings of dim {embedder.dim} to {config.output}{skipped}.")
  return stats
