"""The batch embedding job: posts file (JSONL or plain text) -> Parquet of (id, embedding), streamed and atomic.

The output path is checked before anything is embedded; the Parquet file is written to a hidden temporary file
next to it and renamed into place once complete. That temporary file is removed when the job fails or gets
SIGTERM (a SIGKILLed job's is removed by the next job writing the same output).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from postembed_jax.models.dtypes import dtype_of
from postembed_jax.models.embedder import Embedder
from postembed_jax.serving.texts import EmptyTextError, check_text


class BadRecordError(ValueError):
  """A malformed input line; the message names the file and line number."""


@dataclasses.dataclass
class ReadStats:
  read: int = 0
  skipped: int = 0  # malformed lines skipped (skip_bad_lines)
  empty: int = 0  # empty or whitespace-only texts skipped (skip_empty_texts)
  truncated: int = 0  # texts cut at the embedder's max_length (counted by embed_file)

  def report(self) -> str:
    """The counts besides ``read``, for the job's last line ('' when there are none)."""
    parts = [
      f"skipped {self.skipped} bad lines" if self.skipped else "",
      f"skipped {self.empty} empty texts" if self.empty else "",
      f"truncated {self.truncated} texts at max_length" if self.truncated else "",
    ]
    return ", ".join(p for p in parts if p)


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
  path: str | Path,
  *,
  skip_bad_lines: bool = False,
  skip_empty_texts: bool = False,
  stats: ReadStats | None = None,
  fmt: str = "auto",
) -> Iterator[tuple[object, str]]:
  """Yields (id, text). JSONL when the name ends in .jsonl/.json (or fmt="jsonl"); else one post per line, id =
  line number (1-based). Blank JSONL lines are ignored. Raises BadRecordError on a malformed line unless
  ``skip_bad_lines``, and on an empty text (serving/texts.py's rule, the service's) unless ``skip_empty_texts``."""
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
      try:
        check_text(record[1])
      except EmptyTextError as e:
        if not skip_empty_texts:
          raise BadRecordError(f"{path}:{line_no}: {e} (--config.skip_empty_texts=True skips such posts)") from None
        stats.empty += 1
        continue
      stats.read += 1
      yield record


def check_output_path(output_path: str | Path, input_path: str | Path | None = None) -> Path:
  """Fails at once, before anything is embedded, on an output that could not be written: a directory, a path
  under a file, the input itself. Creates missing parent directories."""
  output_path = Path(output_path)
  if output_path.is_dir():
    raise ValueError(
      f"config.output: {output_path} is a directory; give a file name, e.g. {output_path / 'emb.parquet'}"
    )
  if input_path is not None and output_path.exists() and output_path.samefile(input_path):
    raise ValueError(f"config.output: {output_path} is the input file; give another name.")
  try:
    output_path.parent.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise ValueError(f"config.output: {output_path.parent} is not a directory (a file is in the way).") from None
  if not os.access(output_path.parent, os.W_OK):
    raise ValueError(f"config.output: cannot write in {output_path.parent}.")
  return output_path


def _remove_stale_temp_files(output_path: Path) -> None:
  """Removes temporary files of earlier jobs on this output whose process is gone (SIGKILL skips all cleanup)."""
  for tmp in output_path.parent.glob(f".{output_path.name}.tmp-*"):
    pid = tmp.name.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
      continue
    try:
      os.kill(int(pid), 0)
    except ProcessLookupError:
      tmp.unlink(missing_ok=True)
    except PermissionError:
      pass  # another user's live process


@contextlib.contextmanager
def _sigterm_raises():
  """SIGTERM raises SystemExit(143) while the body runs, so ``finally`` blocks (temp file removal) run; the
  default action would end the process on the spot. Only the main thread can install handlers."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    raise SystemExit(128 + signum)

  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def embed_file(
  embedder: Embedder,
  input_path: str | Path,
  output_path: str | Path,
  *,
  skip_bad_lines: bool = False,
  skip_empty_texts: bool = False,
  chunk_size: int = 4096,
  progress: bool = True,
  fmt: str = "auto",
) -> ReadStats:
  """Embeds every post; the Parquet file appears under ``output_path`` only once complete."""
  output_path = check_output_path(output_path, input_path)
  _remove_stale_temp_files(output_path)
  tmp_path = output_path.with_name(f".{output_path.name}.tmp-{os.getpid()}")
  schema = pa.schema(
    [("id", pa.string()), ("embedding", pa.list_(pa.float32(), embedder.dim))],
    metadata={"model": embedder.name, "dim": str(embedder.dim), "max_length": str(embedder.max_length)},
  )
  stats = ReadStats()
  records = read_posts(
    input_path, skip_bad_lines=skip_bad_lines, skip_empty_texts=skip_empty_texts, stats=stats, fmt=fmt
  )

  def count_truncated(n: int) -> None:
    stats.truncated += n

  with _sigterm_raises():
    try:
      with pq.ParquetWriter(tmp_path, schema) as writer:
        stream = embedder.embed_stream(records, chunk_size=chunk_size, progress=progress, on_truncated=count_truncated)
        for ids, vectors in stream:
          embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), embedder.dim)
          table = pa.table({"id": pa.array([str(i) for i in ids]), "embedding": embedding}, schema=schema)
          writer.write_table(table)
      os.replace(tmp_path, output_path)
    finally:
      tmp_path.unlink(missing_ok=True)
  return stats


def run_embed_job(config) -> ReadStats:
  """Entry point shared by launch/embed.py and notebooks: validates the config, embeds, reports."""
  for field in ("input", "output"):
    if not config.get(field):
      raise ValueError(f"config.{field} is required (e.g. --config.{field}=...).")
  if not Path(config.input).is_file():
    raise FileNotFoundError(f"config.input: {config.input} does not exist or is not a file.")
  check_output_path(config.output, config.input)  # before the model loads and anything is embedded
  dtype = dtype_of(config.dtype)
  embedder = Embedder.from_pretrained(
    config.model, max_length=config.max_length, batch_size=config.batch_size, dtype=dtype
  )
  stats = embed_file(
    embedder,
    config.input,
    config.output,
    skip_bad_lines=config.skip_bad_lines,
    skip_empty_texts=config.skip_empty_texts,
    chunk_size=config.chunk_size,
    fmt=config.input_format,
  )
  counts = stats.report()
  counts = f"; {counts}" if counts else ""
  print(f"Wrote {stats.read} embeddings of dim {embedder.dim} to {config.output}{counts}.")
  if stats.truncated:
    print(
      f"{stats.truncated} of {stats.read} texts were longer than max_length={embedder.max_length} tokens and were "
      "embedded from their first tokens only (--config.max_length raises the limit, up to the model's)."
    )
  return stats
