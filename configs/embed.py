"""Batch embedding: `python launch/embed.py --config configs/embed.py --config.input=posts.jsonl --config.output=emb.parquet`.

The default is the pretrained base model, mean-pooled and L2-normalised, with no projection, so its output can
be checked against sentence-transformers. Point `model` at `<workdir>/export` to embed with a fine-tuned model.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = "all-MiniLM-L6-v2"  # short name, Hugging Face directory or our export
  config.input = config_dict.placeholder(str)  # .jsonl ({"id", "text"} per line) or text (one post per line)
  config.output = config_dict.placeholder(str)  # .parquet with columns id, embedding
  config.input_format = "auto"  # auto | jsonl | text
  config.max_length = config_dict.placeholder(int)  # None: the model's own (sentence-transformers' setting)
  config.batch_size = 64
  config.chunk_size = 4096  # posts held in memory at once
  config.dtype = "float32"  # or bfloat16
  config.skip_bad_lines = False
  if arg == "quick":
    config.max_length = 128
  return config
