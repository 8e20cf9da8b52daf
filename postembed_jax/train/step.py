"""The jitted training step: one per task (its head and batch shapes differ), sharded by the mesh, donating the
old state so parameters and optimizer moments are updated in place."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from postembed_jax.models import heads as heads_lib

PAIRS = "pairs"  # the step key shared by every pair task (and mixed pair batches)


def step_key(batch: dict) -> str:
  """Which compiled step a host batch goes to: the shared pair step, or its classification task's own."""
  return PAIRS if "left_ids" in batch else batch["task"]


def with_task_ids(batch: dict, pair_tasks: list[str]) -> dict:
  """Single-task pair batches get a per-row ``task_id`` (mixed batches already have one)."""
  if "left_ids" in batch and "task_id" not in batch:
    rows = batch["left_ids"].shape[0]
    batch = dict(batch, task_id=np.full((rows,), pair_tasks.index(batch["task"]), np.int32))
  return batch


def model_loss(graphdef, params, batch, *, key: str, pair_tasks: list[str], loss_weights: dict[str, float],
               rngs) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """(objective, (loss, accuracy)): the objective carries the per-task loss weights, the loss does not."""
  model = nnx.merge(graphdef, params)
  if key == PAIRS:
    loss, weight, correct = heads_lib.pair_loss(model.tower, model.heads, pair_tasks, batch, rngs=rngs)
    scale = jnp.asarray([loss_weights.get(t, 1.0) for t in pair_tasks], jnp.float32)[batch["task_id"]]
    total = jnp.maximum(jnp.sum(weight), 1e-9)
    return (jnp.sum(loss * weight * scale) / total,
            (jnp.sum(loss * weight) / total, jnp.sum(correct * weight) / total))
  loss, accuracy = heads_lib.classification_loss(model.tower, model.heads[key], batch, rngs=rngs)
  return loss * loss_weights.get(key, 1.0), (loss, accuracy)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, key: str, pair_tasks: list[str],
                    loss_weights: dict[str, float], seed: int, state_shardings, batch_sharding) -> Callable:
  """(state, batch) -> (state, metrics). Dropout keys derive from (seed, step), so a resumed run draws the same
  masks as an uninterrupted one."""

  def step_fn(state, batch):
    dropout_key = jax.random.fold_in(jax.random.key(seed), state["step"])
    loss_fn = lambda p: model_loss(graphdef, p, batch, key=key, pair_tasks=pair_tasks,
                                   loss_weights=loss_weights, rngs=nnx.Rngs(dropout=dropout_key))
    grads, (loss, accuracy) = jax.grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
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
