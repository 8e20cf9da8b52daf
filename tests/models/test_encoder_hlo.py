"""The lowered backward pass of a BERT-base tower in bfloat16 has no bfloat16 scatter-add (issue 14, item 1).

On GPUs XLA emits a contended bfloat16 scatter-add as a compare-and-swap loop; the token-type and position rows
used to be three of them. Lowering works on abstract shapes, so nothing of BERT-base's size is allocated.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from postembed_jax.models.encoder import EncoderConfig, PostEncoder

BERT_BASE = EncoderConfig(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)


def scatters(cfg: EncoderConfig, *, segmented: bool = False, rows: int = 32, length: int = 128) -> list[str]:
  """Result types of the scatters in the HLO of the tower's gradient with dropout on, e.g. ['f32[30522,768]']."""
  abstract = nnx.eval_shape(lambda: PostEncoder(cfg, embed_dim=None, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  graphdef, params = nnx.split(abstract, nnx.Param)

  def loss(params, ids, mask, key):
    model = nnx.merge(graphdef, params)
    kw = dict(deterministic=False, rngs=nnx.Rngs(dropout=key))
    if segmented:
      return jnp.sum(model.embed_segments(ids, mask, max_segments=4, **kw))
    return jnp.sum(model(ids, mask, **kw))

  tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32)
  hlo = jax.jit(jax.grad(loss)).lower(params, tokens, tokens, jax.random.key(0)).as_text(dialect="hlo")
  return re.findall(r"= (\w+\[[\d,]*\])\S* scatter\(", hlo)


def test_bert_base_bf16_backward_scatters_only_the_word_table_in_f32():
  # Before: ['bf16[2,768]', 'bf16[512,768]', 'bf16[30522,768]'] (token types, positions, words).
  assert scatters(BERT_BASE) == ["f32[30522,768]"]


@pytest.mark.parametrize("layout,segmented", [("roberta", False), ("bert", True)])
def test_gathered_positions_scatter_in_f32(layout, segmented):
  """RoBERTa's mask-dependent positions and packed rows' restarting positions keep a gather, in float32."""
  cfg = dataclasses.replace(BERT_BASE, num_layers=1, layout=layout, pad_token_id=1 if layout == "roberta" else 0)
  assert sorted(scatters(cfg, segmented=segmented)) == ["f32[30522,768]", "f32[512,768]"]
