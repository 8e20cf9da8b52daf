"""Flax NNX transformer encoder for BERT-family checkpoints, pooled and projected to a post embedding.

One module tree serves both checkpoint layouts we read: BERT (BERT, MiniLM) and RoBERTa (RoBERTa, XLM-R).
They differ only in how position ids are counted and in the padding offset, so ``layout`` switches that alone.
Every parameter carries logical axis names (``vocab``, ``embed``, ``heads``, ``mlp``, ``proj``...) that the
sharding rules in the training config map onto mesh axes; nothing here knows about meshes.

Several posts may share a row (packing): the mask then holds segment ids (0 = padding, k >= 1 = the k-th post),
tokens attend within their own segment only and positions restart at each segment's first token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

SUPPORTED_MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}
POOLINGS = ("mean", "cls")
# Accelerator options (docs/training.md, "Accelerator efficiency options"): how the encoder computes, not what.
# Training config fields of the same names set them; config.json neither stores nor supplies them.
ATTENTION_IMPLS = ("einsum", "xla", "cudnn", "auto")  # auto: cudnn on a GPU in 16-bit, xla elsewhere
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")  # the dropout masks' generator
GELUS = ("exact", "tanh")  # tanh: the approximation for hidden_act="gelu" (changes the model: off for parity)
REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots_saveable": jax.checkpoint_policies.dots_saveable,
}
ENCODER_OPTIONS = ("attention_impl", "prng_impl", "gelu", "scan_layers", "remat")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Architecture of the encoder, read from a checkpoint's ``config.json`` (see ``from_hf_config``), and the
  ``ENCODER_OPTIONS`` that choose how it is computed."""

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
  attention_dropout: float = 0.1  # not applied by the fused attention_impl ("xla", "cudnn")
  model_type: str = "bert"
  attention_impl: str = "einsum"
  prng_impl: str = "threefry2x32"
  gelu: str = "exact"
  scan_layers: bool = False  # one compiled layer body under lax.scan; parameters keep their per-layer layout
  remat: str = "none"  # per layer: none | full (recompute all) | dots_saveable (keep matmul outputs)

  def __post_init__(self):
    for field, choices in (
      ("attention_impl", ATTENTION_IMPLS),
      ("prng_impl", PRNG_IMPLS),
      ("gelu", GELUS),
      ("remat", tuple(REMAT_POLICIES)),
    ):
      if getattr(self, field) not in choices:
        raise ValueError(f"config.{field}={getattr(self, field)!r}; choose one of {list(choices)}.")

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


def _gelu_erf(x):
  """Exact GELU as torch computes it, 0.5 x (1 + erf(x / sqrt 2)). ``jax.nn.gelu`` writes it with erfc, which
  XLA:CPU expands into exponentials and two branches: fwd + bwd on [8192, 1536] took 268 ms against erf's 21 ms on
  the 2-core CPU. The two agree within 1.1e-6 (docs/training.md, "Accelerator efficiency options")."""
  return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(0.5**0.5, x.dtype)))


