"""Near-line embedding service: `python launch/serve.py --config configs/serve.py --config.model=<export dir>`.

Posts are durable in `db_path` (SQLite, WAL) before they are acknowledged; `index_path` is a cache of the
nearest-neighbour index that is rebuilt from the database when it is missing or stale. With the default
`queue="sqlite"` one service process owns one database; with `queue="nats"` the API and the embed workers
(`launch/embed_worker.py`, same config) share it through a NATS JetStream broker (docs/serving.md).
`--config configs/serve.py:tiny` gives test-sized settings (short texts, small batches, no warm-up).
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

  # The log of submitted posts: "sqlite" (this process queues and embeds them; one process per database) or "nats"
  # (the API publishes to a JetStream stream and any number of `launch/embed_worker.py` processes embed them).
  config.queue = "sqlite"
  config.broker = ml_collections.ConfigDict()
  config.broker.url = "nats://127.0.0.1:4222"
  config.broker.stream = "POSTS"
  config.broker.subject = "posts"  # a post goes to posts.<hash of its id>
  config.broker.durable = "embed-workers"  # the workers' shared pull consumer
  config.broker.dead_letter_stream = "POSTS_DEAD"
  config.broker.dead_letter_subject = "posts_dead"
  config.broker.ack_wait_s = 30.0  # a batch unacknowledged this long (its worker died) goes to another worker
  config.broker.max_deliveries = 5  # a message delivered this often without being stored is dead-lettered
  config.broker.duplicate_window_s = 120.0  # a resend within it is dropped by the broker (Nats-Msg-Id)
  config.broker.publish_timeout_s = 5.0  # the API answers 503 when the broker does not confirm a post in time
  config.broker.follow_interval_ms = 10.0  # how often the API's index picks up what the workers stored

  config.exact_search_below = 20_000  # brute-force search while the collection is this small
  # Index vectors: f32 | f16 | i8 | b1 (usearch's; recall@10 against f32 in docs/serving.md). The store keeps f32.
  config.index_dtype = "f32"
  config.index_save_every_s = 30.0  # the index is also saved on shutdown; the database is the truth
  config.max_search_k = 1000

  config.host = "127.0.0.1"  # beyond loopback only with auth_token_file
  # A file holding a bearer token: every route but /health then needs "Authorization: Bearer <token>".
  config.auth_token_file = config_dict.placeholder(str)
  config.port = 8000
  config.log_level = "info"
  config.access_log = True  # one log line per request; turn off for load tests
  config.compilation_cache_dir = config_dict.placeholder(str)  # JAX persistent cache: faster restarts
  if args.tiny:
    config.max_length = 64
    config.max_batch = 8
    config.warmup = False
  return config
