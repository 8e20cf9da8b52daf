"""What a batch embedding job reads: JSONL, plain text or Parquet, from one file, a directory or a glob.

``resolve_inputs`` does every check that needs no embedding (a missing file, a glob that matches nothing, a Parquet
file without the named columns), so bad input fails before the model loads. Records are numbered in input order
across files (blank JSONL lines are not records); that number, not the record's content, decides which part file a
post goes to, so a rerun on the same input maps the same posts to the same parts.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from postembed_jax.serving.texts import EmptyTextError, check_text

FORMATS = ("jsonl", "text", "parquet")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text"}
_PARQUET_BATCH_ROWS = 4096


class BadRecordError(ValueError):
  """A malformed input record; the message names the file and line (or Parquet row)."""


@dataclasses.dataclass
class ReadStats:
  read: int = 0
  skipped: int = 0  # malformed lines skipped (skip_bad_lines)
  empty: int = 0  # empty or whitespace-only texts skipped (skip_empty_texts)
  truncated: int = 0  # texts cut at the embedder's max_length (counted by the job)
  parts_done: int = 0  # part files a rerun found finished and skipped

  def report(self) -> str:
    """The counts besides ``read``, for the job's last line ('' when there are none)."""
    parts = [
      f"skipped {self.parts_done} finished parts" if self.parts_done else "",
      f"skipped {self.skipped} bad lines" if self.skipped else "",
      f"skipped {self.empty} empty texts" if self.empty else "",
      f"truncated {self.truncated} texts at max_length" if self.truncated else "",
    ]
    return ", ".join(p for p in parts if p)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The files of one job, in reading order, with their formats and the JSONL / Parquet field names."""

  files: tuple[Path, ...]
  formats: tuple[str, ...]
  id_field: str = "id"
  text_field: str = "text"

  def describe(self) -> list[dict]:
    """Absolute paths and sizes: what a rerun must find unchanged for its parts to hold the same posts."""
    return [{"path": str(p.resolve()), "bytes": p.stat().st_size} for p in self.files]


def format_of(path: Path, fmt: str) -> str:
  """``fmt``, or for "auto" the format ``path``'s suffix names (text for any other suffix)."""
  return fmt if fmt != "auto" else _SUFFIX_FORMATS.get(path.suffix, "text")


def resolve_inputs(spec: str | Path, *, fmt: str = "auto", id_field: str = "id", text_field: str = "text") -> Inputs:
  """``config.input`` -> its files: the file itself; a directory's files ending .jsonl/.json/.txt/.parquet (every
  non-hidden file when ``fmt`` is given), sorted; or a glob's matching files, sorted."""
  if fmt != "auto" and fmt not in FORMATS:
    raise ValueError(f"config.input_format={fmt!r}; choose auto, {', '.join(FORMATS)}.")
  spec = str(spec)
  path = Path(spec).expanduser()
  if glob.has_magic(spec) and not path.exists():
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
    if not files:
      raise FileNotFoundError(f"config.input: the glob {spec!r} matches no file.")
  elif path.is_dir():
    files = sorted(
      p
      for p in path.iterdir()
      if p.is_file() and not p.name.startswith((".", "_")) and (fmt != "auto" or p.suffix in _SUFFIX_FORMATS)
    )
    if not files:
      raise FileNotFoundError(f"config.input: the directory {path} holds no .jsonl, .json, .txt or .parquet file.")
  elif path.is_file():
    files = [path]
  else:
    raise FileNotFoundError(f"config.input: {spec} does not exist.")
  formats = tuple(format_of(p, fmt) for p in files)
  for p, f in zip(files, formats):
    if f == "parquet":
      _check_parquet_columns(p, id_field, text_field)
  return Inputs(tuple(files), formats, id_field, text_field)


def _check_parquet_columns(path: Path, id_field: str, text_field: str) -> None:
  try:
    schema = pq.read_schema(path)
  except (pa.ArrowInvalid, OSError) as e:
    raise ValueError(f"config.input: {path} is not a readable Parquet file ({e}).") from None
  for field, name, ok in (
    ("id_field", id_field, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)),
    ("text_field", text_field, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
  ):
    if name not in schema.names:
      raise ValueError(f"config.{field}: {path} has no column {name!r} (its columns: {', '.join(schema.names)}).")
    if not ok(schema.field(name).type):
      raise ValueError(f"config.{field}: column {name!r} of {path} is {schema.field(name).type}, not a string.")


def count_records(inputs: Inputs) -> int:
  """How many records the inputs hold (Parquet from its footers; text and JSONL by a pass over their lines)."""
  total = 0
  for path, fmt in zip(inputs.files, inputs.formats):
    if fmt == "parquet":
      total += pq.ParquetFile(path).metadata.num_rows
    else:
      with open(path, "rb") as f:
        total += sum(1 for raw in f if fmt == "text" or raw.strip())
  return total


