"""The batch embedding job on Apache Beam (``--config.runner=DirectRunner|FlinkRunner|SparkRunner|DataflowRunner``):
the local job's records, checks and Parquet schema, with the work spread over a Beam runner's workers.

JSONL / Parquet files -> each record checked by embed_io's rules -> Reshuffle (spreads the posts over the workers
whatever the files' sizes) -> RunInference: a KeyedModelHandler (ids ride along as keys) over ``EmbedderHandler``,
which loads the embedder once per worker process and embeds the batches BatchElements forms -> batches of rows
made by vectors.to_table -> WriteToParquetBatched: ``part-SSSSS-of-NNNNN.parquet`` in the output directory (or one
file for an output ending in .parquet), with the local job's schema and metadata.

Beam retries failed work itself, so a Beam job does not resume part by part as the local one does: it refuses an
output directory that already holds parts. Beam's readers give no line numbers, so a bad record is named by its
file and its first characters. Plain-text input (ids are line numbers) runs on the local runner only.
"""

from __future__ import annotations

import shlex
import tempfile
import threading
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam import coders
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from postembed_jax.models.embedder import Embedder
from postembed_jax.serving import batch_embed, embed_io, vectors
from postembed_jax.serving.embed_io import Inputs, ReadStats

# Beam's own DirectRunner first tries the Prism runner, which downloads a binary from GitHub at run time; offline
# the download fails (at once here; behind a firewall that drops packets, after a timeout) and it falls back to the
# Python FnApiRunner for a batch job. "DirectRunner" here runs that one directly; name PrismRunner or
# BundleBasedDirectRunner to get those.
DIRECT_RUNNER = "DirectRunner"
PART_PREFIX = "part"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"  # part-00000-of-00004.parquet, the local job's part names
METRICS_NAMESPACE = "postembed"
_RECORD_COUNTERS = ("read", "skipped", "empty")  # ReadStats fields counted while reading; "truncated" by the handler
_EMBED_LOCK = threading.Lock()  # one embedding at a time per process: the tokenizer is not thread-safe


class EmbedderHandler(ModelHandler):
  """Texts -> vectors with the job's embedder (batch_embed.load_embedder, as the local job), loaded once per worker
  process (RunInference shares it between the process's threads). Batches are ``chunk_size`` posts (fewer at the
  end of a bundle), the local job's chunks: the embedder sorts each by length, so big batches pad little, and
  BatchElements' adaptive sizing (from 1 post up) would only add padding and compilations."""

  def __init__(self, config):
    super().__init__(min_batch_size=config.chunk_size, max_batch_size=config.chunk_size)
    self._config = config
    self._truncated = Metrics.counter(METRICS_NAMESPACE, "truncated")

  def load_model(self) -> Embedder:
    return batch_embed.load_embedder(self._config)

  def run_inference(self, batch, model: Embedder, inference_args=None) -> list[np.ndarray]:
    with _EMBED_LOCK:
      ((_, out),) = model.embed_stream(enumerate(batch), chunk_size=len(batch), on_truncated=self._truncated.inc)
    return list(out)


class _CheckRecords(beam.DoFn):
  """(file, raw record) -> (id, text) by embed_io.check_record, with what it skips counted as Beam metrics."""

  def __init__(self, fmt: str, inputs: Inputs, *, skip_bad_lines: bool, skip_empty_texts: bool):
    self._fmt = fmt
    self._inputs = inputs
    self._skips = dict(skip_bad_lines=skip_bad_lines, skip_empty_texts=skip_empty_texts)
    self._counters = {name: Metrics.counter(METRICS_NAMESPACE, name) for name in _RECORD_COUNTERS}

  def process(self, element):
    path, raw = element
    if self._fmt == "jsonl" and not raw.strip():
      return []  # blank lines are not records, as in the local job
    if self._fmt == "jsonl":
      where = f"{path}, the line starting {raw[:40].decode('utf-8', 'replace')!r}"
    else:
      where = f"{path}, the row with {self._inputs.id_field}={raw[0]!r}"
    stats = ReadStats()
    record = embed_io.check_record(raw, where, self._fmt, self._inputs, None, stats=stats, **self._skips)
    for name, counter in self._counters.items():
      if getattr(stats, name):
        counter.inc(getattr(stats, name))
    return [] if record is None else [record]


