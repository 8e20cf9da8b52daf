"""Packing several posts into one row (segment ids in the mask) gives each post the embedding it has alone."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from postembed_jax.models.encoder import EncoderConfig, PostEncoder, position_ids

TINY = EncoderConfig(
  vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48, max_position_embeddings=40
)
ROBERTA = dataclasses.replace(TINY, layout="roberta", pad_token_id=1, model_type="roberta")


def _texts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, TINY.vocab_size, size=n) for n in lengths]


def _pack(texts, length, pad_id):
  """One row: the texts back to back, segment k for the k-th, then padding."""
  ids, seg = np.full(length, pad_id, np.int32), np.zeros(length, np.int32)
  start = 0
  for k, t in enumerate(texts, 1):
    ids[start : start + len(t)], seg[start : start + len(t)] = t, k
    start += len(t)
  return ids, seg


@pytest.mark.parametrize("cfg", [TINY, ROBERTA], ids=["bert", "roberta"])
@pytest.mark.parametrize("pooling,embed_dim,normalize", [("mean", 8, True), ("cls", None, False)])
def test_packed_posts_embed_as_alone(cfg, pooling, embed_dim, normalize):
  model = PostEncoder(cfg, embed_dim=embed_dim, pooling=pooling, normalize=normalize, rngs=nnx.Rngs(0))
  rows = [_texts([7, 12, 5], seed=1), _texts([16, 9], seed=2)]  # three posts in one row, two in the other
  packed = [_pack(texts, 36, cfg.pad_token_id) for texts in rows]
  ids, seg = (jnp.asarray(np.stack(a)) for a in zip(*packed))
  got = np.asarray(model.embed_segments(ids, seg, max_segments=4))
  assert got.shape == (2, 4, model.output_dim)
  for r, texts in enumerate(rows):
    for k, text in enumerate(texts):
      alone_ids, alone_mask = _pack([text], 20, cfg.pad_token_id)
      alone = np.asarray(model(jnp.asarray(alone_ids[None]), jnp.asarray(alone_mask[None])))[0]
      np.testing.assert_allclose(got[r, k], alone, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got[r, len(texts) :], 0.0)  # absent segments
  # A post's neighbours in the row matter to nothing but its own segment: a plain-mask call over the whole row
  # mixes them (so the comparison above is not vacuous).
  whole = np.asarray(model(ids, (seg > 0).astype(jnp.int32)))
  assert np.abs(whole[0, : got.shape[2]] - got[0, 0]).max() > 1e-3


def test_positions_restart_per_segment():
  seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(position_ids(seg, TINY), [[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 0, 1, 2]])
  # RoBERTa counts from pad_token_id + 1 and parks padding on pad_token_id, as transformers does
  np.testing.assert_array_equal(position_ids(seg, ROBERTA), [[2, 3, 4, 2, 3, 2, 1, 1], [2, 3, 4, 5, 6, 1, 1, 1]])


def test_packed_dropout_is_per_segment_too():
  """Training on packed rows (dropout on) keeps segments apart: a change in one post moves no other post."""
  model = PostEncoder(TINY, embed_dim=8, rngs=nnx.Rngs(0))
  a, b = _texts([9, 11], seed=3)
  ids, seg = _pack([a, b], 24, 0)
  changed = ids.copy()
  changed[0] = (changed[0] + 1) % TINY.vocab_size
  out = [
    np.asarray(
      model.embed_segments(
        jnp.asarray(x[None]), jnp.asarray(seg[None]), max_segments=2, deterministic=False, rngs=nnx.Rngs(dropout=5)
      )
    )[0]
    for x in (ids, changed)
  ]
  np.testing.assert_allclose(out[0][1], out[1][1], atol=1e-6, rtol=0)
  assert np.abs(out[0][0] - out[1][0]).max() > 1e-4
