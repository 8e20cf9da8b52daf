"""The batch embedding job, local runner: posts (serving/embed_io.py) -> Parquet (serving/vectors.py), streamed.

``config.output`` ending in .parquet is one file, written to a hidden temporary file next to it and renamed into
place once complete. Any other output is a directory of part files ``part-NNNNN-of-MMMMM.parquet``: part k holds
the input's records k*P to (k+1)*P - 1 in input order (P = ``posts_per_part``, or the record count over
``num_parts``), so a rerun maps the same posts to the same part. Each part is written to a temporary name and
renamed, so a part file that exists is complete and a rerun skips it: a killed job resumes where it stopped. A
``manifest.json`` written before the first part names the model, the vector format, the part layout and the input;
a job whose settings differ is refused, naming the difference, instead of mixing two kinds of vectors.

Temporary files are removed when the job fails or gets SIGTERM; a SIGKILLed job's by the next job on that output.
Every check of the config, the input and the output comes before anything is embedded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from postembed_jax import cpu_devices
from postembed_jax.models.dtypes import dtype_of
from postembed_jax.models.embedder import Embedder, data_mesh
from postembed_jax.serving import embed_io, vectors
from postembed_jax.serving.embed_io import Inputs, ReadStats

MANIFEST = "manifest.json"
DEFAULT_POSTS_PER_PART = 100_000


def part_name(k: int, num_parts: int) -> str:
  return f"part-{k:05d}-of-{num_parts:05d}.parquet"


def _as_inputs(inputs: Inputs | str | Path, fmt: str = "auto") -> Inputs:
  return inputs if isinstance(inputs, Inputs) else embed_io.resolve_inputs(inputs, fmt=fmt)


def _prepare_dir(path: Path) -> None:
  try:
    path.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise ValueError(f"config.output: {path} is not a directory (a file is in the way).") from None
  if not os.access(path, os.W_OK):
    raise ValueError(f"config.output: cannot write in {path}.")


def check_output_path(output_path: str | Path, inputs: Inputs | None = None) -> Path:
  """Fails at once, before anything is embedded, on an output file that could not be written: a directory, a path
  under a file, an input file. Creates missing parent directories."""
  output_path = Path(output_path)
  if output_path.is_dir():
    raise ValueError(
      f"config.output: {output_path} is a directory; give a file name, e.g. {output_path / 'emb.parquet'}"
    )
  if inputs is not None and output_path.exists() and any(output_path.samefile(p) for p in inputs.files):
    raise ValueError(f"config.output: {output_path} is an input file; give another name.")
  _prepare_dir(output_path.parent)
  return output_path


def check_output_dir(out_dir: str | Path, inputs: Inputs | None = None) -> Path:
  """The same for a directory of part files: not a file, no input inside it (a rerun would read its own parts)."""
  out_dir = Path(out_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise ValueError(
      f"config.output: {out_dir} is a file; give a directory for part files, or a name ending in .parquet."
    )
  if inputs is not None:
    inside = [p for p in inputs.files if out_dir.resolve() in p.resolve().parents]
    if inside:
      raise ValueError(f"config.output: {out_dir} holds the input file {inside[0]}; give another directory.")
  _prepare_dir(out_dir)
  return out_dir


def _remove_stale_temp_files(directory: Path, name_glob: str) -> None:
  """Removes temporary files of earlier jobs on these outputs whose process is gone (SIGKILL skips all cleanup)."""
  for tmp in directory.glob(f".{name_glob}.tmp-*"):
    pid = tmp.name.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
      continue
    try:
      os.kill(int(pid), 0)
    except ProcessLookupError:
      tmp.unlink(missing_ok=True)
    except PermissionError:
      pass  # another user's live process


_LIVE_TEMP_FILES: set[Path] = set()  # this job's temporary files, which a SIGTERM removes


@contextlib.contextmanager
def _sigterm_removes_temp_files():
  """While the body runs, SIGTERM removes this job's temporary files and ends the process with 143 on the spot.

  Not by raising SystemExit from the handler: that exception lands at whatever bytecode the main thread is at, for
  example between the two lock acquisitions of tqdm's write lock, and the exit can then hang (the progress bar's
  monitor thread is joined while it waits on the lock left held) until a SIGKILL, which leaves the files behind.
  The job's outputs are atomic, so ending without unwinding loses nothing. Only the main thread can install
  handlers."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    for path in list(_LIVE_TEMP_FILES):
      path.unlink(missing_ok=True)
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # a write the signal interrupted holds the stream's buffer: its lines are lost, not the exit
        pass
    os._exit(128 + signum)

  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _temp_file(path: Path):
  """A hidden temporary sibling of ``path`` (named by this process, so a later job can tell a dead job's),
  removed when the body fails or SIGTERM arrives; the body renames it into place."""
  tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  _LIVE_TEMP_FILES.add(tmp_path)
  try:
    yield tmp_path
  finally:
    tmp_path.unlink(missing_ok=True)
    _LIVE_TEMP_FILES.discard(tmp_path)