def _input_files(config) -> tuple[Inputs, list[tuple[str, str]]]:
  """``config.input`` -> (its fields, for the record checks; its (file, format) pairs). A local file, directory or
  glob is checked by embed_io.resolve_inputs, as in the local job; a glob on one of Beam's filesystems (gs://,
  s3://, hdfs://, ...) is matched by Beam, and a Parquet file without the named columns fails in the pipeline."""
  fields = dict(id_field=config.id_field, text_field=config.text_field)
  if _is_local(config.input):
    inputs = embed_io.resolve_inputs(config.input, fmt=config.input_format, **fields)
    files = [(str(p), f) for p, f in zip(inputs.files, inputs.formats)]
  else:
    inputs = embed_io.Inputs((), (), **fields)
    paths = [m.path for m in FileSystems.match([config.input])[0].metadata_list]
    if not paths:
      raise FileNotFoundError(f"config.input: the glob {config.input!r} matches no file.")
    files = [(p, embed_io.format_of(Path(p), config.input_format)) for p in sorted(paths)]
  if any(f == "text" for _, f in files):
    raise ValueError(
      "config.input: plain-text input (ids are line numbers, which Beam's readers do not give) runs on "
      "--config.runner=local only; give JSONL or Parquet."
    )
  return inputs, files


def _read(pipeline: beam.Pipeline, inputs: Inputs, files: list[tuple[str, str]], config) -> beam.PCollection:
  """(id, text) of every record of the input files: their lines (JSONL) or rows (Parquet), split by Beam."""
  skips = dict(skip_bad_lines=config.skip_bad_lines, skip_empty_texts=config.skip_empty_texts)
  columns = [inputs.id_field, inputs.text_field]
  read = {
    "jsonl": beam.io.ReadAllFromText(coder=coders.BytesCoder(), with_filename=True),
    "parquet": beam.io.ReadAllFromParquet(with_filename=True, columns=columns)
    | "Columns" >> beam.MapTuple(lambda path, row: (path, tuple(row[c] for c in columns))),
  }
  parts = []
  for fmt in sorted({f for _, f in files}):
    parts.append(
      pipeline
      | f"{fmt}Files" >> beam.Create([p for p, f in files if f == fmt])
      | f"Read{fmt}" >> read[fmt]
      | f"Check{fmt}" >> beam.ParDo(_CheckRecords(fmt, inputs, **skips))
    )
  return parts | "AllRecords" >> beam.Flatten()


def _to_table(batch: list[tuple[str, np.ndarray]], schema) -> object:
  ids, rows = zip(*batch)
  return vectors.to_table(ids, np.stack(rows), schema)


def pipeline_options(config) -> PipelineOptions:
  """``config.pipeline_options`` (command-line flags, e.g. "--project=p --region=r") as Beam options."""
  options = PipelineOptions(shlex.split(config.pipeline_options or ""))
  if options.view_as(StandardOptions).runner is not None:
    raise ValueError("config.pipeline_options: give the runner as --config.runner, not --runner.")
  return options


def _runner(name: str):
  if name == DIRECT_RUNNER:
    return FnApiRunner()
  if name not in StandardOptions.KNOWN_RUNNER_NAMES and "." not in name:
    raise ValueError(
      f"config.runner={name!r}: give 'local' or a Beam runner ({', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}, "
      "or a runner's full Python name)."
    )
  return name


def _is_local(path: str) -> bool:
  return "://" not in path


def _check_output(output: str, inputs: Inputs) -> tuple[str, dict]:
  """Checks the output like the local job (before anything runs) -> (file prefix, WriteToParquetBatched's shard
  arguments). A directory must hold no part files: Beam writes all parts afresh, it does not resume."""
  if output.endswith(".parquet"):
    if _is_local(output):
      batch_embed.check_output_path(output, inputs)
    return output, dict(num_shards=1, shard_name_template="")
  if _is_local(output):
    batch_embed.check_output_dir(output, inputs)
  parts = FileSystems.join(output, f"{PART_PREFIX}-*.parquet")
  if FileSystems.match([parts])[0].metadata_list:
    raise ValueError(
      f"config.output: {output} already holds part files; a Beam job writes every part afresh (its runner retries "
      "failed work, there is no resume): give another directory or delete them."
    )
  return FileSystems.join(output, PART_PREFIX), dict(shard_name_template=SHARD_TEMPLATE, file_name_suffix=".parquet")


