"""Per-task heads and losses on top of the shared tower.

Three families, chosen per task by name in the config (``config.task_losses``):
  * ``bce``: the paper's loss. logit = scale * cos(left, right) + bias, binary cross-entropy on the pair label.
    scale and bias are learned per task (cosine alone lives in [-1, 1], too narrow for a sharp sigmoid).
  * ``infonce``: in-batch contrastive over the positive pairs of a batch, symmetric, learned temperature. Under
    jit on a mesh the similarity matrix spans the global batch, so negatives come from every data-parallel device.
  * ``softmax`` / ``sigmoid``: linear classification of the embedding for single- and multi-label label tasks.

Matryoshka (Kusupati et al., 2022; ``config.matryoshka_dims``): a pair task's loss is the mean of its loss on the
first d dimensions of both embeddings, renormalised, over nested widths d, so that every prefix of one export is an
embedding of its own. Each pair head (scale and bias, temperature) is shared by all widths; classification heads see
the full width only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from postembed_jax.data import tokenize
from postembed_jax.models.encoder import l2_normalize

PAIR_LOSSES = ("bce", "infonce")
# How the two sides of a pair batch go through the tower (``config.pair_tower_calls``): "one" call on both sides
# stacked (the shorter side padded to the longer), "two" calls (one per side), or "auto": one call on an
# accelerator, where halving the number of matrix products outweighs the padding, and on a CPU (compute-bound in
# the matrix kernels, so padded positions cost their share) only when both sides have the same length.
PAIR_TOWER_CALLS = ("auto", "one", "two")
CLASSIFICATION_LOSSES = ("softmax", "sigmoid")


def _scalar(value: float) -> nnx.Param:
  return nnx.Param(jnp.asarray(value, jnp.float32), out_sharding=(), eager_sharding=False)


class CosineBCEHead(nnx.Module):
  """The paper's siamese head: sigmoid(scale * cosine + bias) against the pair's 0/1 label."""

  def __init__(self, *, init_scale: float = 10.0, init_bias: float = -5.0):
    self.scale = _scalar(init_scale)
    self.bias = _scalar(init_bias)

  def __call__(self, left, right, label, same_task=None):
    """Per-row (loss, weight, correct): pair heads report rows so one step can serve every pair task."""
    del same_task  # each row is scored on its own
    cos = jnp.sum(left * right, -1) / (jnp.linalg.norm(left, axis=-1) * jnp.linalg.norm(right, axis=-1) + 1e-9)
    logits = self.scale[...] * cos + self.bias[...]
    loss = optax.sigmoid_binary_cross_entropy(logits, label)
    return loss, jnp.ones_like(loss), ((logits > 0) == (label > 0.5)).astype(jnp.float32)


class InfoNCEHead(nnx.Module):
  """Symmetric in-batch contrastive loss; rows labelled 0 take part only as negatives (weight 0). In a batch that
  holds several tasks, ``same_task`` [B, B] keeps each row's negatives inside its own task."""

  def __init__(self, *, init_log_scale: float = 3.0):
    self.log_scale = _scalar(init_log_scale)

  def __call__(self, left, right, label, same_task=None):
    left = left / (jnp.linalg.norm(left, axis=-1, keepdims=True) + 1e-9)
    right = right / (jnp.linalg.norm(right, axis=-1, keepdims=True) + 1e-9)
    sim = jnp.exp(jnp.clip(self.log_scale[...], 0.0, 4.6)) * left @ right.T  # scale capped at 100
    if same_task is not None:
      sim = jnp.where(same_task, sim, -1e9)
    targets = jnp.arange(sim.shape[0])
    loss = 0.5 * (
      optax.softmax_cross_entropy_with_integer_labels(sim, targets)
      + optax.softmax_cross_entropy_with_integer_labels(sim.T, targets)
    )
    return loss, (label > 0.5).astype(jnp.float32), (jnp.argmax(sim, -1) == targets).astype(jnp.float32)


class ClassificationHead(nnx.Module):
  """Linear classifier on the embedding: softmax (one label) or sigmoid (multi-label)."""

  def __init__(self, embed_dim: int, num_classes: int, *, multi_label: bool, rngs: nnx.Rngs):
    self.multi_label = multi_label
    self.linear = nnx.Linear(
      embed_dim,
      num_classes,
      rngs=rngs,
      kernel_init=nnx.with_partitioning(nnx.initializers.xavier_uniform(), ("proj", "classes"), eager_sharding=False),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("classes",), eager_sharding=False),
    )

  def __call__(self, embedding, label):
    """(mean loss, accuracy): exact-match accuracy of the thresholded labels for multi-label tasks."""
    logits = self.linear(embedding)
    if self.multi_label:
      loss = optax.sigmoid_binary_cross_entropy(logits, label).sum(-1).mean()
      return loss, jnp.mean(jnp.all((logits > 0) == (label > 0.5), axis=-1))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == label)


def make_head(loss: str, *, embed_dim: int, num_classes: int | None = None, rngs: nnx.Rngs) -> nnx.Module:
  if loss == "bce":
    return CosineBCEHead()
  if loss == "infonce":
    return InfoNCEHead()
  if loss in CLASSIFICATION_LOSSES:
    if not num_classes:
      raise ValueError(f"A {loss!r} head needs the task's label count.")
    return ClassificationHead(embed_dim, num_classes, multi_label=loss == "sigmoid", rngs=rngs)
  raise ValueError(f"Unknown loss {loss!r}; choose one of {PAIR_LOSSES + CLASSIFICATION_LOSSES}.")