@contextlib.contextmanager
def _atomic_parquet(path: Path, schema: pa.Schema):
  """A ParquetWriter on a temporary file, renamed to ``path`` when the body completes."""
  with _temp_file(path) as tmp_path:
    with pq.ParquetWriter(tmp_path, schema) as writer:
      yield writer
    os.replace(tmp_path, path)


def _write_records(writer, embedder: Embedder, records: Iterable, schema: pa.Schema, stats: ReadStats, **stream):
  def count_truncated(n: int) -> None:
    stats.truncated += n

  for ids, batch in embedder.embed_stream(records, on_truncated=count_truncated, **stream):
    writer.write_table(vectors.to_table(ids, batch, schema))


def _schema(embedder: Embedder, precision: str, width: int | None) -> pa.Schema:
  width = vectors.check_width(width, embedder.dim, embedder.name)
  return vectors.output_schema(embedder.name, embedder.dim, embedder.max_length, precision, width)


def embed_file(
  embedder: Embedder,
  inputs: Inputs | str | Path,
  output_path: str | Path,
  *,
  skip_bad_lines: bool = False,
  skip_empty_texts: bool = False,
  chunk_size: int = 4096,
  progress: bool = True,
  fmt: str = "auto",
  precision: str = vectors.DEFAULT_PRECISION,
  width: int | None = None,
) -> ReadStats:
  """Embeds every post into one Parquet file, which appears under ``output_path`` only once complete."""
  inputs = _as_inputs(inputs, fmt)
  schema = _schema(embedder, precision, width)
  output_path = check_output_path(output_path, inputs)
  _remove_stale_temp_files(output_path.parent, output_path.name)
  stats = ReadStats()
  records = embed_io.read_posts(inputs, skip_bad_lines=skip_bad_lines, skip_empty_texts=skip_empty_texts, stats=stats)
  with _sigterm_removes_temp_files(), _atomic_parquet(output_path, schema) as writer:
    _write_records(writer, embedder, records, schema, stats, chunk_size=chunk_size, progress=progress)
  return stats


def _first_difference(old: dict, new: dict) -> str | None:
  for key, value in new.items():
    if old.get(key) == value:
      continue
    if key != "input":
      return f"{key} was {old.get(key)!r}, now {value!r}"
    before = old.get(key) or []
    for i, (a, b) in enumerate(zip(before, value)):
      if a != b:
        return f"input file {i + 1} was {a['path']} ({a['bytes']} bytes), now {b['path']} ({b['bytes']} bytes)"
    return f"input had {len(before)} files, now {len(value)}"
  return None


def _check_manifest(out_dir: Path, job: dict) -> dict | None:
  """The manifest already in ``out_dir`` (None when new); refuses one of another job, naming the difference."""
  path = out_dir / MANIFEST
  if not path.exists():
    if next(out_dir.glob("part-*.parquet"), None) is not None:
      raise ValueError(f"config.output: {out_dir} holds part files but no {MANIFEST}; give another directory.")
    return None
  try:
    old = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError):
    raise ValueError(f"config.output: {path} is not a manifest of this job; give another directory.") from None
  difference = _first_difference(old, job)
  if difference:
    raise ValueError(
      f"config.output: {out_dir} holds parts of another job ({difference}); give another directory or delete it."
    )
  return old


def _part_layout(records: int, num_parts: int | None, posts_per_part: int | None) -> tuple[int, int]:
  """(num_parts, posts_per_part) for ``records`` records: ``num_parts`` when given, else ``posts_per_part``."""
  for field, value in (("num_parts", num_parts), ("posts_per_part", posts_per_part)):
    if value is not None and value < 1:
      raise ValueError(f"config.{field}={value} must be at least 1.")
  if num_parts:
    return num_parts, max(1, math.ceil(records / num_parts))
  per_part = posts_per_part or DEFAULT_POSTS_PER_PART
  return max(1, math.ceil(records / per_part)), per_part


