"""Near-line embedding service: `python launch/serve.py --config configs/serve.py --config.model=<export dir>`.

Posts are durable in `db_path` (SQLite, WAL) before they are acknowledged; `index_path` is a cache of the
nearest-neighbour index that is rebuilt from the database when it is missing or stale. One service process owns
one database. `--config configs/serve.py:tiny` gives test-sized settings (short texts, small batches, no warm-up).
"""

import ml_collections
from ml_collections import config_dict

from postembed_jax import config_args
from postembed_jax.models import hf_io

VARIANTS = config_args.Variants(tiny=False)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = VARIANTS.parse(arg)
  config = ml_collections.ConfigDict()
  config.model = hf_io.DEFAULT_MODEL  # short name, Hugging Face directory or our export
  config.max_length = config_dict.placeholder(int)  # None: the model's own (sentence-transformers' setting)
  config.dtype = "float32"  # or bfloat16
  config.warmup = True  # compile every (batch, length) shape before serving, so no request waits on XLA

  config.db_path = "workdirs/serve/posts.sqlite3"
  config.index_path = "workdirs/serve/posts.usearch"
  config.sync = "FULL"  # SQLite synchronous mode: FULL survives power loss, NORMAL only process crashes

  config.max_batch = 32  # posts per worker batch: one store commit, one index add
  # Rows per model call; each worker batch is sorted by length first, so rows are padded only to their own bucket.
  # On a CPU one row is fastest (docs/serving.md); raise it on GPU/TPU.
  config.embed_batch_size = 1
  config.max_wait_ms = 20.0  # how long the first queued post may wait for others to fill a batch
  config.max_queue = 4096  # queued (accepted, not yet embedded) posts before the API answers 429
  config.max_text_chars = 20_000
  config.max_request_posts = 256  # posts per batch request

  config.exact_search_below = 20_000  # brute-force search while the collection is this small
  config.index_save_every_s = 30.0  # the index is also saved on shutdown; the database is the truth
  config.max_search_k = 1000

  config.host = "127.0.0.1"
  config.port = 8000
  config.log_level = "info"
  config.access_log = True  # one log line per request; turn off for load tests
  config.compilation_cache_dir = config_dict.placeholder(str)  # JAX persistent cache: faster restarts
  if args.tiny:
    config.max_length = 64
    config.max_batch = 8
    config.warmup = False
  return config
