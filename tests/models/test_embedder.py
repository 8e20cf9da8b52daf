"""Embedder shape policy: which (rows, length) shapes exist, so compilation stays bounded."""

import types

from postembed_jax.data import tokenize
from postembed_jax.models.embedder import DEFAULT_BUCKETS, Embedder


def test_bucket_lengths_end_at_max_length():
  assert tokenize.bucket_list(128, DEFAULT_BUCKETS) == (16, 32, 48, 64, 80, 96, 112, 128)
  assert tokenize.bucket_list(100, DEFAULT_BUCKETS) == (16, 32, 48, 64, 80, 96, 100)


def test_warm_up_compiles_every_shape_a_batch_can_take():
  shapes = []
  fake = types.SimpleNamespace(
    buckets=(16, 32),
    batch_size=64,
    _batch_buckets=(8, 32, 64),
    tokenizer=types.SimpleNamespace(pad_token_id=0),
    embed_token_ids=lambda ids: shapes.append((len(ids), len(ids[0]))),
  )
  Embedder.warm_up(fake, 6)
  assert shapes == [(8, 16), (8, 32)]
  shapes.clear()
  Embedder.warm_up(fake, 33)
  assert shapes == [(n, length) for length in (16, 32) for n in (8, 32, 64)]
