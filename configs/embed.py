"""Batch embedding: `python launch/embed.py --config configs/embed.py[:quick] --config.input=posts.jsonl
--config.output=emb.parquet` (one file) or `--config.output=emb/` (a directory of resumable part files).

The default is the pretrained base model, mean-pooled and L2-normalised, with no projection, so its output can
be checked against sentence-transformers. Point `model` at `<workdir>/export` to embed with a fine-tuned model.
"""

import ml_collections
from ml_collections import config_dict

from postembed_jax import config_args
from postembed_jax.models import hf_io
from postembed_jax.serving import batch_embed

VARIANTS = config_args.Variants(quick=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = VARIANTS.parse(arg)
  config = ml_collections.ConfigDict()
  config.model = hf_io.DEFAULT_MODEL  # short name, Hugging Face directory or our export
  # A file, a directory or a glob of .jsonl ({"id", "text"} per line), .parquet or text (one post per line).
  config.input = config_dict.placeholder(str)
  config.input_format = "auto"  # auto (by suffix) | jsonl | text | parquet
  config.id_field = "id"  # JSONL field / Parquet column of the post id
  config.text_field = "text"  # JSONL field / Parquet column of the post text
  # Ends in .parquet: one file with columns id, embedding. Else a directory of part-NNNNN-of-MMMMM.parquet files;
  # a rerun skips the finished parts (docs/batch_embedding.md).
  config.output = config_dict.placeholder(str)
  config.num_parts = config_dict.placeholder(int)  # directory output: this many parts (wins over posts_per_part)
  config.posts_per_part = batch_embed.DEFAULT_POSTS_PER_PART  # directory output: records per part
  config.precision = "float32"  # float32 | float16 | int8 (per-vector scale) | binary (packed sign bits)
  config.dim = config_dict.placeholder(int)  # keep the first dim dimensions of a Matryoshka export, renormalised
  config.max_length = config_dict.placeholder(int)  # None: the model's own (sentence-transformers' setting)
  config.batch_size = 64
  config.chunk_size = 4096  # posts held in memory at once
  config.dtype = "float32"  # or bfloat16
  config.mesh_data = -1  # devices each batch is split over (a data mesh; weights replicated): -1 = every local one
  # devices JAX makes of a CPU host (postembed_jax/cpu_devices.py): 0 = JAX's own, -1 = one per core
  config.cpu_devices = 0
  # short posts share rows (block-diagonal attention): less padding, the same vectors within 1e-5; 1.08x and 1.11x
  # the unpacked path in two runs on the idle 2-core CPU (benchmarks/results/embed_throughput.md; not measured on a
  # GPU or TPU, where it applies too)
  config.pack = True
  config.skip_bad_lines = False  # malformed lines: counted and skipped instead of stopping the job
  config.skip_empty_texts = False  # empty / whitespace-only texts: skipped and counted instead of stopping the job
  # local: this process. Else a Beam runner (DirectRunner, FlinkRunner, SparkRunner, DataflowRunner, ...) with
  # pipeline_options passed to Beam as flags, e.g. "--flink_master=host:8081" (docs/batch_embedding.md).
  config.runner = "local"
  config.pipeline_options = ""
  if args.quick:
    config.max_length = 128
  return config
