"""Batch embedding: `python launch/embed.py --config configs/embed.py[:quick] --config.input=posts.jsonl
--config.output=emb.parquet`.

The default is the pretrained base model, mean-pooled and L2-normalised, with no projection, so its output can
be checked against sentence-transformers. Point `model` at `<workdir>/export` to embed with a fine-tuned model.
"""

import ml_collections
from ml_collections import config_dict

from postembed_jax import config_args
from postembed_jax.models import hf_io

VARIANTS = config_args.Variants(quick=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = VARIANTS.parse(arg)
  config = ml_collections.ConfigDict()
  config.model = hf_io.DEFAULT_MODEL  # short name, Hugging Face directory or our export
  config.input = config_dict.placeholder(str)  # .jsonl ({"id", "text"} per line) or text (one post per line)
  config.output = config_dict.placeholder(str)  # .parquet with columns id, embedding
  config.input_format = "auto"  # auto | jsonl | text
  config.max_length = config_dict.placeholder(int)  # None: the model's own (sentence-transformers' setting)
  config.batch_size = 64
  config.chunk_size = 4096  # posts held in memory at once
  config.dtype = "float32"  # or bfloat16
  config.skip_bad_lines = False  # malformed lines: counted and skipped instead of stopping the job
  config.skip_empty_texts = False  # empty / whitespace-only texts: skipped and counted instead of stopping the job
  if args.quick:
    config.max_length = 128
  return config
