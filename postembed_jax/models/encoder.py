"""Flax NNX transformer encoder for BERT-family checkpoints, pooled and projected to a post embedding.

One module tree serves both checkpoint layouts we read: BERT (BERT, MiniLM) and RoBERTa (RoBERTa, XLM-R).
They differ only in how position ids are counted and in the padding offset, so ``layout`` switches that alone.
Every parameter carries logical axis names (``vocab``, ``embed``, ``heads``, ``mlp``, ``proj``...) that the
sharding rules in the training config map onto mesh axes; nothing here knows about meshes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

SUPPORTED_MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}
POOLINGS = ("mean", "cls")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Architecture of the encoder, read from a checkpoint's ``config.json`` (see ``from_hf_config``)."""

  vocab_size: int
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pad_token_id: int = 0
  layout: str = "bert"  # "bert" or "roberta" (position ids start after the padding index)
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  model_type: str = "bert"

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any]) -> EncoderConfig:
    model_type = hf.get("model_type", "bert")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"Unsupported model_type {model_type!r}; supported: {sorted(SUPPORTED_MODEL_TYPES)}.")
    return cls(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf.get("max_position_embeddings", 512),
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
      hidden_act=hf.get("hidden_act", "gelu"),
      pad_token_id=hf.get("pad_token_id", 0) if hf.get("pad_token_id") is not None else 0,
      layout=SUPPORTED_MODEL_TYPES[model_type],
      hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
      attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
      model_type=model_type,
    )


_ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "relu": jax.nn.relu,
}


def _init(initializer, axes):
  """Attach logical axis names; placement happens in the trainer (jit out_shardings), not at creation."""
  return nnx.with_partitioning(initializer, axes, eager_sharding=False)


def _dense(rngs, din, dout, axes, dtype, param_dtype=jnp.float32):
  return nnx.Linear(
    din,
    dout,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
    kernel_init=_init(nnx.initializers.normal(0.02), axes),
    bias_init=_init(nnx.initializers.zeros_init(), (axes[1],)),
  )


def _layer_norm(rngs, dim, eps, dtype):
  return nnx.LayerNorm(
    dim,
    epsilon=eps,
    dtype=dtype,
    rngs=rngs,
    scale_init=_init(nnx.initializers.ones_init(), ("norm",)),
    bias_init=_init(nnx.initializers.zeros_init(), ("norm",)),
  )


def _embed(rngs, num, dim, axes, dtype):
  return nnx.Embed(num, dim, dtype=dtype, rngs=rngs, embedding_init=_init(nnx.initializers.normal(0.02), axes))


def position_ids(attention_mask: jax.Array, cfg: EncoderConfig) -> jax.Array:
  """BERT counts positions 0..L-1; RoBERTa counts real tokens from pad_token_id + 1 and parks padding on it."""
  if cfg.layout == "roberta":
    mask = attention_mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + cfg.pad_token_id
  return jnp.broadcast_to(jnp.arange(attention_mask.shape[1]), attention_mask.shape)