def embed_parts(
  embedder: Embedder,
  inputs: Inputs | str | Path,
  out_dir: str | Path,
  *,
  num_parts: int | None = None,
  posts_per_part: int | None = None,
  skip_bad_lines: bool = False,
  skip_empty_texts: bool = False,
  chunk_size: int = 4096,
  progress: bool = True,
  precision: str = vectors.DEFAULT_PRECISION,
  width: int | None = None,
  dtype: str = "float32",
) -> ReadStats:
  """Embeds every post into the part files of ``out_dir`` (module docstring); ``stats.parts_done`` counts the
  parts an earlier run had finished. ``dtype`` (the compute dtype) is recorded in the manifest."""
  inputs = _as_inputs(inputs)
  _part_layout(0, num_parts, posts_per_part)  # a bad part setting fails before the input is counted
  schema = _schema(embedder, precision, width)
  out_dir = check_output_dir(out_dir, inputs)
  meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
  job = {
    "model": embedder.name,
    "dim": embedder.dim,
    "max_length": embedder.max_length,
    "precision": precision,
    "width": int(meta.get("width", embedder.dim)),
    "dtype": dtype,
    "id_field": inputs.id_field,
    "text_field": inputs.text_field,
    "input": inputs.describe(),
  }
  old = _check_manifest(out_dir, job)
  records = old["records"] if old else embed_io.count_records(inputs)
  total, per_part = _part_layout(records, num_parts, posts_per_part)
  job.update(records=records, num_parts=total, posts_per_part=per_part)
  if old:
    _check_manifest(out_dir, job)
  _remove_stale_temp_files(out_dir, "part-*")
  _remove_stale_temp_files(out_dir, MANIFEST)
  names = [part_name(k, total) for k in range(total)]
  done = {k for k, name in enumerate(names) if (out_dir / name).exists()}
  stats = ReadStats(parts_done=len(done))
  stream = embed_io.read_indexed(
    inputs,
    skip_bad_lines=skip_bad_lines,
    skip_empty_texts=skip_empty_texts,
    stats=stats,
    wanted=lambda i: i // per_part not in done,
  )
  groups = itertools.groupby(stream, key=lambda r: r[0] // per_part)
  pending = next(groups, None)
  with _sigterm_removes_temp_files():
    if not old:
      with _temp_file(out_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(job, indent=2))
        os.replace(tmp, out_dir / MANIFEST)
    for k, name in enumerate(names):
      if k in done:
        continue
      # A part whose records were all skipped (bad or empty) is written empty, so the set of parts is complete.
      records_k = (r for _, r in pending[1]) if pending is not None and pending[0] == k else iter(())
      with _atomic_parquet(out_dir / name, schema) as writer:
        _write_records(writer, embedder, records_k, schema, stats, chunk_size=chunk_size, progress=progress)
      if pending is not None and pending[0] == k:
        pending = next(groups, None)
  return stats


def load_embedder(config) -> Embedder:
  """The embedder ``config`` names: loaded here by the local job and by every Beam worker (serving/beam.py)."""
  cpu_devices.use(config.get("cpu_devices", 0))
  mesh = data_mesh(config.mesh_data)  # a bad device count fails before the model loads
  return Embedder.from_pretrained(
    config.model,
    max_length=config.max_length,
    batch_size=config.batch_size,
    dtype=dtype_of(config.dtype),
    mesh=mesh,
    pack=config.pack,
  )


def run_embed_job(config) -> ReadStats:
  """The local job (serving/embed_job.py's ``run``, which launch/embed.py calls, picks it for runner=local):
  validates the config, embeds, reports."""
  if config.runner != "local":
    raise ValueError(f"config.runner={config.runner!r}: Beam runners start from serving/embed_job.py's run().")
  for field in ("input", "output"):
    if not config.get(field):
      raise ValueError(f"config.{field} is required (e.g. --config.{field}=...).")
  precision = vectors.check_precision(config.precision)
  inputs = embed_io.resolve_inputs(
    config.input, fmt=config.input_format, id_field=config.id_field, text_field=config.text_field
  )
  to_parts = not str(config.output).endswith(".parquet")
  # Before the model loads and anything is embedded:
  if to_parts:
    _part_layout(0, config.num_parts, config.posts_per_part)
    check_output_dir(config.output, inputs)
  else:
    check_output_path(config.output, inputs)
  embedder = load_embedder(config)
  common = dict(
    skip_bad_lines=config.skip_bad_lines,
    skip_empty_texts=config.skip_empty_texts,
    chunk_size=config.chunk_size,
    precision=precision,
    width=config.dim,
  )
  if to_parts:
    stats = embed_parts(
      embedder,
      inputs,
      config.output,
      num_parts=config.num_parts,
      posts_per_part=config.posts_per_part,
      dtype=config.dtype,
      **common,
    )
  else:
    stats = embed_file(embedder, inputs, config.output, **common)
  counts = stats.report()
  counts = f"; {counts}" if counts else ""
  width = config.dim or embedder.dim
  print(f"Wrote {stats.read} embeddings of dim {width} ({precision}) to {config.output}{counts}.")
  if stats.truncated:
    print(
      f"{stats.truncated} of {stats.read} texts were longer than max_length={embedder.max_length} tokens and were "
      "embedded from their first tokens only (--config.max_length raises the limit, up to the model's)."
    )
  return stats