def _stats(result) -> ReadStats:
  """The job's counts from its Beam metrics (committed where the runner reports them, else attempted)."""
  stats = ReadStats()
  for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
    value = counter.committed if counter.committed is not None else counter.attempted
    name = counter.key.metric.name
    setattr(stats, name, getattr(stats, name) + (value or 0))
  return stats


def run_pipeline(config) -> ReadStats:
  """Embeds ``config.input`` into ``config.output`` on ``config.runner``; every check the local job makes of the
  config, the input and the output comes first, on the launching machine."""
  for field in ("input", "output"):
    if not config.get(field):
      raise ValueError(f"config.{field} is required (e.g. --config.{field}=...).")
  runner = _runner(config.runner)
  options = pipeline_options(config)
  precision = vectors.check_precision(config.precision)
  inputs, files = _input_files(config)
  prefix, shards = _check_output(str(config.output), inputs)
  if config.num_parts is not None and "num_shards" not in shards:
    shards["num_shards"] = config.num_parts
  # Loaded here once for its width and settings (and to fail on a bad model before any work); the workers load
  # their own copy.
  embedder = batch_embed.load_embedder(config)
  width = vectors.check_width(config.dim, embedder.dim, embedder.name)
  schema = vectors.output_schema(embedder.name, embedder.dim, embedder.max_length, precision, width)
  handler = EmbedderHandler(config.copy_and_resolve_references())
  pipeline = beam.Pipeline(runner=runner, options=options)
  _ = (
    _read(pipeline, inputs, files, config)
    | "Reshuffle" >> beam.Reshuffle()
    | "Embed" >> RunInference(KeyedModelHandler(handler))
    | "Rows" >> beam.BatchElements(min_batch_size=config.chunk_size, max_batch_size=config.chunk_size)
    | "Table" >> beam.Map(_to_table, schema)
    # pyarrow's defaults, which the local job writes with (Beam's own are no compression and "item" list fields).
    | "Write"
    >> beam.io.WriteToParquetBatched(prefix, schema=schema, codec="snappy", use_compliant_nested_type=True, **shards)
  )
  result = pipeline.run()
  result.wait_until_finish()
  stats = _stats(result)
  counts = stats.report()
  counts = f"; {counts}" if counts else ""
  print(f"Wrote {stats.read} embeddings of dim {width} ({precision}) to {config.output} with {config.runner}{counts}.")
  return stats


def read_output(path: str | Path) -> tuple[list[str], np.ndarray]:
  """(ids, float32 vectors) of a job's output: its one Parquet file, or its part files in name order."""
  path = Path(path)
  files = [path] if path.is_file() else sorted(path.glob(f"{PART_PREFIX}-*.parquet"))
  tables = [pq.read_table(f) for f in files]
  ids = [i for t in tables for i in t.column("id").to_pylist()]
  rows = [vectors.decode(t) for t in tables if t.num_rows]
  return ids, np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def time_against_local(config, runner: str = DIRECT_RUNNER, repeats: int = 2) -> dict:
  """Runs ``config`` on the local path and on ``runner``, alternately ``repeats`` times (the first runs also pay
  for XLA compilation), each into a fresh part directory (``config.output`` unused) -> the best seconds of each,
  posts, and the largest difference between their vectors: the Beam row of benchmarks/embed_throughput.py."""
  seconds = {"local": [], runner: []}
  with tempfile.TemporaryDirectory() as tmp:
    for attempt in range(repeats):
      outputs = {}
      for name in seconds:
        job = config.copy_and_resolve_references()
        job.runner, job.output = name, str(Path(tmp) / f"{name}-{attempt}")
        start = time.perf_counter()
        stats = batch_embed.run_embed_job(job) if name == "local" else run_pipeline(job)
        seconds[name].append(time.perf_counter() - start)
        outputs[name] = dict(zip(*read_output(job.output)))
  local, beamed = outputs["local"], outputs[runner]
  if local.keys() != beamed.keys():
    raise RuntimeError(f"{runner} wrote other ids than the local path ({len(beamed)} vs {len(local)} posts).")
  local_s, beam_s = min(seconds["local"]), min(seconds[runner])
  return {
    "runner": runner,
    "posts": stats.read,
    "local_s": local_s,
    "beam_s": beam_s,
    "overhead": beam_s / local_s,
    "max_abs_diff": float(max((np.abs(local[k] - beamed[k]).max() for k in local), default=0.0)),
  }