_ACTIVATIONS = {
  "gelu": _gelu_erf,
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


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout from integer random bits against a threshold (no float uniforms); ``key=None``: identity."""
  if key is None or rate == 0.0:
    return x
  threshold = jnp.uint32(min(round(rate * 2**32), 2**32 - 1))
  keep = jax.random.bits(key, x.shape, jnp.uint32) >= threshold
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def dropout_keys(rngs: nnx.Rngs, impl: str, count: int) -> jax.Array:
  """``count`` keys of generator ``impl`` from the ``dropout`` stream of ``rngs``, whatever generator made it."""
  key = rngs.dropout()
  if str(jax.random.key_impl(key)) != impl:
    shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, dtype=impl))).shape
    key = jax.random.wrap_key_data(jax.random.bits(key, shape, jnp.uint32), dtype=impl)
  return jax.random.split(key, count)


def position_ids(attention_mask: jax.Array, cfg: EncoderConfig) -> jax.Array:
  """Positions counted from each segment's first token (a plain 0/1 mask is one segment per row): BERT from 0,
  RoBERTa from pad_token_id + 1, with padding parked on pad_token_id."""
  seg = attention_mask.astype(jnp.int32)
  index = jnp.broadcast_to(jnp.arange(seg.shape[1], dtype=jnp.int32), seg.shape)
  starts = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  offset = index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
  if cfg.layout == "roberta":
    return (offset + 1) * (seg > 0) + cfg.pad_token_id
  return offset


def _rows(table: nnx.Param, ids: jax.Array) -> jax.Array:
  """A gather from the float32 table (its gradient is a float32 scatter-add, whatever the compute dtype)."""
  return jnp.take(table.get_value(), ids, axis=0)


class Embeddings(nnx.Module):
  """Word + position + token-type rows. Computed in float32 and cast once, with as few gathers as the layout
  allows: every token type is 0 (one broadcast row) and BERT positions of unpacked rows are a slice of the table,
  so their gradients are reductions, not contended scatter-adds."""

  def __init__(self, cfg: EncoderConfig, *, dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = dtype
    self.word = _embed(rngs, cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), dtype)
    self.position = _embed(rngs, cfg.max_position_embeddings, cfg.hidden_size, (None, "embed"), dtype)
    self.token_type = _embed(rngs, cfg.type_vocab_size, cfg.hidden_size, (None, "embed"), dtype)
    self.norm = _layer_norm(rngs, cfg.hidden_size, cfg.layer_norm_eps, dtype)

  def __call__(self, input_ids, attention_mask, *, segmented: bool, key):
    if self.cfg.layout == "bert" and not segmented:
      positions = self.position.embedding.get_value()[: input_ids.shape[1]]
    else:
      positions = _rows(self.position.embedding, position_ids(attention_mask, self.cfg))
    x = _rows(self.word.embedding, input_ids) + positions + self.token_type.embedding.get_value()[0]
    return dropout(self.norm(x.astype(self.dtype)), self.cfg.hidden_dropout, key)


def resolve_attention(impl: str, dtype) -> str:
  """The implementation ``impl`` means here: ``auto`` is cuDNN's fused kernel on a GPU in 16-bit, XLA's else."""
  backend = jax.default_backend()
  if impl == "auto":
    return "cudnn" if backend == "gpu" and jnp.dtype(dtype).itemsize == 2 else "xla"
  if impl == "cudnn" and backend != "gpu":
    raise ValueError(f"config.attention_impl='cudnn' needs a GPU; this backend is {backend!r} (use 'auto').")
  return impl


class SelfAttention(nnx.Module):
  def __init__(self, cfg: EncoderConfig, *, dtype, rngs: nnx.Rngs):
    h = cfg.hidden_size
    self.num_heads = cfg.num_heads
    self.impl = cfg.attention_impl
    self.dropout_rate = cfg.attention_dropout
    self.query = _dense(rngs, h, h, ("embed", "heads"), dtype)
    self.key = _dense(rngs, h, h, ("embed", "heads"), dtype)
    self.value = _dense(rngs, h, h, ("embed", "heads"), dtype)
    self.output = _dense(rngs, h, h, ("heads", "embed"), dtype)

  def __call__(self, x, mask, kv_lengths, *, key):
    """``mask``: bool [B, 1, 1 or L, L], True where a query may attend; ``kv_lengths``: real tokens per row of a
    right-padded batch (None for packed rows), which lets cuDNN skip the mask."""
    b, l, h = x.shape
    split = lambda t: t.reshape(b, l, self.num_heads, h // self.num_heads)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    impl = resolve_attention(self.impl, x.dtype)
    if impl == "einsum":
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(h / self.num_heads)
      bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(scores + bias, axis=-1).astype(x.dtype)
      probs = dropout(probs, self.dropout_rate, key)
      ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    elif impl == "cudnn" and kv_lengths is not None:
      ctx = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths, implementation="cudnn")
    else:
      ctx = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
    return self.output(ctx.reshape(b, l, h))


class Layer(nnx.Module):
  """Post-LayerNorm transformer block, as in BERT and RoBERTa."""

  def __init__(self, cfg: EncoderConfig, *, dtype, rngs: nnx.Rngs):
    self.attention = SelfAttention(cfg, dtype=dtype, rngs=rngs)
    self.attention_norm = _layer_norm(rngs, cfg.hidden_size, cfg.layer_norm_eps, dtype)
    self.intermediate = _dense(rngs, cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), dtype)
    self.output = _dense(rngs, cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), dtype)
    self.output_norm = _layer_norm(rngs, cfg.hidden_size, cfg.layer_norm_eps, dtype)
    self.dropout_rate = cfg.hidden_dropout
    tanh = cfg.gelu == "tanh" and cfg.hidden_act == "gelu"
    self.act = _ACTIVATIONS["gelu_new" if tanh else cfg.hidden_act]

  def __call__(self, x, mask, kv_lengths, *, key):
    """``key``: this layer's dropout key (None: no dropout); its three dropout sites fold in 0, 1, 2."""
    site = (lambda i: None) if key is None else (lambda i: jax.random.fold_in(key, i))
    a = self.attention(x, mask, kv_lengths, key=site(0))
    x = self.attention_norm(x + dropout(a, self.dropout_rate, site(1)))
    m = self.output(self.act(self.intermediate(x)))
    return self.output_norm(x + dropout(m, self.dropout_rate, site(2)))


def _apply_layer(graphdef, state, x, mask, kv_lengths, key):
  return nnx.merge(graphdef, state)(x, mask, kv_lengths, key=key)


class TransformerEncoder(nnx.Module):
  """Token ids -> contextual token states [B, L, hidden]."""

  def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    if cfg.hidden_act not in _ACTIVATIONS:
      raise ValueError(f"Unsupported hidden_act {cfg.hidden_act!r}; supported: {sorted(_ACTIVATIONS)}.")
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
    self.layers = nnx.List([Layer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])

  def __call__(
    self,
    input_ids,
    attention_mask,
    *,
    segmented: bool = False,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
  ):
    """``attention_mask``: 0/1, or segment ids with ``segmented=True`` (packed rows). ``rngs`` (a ``dropout``
    stream) is needed only when ``deterministic`` is False."""
    cfg = self.cfg
    if deterministic:
      embed_key, layer_keys = None, [None] * cfg.num_layers
    else:
      keys = dropout_keys(rngs, cfg.prng_impl, cfg.num_layers + 1)
      embed_key, layer_keys = keys[0], keys[1:]
    if segmented:
      seg = attention_mask.astype(jnp.int32)
      mask, kv_lengths = (seg[:, :, None] == seg[:, None, :])[:, None], None  # padding attends to padding only
    else:
      mask = (attention_mask > 0)[:, None, None, :]
      kv_lengths = jnp.sum(attention_mask > 0, axis=1, dtype=jnp.int32)
    x = self.embeddings(input_ids, attention_mask, segmented=segmented, key=embed_key)
    apply = _apply_layer
    if cfg.remat != "none":
      apply = jax.checkpoint(_apply_layer, policy=REMAT_POLICIES[cfg.remat], static_argnums=(0,))
    if cfg.scan_layers:
      graphdef = nnx.graphdef(self.layers[0])
      stacked = jax.tree.map(lambda *t: jnp.stack(t), *[nnx.state(layer) for layer in self.layers])
      body = lambda x, xs: (apply(graphdef, xs[0], x, mask, kv_lengths, xs[1]), None)
      return jax.lax.scan(body, x, (stacked, None if deterministic else layer_keys))[0]
    for layer, key in zip(self.layers, layer_keys):
      if cfg.remat == "none":
        x = layer(x, mask, kv_lengths, key=key)
      else:
        graphdef, state = nnx.split(layer)
        x = apply(graphdef, state, x, mask, kv_lengths, key)
    return x


def pool(states: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """Masked mean (sentence-transformers' default) or the state of the mask's first token."""
  if pooling == "cls":
    first = jnp.argmax(attention_mask > 0, axis=1)
    return jnp.take_along_axis(states, first[:, None, None], axis=1)[:, 0]
  if pooling == "mean":
    mask = attention_mask[..., None].astype(jnp.float32)
    summed = jnp.sum(states.astype(jnp.float32) * mask, axis=1)
    return summed / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
  raise ValueError(f"Unknown pooling {pooling!r}; choose one of {POOLINGS}.")


def pool_segments(states: jax.Array, members: jax.Array, pooling: str) -> jax.Array:
  """[rows, segments, hidden]: ``pool`` of each segment of a packed row (``members``: [rows, segments, length]),
  the masked means as one batched matrix product (at full float32 precision on every backend) rather than a
  masked copy of the states per segment, which training's backward pass would have to keep."""
  if pooling == "cls":
    return jnp.take_along_axis(states, jnp.argmax(members, axis=-1)[..., None], axis=1)
  if pooling == "mean":
    weights = members.astype(jnp.float32)
    summed = jnp.einsum("rsl,rlh->rsh", weights, states.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return summed / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-9)
  raise ValueError(f"Unknown pooling {pooling!r}; choose one of {POOLINGS}.")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(|x|, eps), its gradient finite at x = 0 too (the norm's is not): absent segments of a packed row
  are zero vectors, and a NaN there would reach every weight through the masked-out branch."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


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

  def _head(self, pooled: jax.Array) -> jax.Array:
    x = self.projection(pooled) if self.projection is not None else pooled
    return l2_normalize(x) if self.normalize else x

  def __call__(self, input_ids, attention_mask, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
    states = self.encoder(input_ids, attention_mask, deterministic=deterministic, rngs=rngs)
    return self._head(pool(states, attention_mask, self.pooling))

  def embed_segments(
    self, input_ids, segment_ids, *, max_segments: int, deterministic: bool = True, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """[B, max_segments, output_dim]: one embedding per post packed in a row (``segment_ids`` k >= 1 marks the
    k-th post, 0 padding); each equals the post's embedding alone up to float rounding. Absent segments are 0."""
    states = self.encoder(input_ids, segment_ids, segmented=True, deterministic=deterministic, rngs=rngs)
    members = segment_ids[:, None, :] == jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)[None, :, None]
    embeddings = self._head(pool_segments(states, members, self.pooling))
    return jnp.where(jnp.any(members, axis=-1)[..., None], embeddings, 0.0)