def _raw_records(path: Path, fmt: str, inputs: Inputs) -> Iterator[tuple[int, object]]:
  """(line or row number, unparsed record), cheap enough to skip through the records of finished parts."""
  if fmt == "parquet":
    row = 0
    columns = [inputs.id_field, inputs.text_field]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
      for record in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
        row += 1
        yield row, record
    return
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      if fmt == "jsonl" and not raw.strip():
        continue
      yield line_no, raw


def _parse(raw, where: str, fmt: str, inputs: Inputs, text_id) -> tuple[object, str]:
  id_field, text_field = inputs.id_field, inputs.text_field
  if fmt == "parquet":
    record_id, text = raw
    for field, value in ((id_field, record_id), (text_field, text)):
      if value is None:
        raise BadRecordError(f"{where}: field {field!r} is null")
    return str(record_id), text
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise BadRecordError(f"{where}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
  line = line.rstrip("\r\n")
  if fmt == "text":
    return text_id, line
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise BadRecordError(f"{where}: bad JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(record, dict):
    raise BadRecordError(f"{where}: expected a JSON object with {id_field!r} and {text_field!r}")
  for field in (id_field, text_field):
    if field not in record:
      raise BadRecordError(f"{where}: missing field {field!r}")
  if not isinstance(record[text_field], str):
    raise BadRecordError(f"{where}: field {text_field!r} must be a string, got {type(record[text_field]).__name__}")
  if not isinstance(record[id_field], (str, int)) or isinstance(record[id_field], bool):
    raise BadRecordError(f"{where}: field {id_field!r} must be a string or integer")
  return str(record[id_field]), record[text_field]


def read_indexed(
  inputs: Inputs,
  *,
  skip_bad_lines: bool = False,
  skip_empty_texts: bool = False,
  stats: ReadStats | None = None,
  wanted: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, tuple[object, str]]]:
  """Yields (record number from 0, (id, text)) for the records ``wanted`` keeps (all by default); the others are
  not parsed. Plain text ids are line numbers (1-based), prefixed with the file's path below the inputs' common
  folder when there are several files. Raises BadRecordError on a malformed record unless ``skip_bad_lines``, and
  on an empty text (serving/texts.py's rule, the service's) unless ``skip_empty_texts``."""
  stats = stats if stats is not None else ReadStats()
  root = Path(os.path.commonpath([p.resolve() for p in inputs.files])) if len(inputs.files) > 1 else None
  index = -1
  for path, fmt in zip(inputs.files, inputs.formats):
    prefix = f"{path.resolve().relative_to(root)}:" if root is not None else ""
    for number, raw in _raw_records(path, fmt, inputs):
      index += 1
      if wanted is not None and not wanted(index):
        continue
      where = f"{path}:{'row ' if fmt == 'parquet' else ''}{number}"
      text_id = f"{prefix}{number}" if prefix else number
      record = check_record(
        raw, where, fmt, inputs, text_id, skip_bad_lines=skip_bad_lines, skip_empty_texts=skip_empty_texts, stats=stats
      )
      if record is not None:
        yield index, record


def check_record(
  raw, where: str, fmt: str, inputs: Inputs, text_id, *, skip_bad_lines: bool, skip_empty_texts: bool, stats: ReadStats
) -> tuple[object, str] | None:
  """One unparsed record (a JSONL / text line's bytes, a Parquet row's (id, text)) -> (id, text), or None when
  ``skip_bad_lines`` / ``skip_empty_texts`` skip it (counted in ``stats``); ``where`` names it in errors. The one
  record check of the local job and the Beam pipeline (serving/beam.py)."""
  try:
    record = _parse(raw, where, fmt, inputs, text_id)
  except BadRecordError:
    if not skip_bad_lines:
      raise
    stats.skipped += 1
    return None
  try:
    check_text(record[1])
  except EmptyTextError as e:
    if not skip_empty_texts:
      raise BadRecordError(f"{where}: {e} (--config.skip_empty_texts=True skips such posts)") from None
    stats.empty += 1
    return None
  stats.read += 1
  return record


def read_posts(inputs: Inputs | str | Path, **kwargs) -> Iterator[tuple[object, str]]:
  """(id, text) of every record: ``read_indexed`` without the numbers; a path is resolved as ``config.input``."""
  if not isinstance(inputs, Inputs):
    inputs = resolve_inputs(inputs)
  for _, record in read_indexed(inputs, **kwargs):
    yield record
