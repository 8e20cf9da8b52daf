"""The jitted training step: one per task (its head and batch shapes differ), sharded by the mesh, donating the
old state so parameters and optimizer moments are updated in place."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.losses
from flax import nnx
from jax.experimental import multihost_utils

from postembed_jax.models import heads as heads_lib

MIXED = "mixed"


def _mixed_pair_loss(model, batch, task_names, rngs):
  """Mixed-task pair batches (BCE heads only): each row is scored by the head of its own task."""
  kw = dict(deterministic=False, rngs=rngs)
  left = model.tower(batch["left_ids"], batch["left_mask"], **kw)
  right = model.tower(batch["right_ids"], batch["right_mask"], **kw)
  logits = jnp.stack([model.heads[t].logits(left, right) for t in task_names])
  logits = jnp.take_along_axis(logits, batch["task_id"][None], axis=0)[0]
  loss = optax.losses.sigmoid_binary_cross_entropy(logits, batch["label"]).mean()
  return loss, {"pair_accuracy": jnp.mean((logits > 0) == (batch["label"] > 0.5))}


def model_loss(graphdef, params, batch, *, task: str, task_names, rngs):
  model = nnx.merge(graphdef, params)
  if task == MIXED:
    return _mixed_pair_loss(model, batch, task_names, rngs)
  return heads_lib.task_loss(model.tower, model.heads[task], batch, rngs=rngs)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, task: str, task_names: list[str],
                    loss_weight: float, seed: int, state_shardings, batch_sharding) -> Callable:
  """(state, batch) -> (state, metrics). Dropout keys derive from (seed, step), so a resumed run draws the same
  masks as an uninterrupted one."""

  def loss_fn(params, batch, step):
    rngs = nnx.Rngs(dropout=jax.random.fold_in(jax.random.key(seed), step))
    loss, metrics = model_loss(graphdef, params, batch, task=task, task_names=task_names, rngs=rngs)
    return loss * loss_weight, (loss, metrics)

  def step_fn(state, batch):
    grads, (loss, metrics) = jax.grad(loss_fn, has_aux=True)(state["params"], batch, state["step"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
                 donate_argnums=0)


def global_batch(batch: dict[str, Any], sharding) -> dict[str, jax.Array]:
  """This host's rows -> one global array per field, sharded over the data axes. With several hosts, every
  host pads its rows to the longest sequence length any host has, so the global arrays line up."""
  arrays = {k: v for k, v in batch.items() if isinstance(v, np.ndarray)}
  if jax.process_count() > 1:
    arrays = _pad_to_common_lengths(arrays)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in arrays.items()}


def _pad_to_common_lengths(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  names = sorted(k for k, v in arrays.items() if v.ndim == 2 and (k.endswith("ids") or k.endswith("mask")))
  local = np.asarray([arrays[k].shape[1] for k in names], np.int32)
  longest = np.max(multihost_utils.process_allgather(local), axis=0)
  out = dict(arrays)
  for k, length in zip(names, longest):
    pad = int(length) - arrays[k].shape[1]
    if pad:
      out[k] = np.pad(arrays[k], ((0, 0), (0, pad)))  # masked out, so the id value is irrelevant
  return out
