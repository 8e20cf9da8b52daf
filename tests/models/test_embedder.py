"""Embedder shape policy: which (rows, length) shapes exist, so compilation stays bounded."""

import types

import numpy as np

from postembed_jax.serving.embedder import Embedder, bucket_lengths, pad_to_bucket


def test_bucket_lengths_end_at_max_length():
  assert bucket_lengths(128) == (16, 32, 48, 64, 80, 96, 112, 128)
  assert bucket_lengths(100) == (16, 32, 48, 64, 80, 96, 100)


def test_pad_to_bucket_pads_rows_and_length():
  ids, mask = pad_to_bucket([[5, 6, 7], [8]], (4, 8), pad_id=0, rows=4)
  np.testing.assert_array_equal(ids, [[5, 6, 7, 0], [8, 0, 0, 0], [0] * 4, [0] * 4])
  np.testing.assert_array_equal(mask.sum(1), [3, 1, 0, 0])


def test_warm_up_compiles_every_shape_a_batch_can_take():
  shapes = []
  fake = types.SimpleNamespace(buckets=(16, 32), batch_size=64, _batch_buckets=(8, 32, 64),
                               tokenizer=types.SimpleNamespace(pad_token_id=0),
                               embed_token_ids=lambda ids: shapes.append((len(ids), len(ids[0]))))
  Embedder.warm_up(fake, 6)
  assert shapes == [(8, 16), (8, 32)]
  shapes.clear()
  Embedder.warm_up(fake, 33)
  assert shapes == [(n, length) for length in (16, 32) for n in (8, 32, 64)]