class Embeddings(nnx.Module):
  def __init__(self, cfg: EncoderConfig, *, dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    self.word = _embed(rngs, cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), dtype)
    self.position = _embed(rngs, cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"), dtype)
    self.token_type = _embed(rngs, cfg.type_vocab_size, cfg.hidden_size, (None, "embed"), dtype)
    self.norm = _layer_norm(rngs, cfg.hidden_size, cfg.layer_norm_eps, dtype)
    self.dropout = nnx.Dropout(cfg.hidden_dropout)

  def __call__(self, input_ids, attention_mask, *, deterministic: bool, rngs: nnx.Rngs | None):
    x = (
      self.word(input_ids)
      + self.position(position_ids(attention_mask, self.cfg))
      + self.token_type(jnp.zeros_like(input_ids))
    )
    return self.dropout(self.norm(x), deterministic=deterministic, rngs=rngs)


class SelfAttention(nnx.Module):
  def __init__(self, cfg: EncoderConfig, *, dtype, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.num_heads = cfg.num_heads
    self.query = _dense(rngs, h, h, ("embed", "heads"), dtype)
    self.key = _dense(rngs, h, h, ("embed", "heads"), dtype)
    self.value = _dense(rngs, h, h, ("embed", "heads"), dtype)
    self.output = _dense(rngs, h, h, ("heads", "embed"), dtype)
    self.dropout = nnx.Dropout(cfg.attention_dropout)

  def __call__(self, x, bias, *, deterministic: bool, rngs: nnx.Rngs | None):
    b, l, h = x.shape
    split = lambda t: t.reshape(b, l, self.num_heads, h // self.num_heads)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(h / self.num_heads)
    probs = jax.nn.softmax(scores + bias, axis=-1).astype(x.dtype)
    probs = self.dropout(probs, deterministic=deterministic, rngs=rngs)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, l, h)
    return self.output(ctx)


class Layer(nnx.Module):
  """Post-LayerNorm transformer block, as in BERT and RoBERTa."""

  def __init__(self, cfg: EncoderConfig, *, dtype, rngs: nnx.Rngs):
    self.attention = SelfAttention(cfg, dtype=dtype, rngs=rngs)
    self.attention_norm = _layer_norm(rngs, cfg.hidden_size, cfg.layer_norm_eps, dtype)
    self.intermediate = _dense(rngs, cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), dtype)
    self.output = _dense(rngs, cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), dtype)
    self.output_norm = _layer_norm(rngs, cfg.hidden_size, cfg.layer_norm_eps, dtype)
    self.dropout = nnx.Dropout(cfg.hidden_dropout)
    self.act = _ACTIVATIONS[cfg.hidden_act]

  def __call__(self, x, bias, *, deterministic: bool, rngs: nnx.Rngs | None):
    a = self.attention(x, bias, deterministic=deterministic, rngs=rngs)
    x = self.attention_norm(x + self.dropout(a, deterministic=deterministic, rngs=rngs))
    m = self.output(self.act(self.intermediate(x)))
    m = self.dropout(m, deterministic=deterministic, rngs=rngs)
    return self.output_norm(x + m)


class TransformerEncoder(nnx.Module):
  """Token ids -> contextual token states [B, L, hidden]."""

  def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    if cfg.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"Unsupported hidden_act {cfg.hidden_act!r}; supported: {sorted(_ACTIVATIONS)}.")
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([Layer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])

  def __call__(self, input_ids, attention_mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    """``rngs`` (a ``dropout`` stream) is needed only when ``deterministic`` is False."""
    x = self.embeddings(input_ids, attention_mask, deterministic=deterministic, rngs=rngs)
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
    for layer in self.layers:
      x = layer(x, bias, deterministic=deterministic, rngs=rngs)
    return x


def pool(states: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """Masked mean (sentence-transformers' default) or the first token's state."""
  if pooling == "cls":
    return states[:, 0]
  if pooling == "mean":
    mask = attention_mask[..., None].astype(jnp.float32)
    summed = jnp.sum(states.astype(jnp.float32) * mask, axis=1)
    return summed / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
  raise ValueError(f"Unknown pooling {pooling!r}; choose one of {POOLINGS}.")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class PostEncoder(nnx.Module):
  """The shared (siamese) tower: encoder -> pooling -> optional projection to ``embed_dim`` -> optional L2 norm."""

  def __init__(
    self,
    cfg: EncoderConfig,
    *,
    embed_dim: int | None = 50,
    pooling: str = "mean",
    normalize: bool = True,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    if pooling not in POOLINGS:
      raise ValueError(f"Unknown pooling {pooling!r}; choose one of {POOLINGS}.")
    self.encoder = TransformerEncoder(cfg, dtype=dtype, rngs=rngs)
    self.pooling = pooling
    self.normalize = normalize
    self.embed_dim = embed_dim
    self.projection = _dense(rngs, cfg.hidden_size, embed_dim, ("embed", "proj"), jnp.float32) if embed_dim else None

  @property
  def output_dim(self) -> int:
    return self.embed_dim or self.encoder.cfg.hidden_size

  def __call__(self, input_ids, attention_mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    states = self.encoder(input_ids, attention_mask, deterministic=deterministic, rngs=rngs)
    x = pool(states, attention_mask, self.pooling)
    if self.projection is not None:
      x = self.projection(x)
    return l2_normalize(x) if self.normalize else x