def matryoshka_widths(spec, full_width: int) -> tuple[int, ...] | None:
  """``config.matryoshka_dims`` ("32,50,128", or a sequence of ints) -> the sorted distinct widths, ``full_width``
  always last; None when empty (Matryoshka off). Checked up front so a bad width fails before anything is built."""
  items = [str(v).strip() for v in (spec.split(",") if isinstance(spec, str) else spec or ())]
  items = [v for v in items if v]
  if not items:
    return None
  bad = [v for v in items if not v.lstrip("-").isdigit()]
  if bad:
    raise ValueError(f"config.matryoshka_dims={spec!r}: {bad[0]!r} is not an integer width.")
  widths = sorted({int(v) for v in items} | {full_width})
  if widths[0] < 1:
    raise ValueError(f"config.matryoshka_dims={spec!r}: width {widths[0]} is not positive.")
  if widths[-1] > full_width:
    raise ValueError(f"config.matryoshka_dims={spec!r}: width {widths[-1]} is wider than the embedding ({full_width}).")
  return tuple(widths)


def pair_loss(
  tower,
  heads: dict,
  task_names: list[str],
  batch: dict,
  *,
  rngs: nnx.Rngs | None,
  widths: tuple[int, ...] | None = None,
  tower_calls: str = "auto",
):
  """Per-row (loss, weight, correct) of a batch of pairs from any pair tasks: row r is scored by the head of task
  ``task_names[batch["task_id"][r]]``. Single-task batches are the case where every row has the same task id, so
  one compiled step serves every pair task and every mix of them. ``widths`` (Matryoshka): the loss is the mean
  over widths d of the loss on the embeddings' first d dimensions, renormalised (prefixes of a unit vector are
  not unit vectors); weight and correct are those of the widest. ``tower_calls``: see ``pair_embeddings``."""
  left, right = pair_embeddings(tower, batch, rngs=rngs, tower_calls=tower_calls)
  task_id = batch["task_id"]
  same_task = task_id[:, None] == task_id[None, :]

  def score(left, right):
    per_head = [heads[name](left, right, batch["label"], same_task) for name in task_names]
    return tuple(jnp.take_along_axis(jnp.stack([h[k] for h in per_head]), task_id[None], axis=0)[0] for k in range(3))

  if not widths:
    return score(left, right)
  per_width = [score(l2_normalize(left[:, :d]), l2_normalize(right[:, :d])) for d in widths]
  widest = per_width[widths.index(max(widths))]
  return jnp.mean(jnp.stack([w[0] for w in per_width]), axis=0), widest[1], widest[2]


def check_tower_calls(tower_calls: str) -> str:
  if tower_calls not in PAIR_TOWER_CALLS:
    raise ValueError(f"config.pair_tower_calls={tower_calls!r}; choose one of {list(PAIR_TOWER_CALLS)}.")
  return tower_calls


def one_tower_call(left_shape, right_shape, tower_calls: str = "auto") -> bool:
  """Whether both sides of a pair batch of these [rows, length] shapes go through the tower in one call
  (``PAIR_TOWER_CALLS``): they need the same number of rows. Decided from static shapes, so per compiled step."""
  check_tower_calls(tower_calls)
  if tower_calls == "two" or left_shape[0] != right_shape[0]:
    return False
  return tower_calls == "one" or left_shape[1] == right_shape[1] or jax.default_backend() != "cpu"


def pair_embeddings(tower, batch: dict, *, rngs: nnx.Rngs | None, tower_calls: str = "auto"):
  """(left, right) embeddings of a pair batch. In one call the sides are stacked row-wise, the shorter padded with
  masked positions (ids 0), which no real token attends to and pooling skips: each row's embedding is the one
  two calls give, up to float rounding; only dropout masks are drawn differently. A packed batch
  (``tokenize.pack_pair_batch``) is one call on its packed rows, each text's embedding read from its slot."""
  kw = dict(deterministic=rngs is None, rngs=rngs)
  if "packed_ids" in batch:
    ids = batch["packed_ids"]
    per_row = tokenize.segments_per_row(ids.shape[1])
    packed = tower.embed_segments(ids, batch["packed_segments"], max_segments=per_row, **kw)
    flat = packed.reshape(-1, packed.shape[-1])
    return flat[batch["left_slot"]], flat[batch["right_slot"]]
  left_ids, left_mask, right_ids, right_mask = (batch[k] for k in ("left_ids", "left_mask", "right_ids", "right_mask"))
  if not one_tower_call(left_ids.shape, right_ids.shape, tower_calls):
    return tower(left_ids, left_mask, **kw), tower(right_ids, right_mask, **kw)
  length = max(left_ids.shape[1], right_ids.shape[1])
  pad = lambda x: jnp.pad(x, ((0, 0), (0, length - x.shape[1])))
  both = tower(
    jnp.concatenate([pad(left_ids), pad(right_ids)]), jnp.concatenate([pad(left_mask), pad(right_mask)]), **kw
  )
  return both[: left_ids.shape[0]], both[left_ids.shape[0] :]


def classification_loss(tower, head, batch: dict, *, rngs: nnx.Rngs | None):
  """(loss, accuracy) of a batch of labelled posts of one classification task."""
  embedding = tower(batch["ids"], batch["mask"], deterministic=rngs is None, rngs=rngs)
  return head(embedding, batch["labels"] if "labels" in batch else batch["label"])
