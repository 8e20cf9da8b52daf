"""The jitted training steps, sharded by the mesh, donating the old state so parameters and optimizer moments are
updated in place.

One task per step: one step function for every pair task (rows carry their task id) and one per classification
task. Every task in every step (``data.task_mixing='all_tasks_per_step'``), one update on the weighted sum of the
task losses, in one of two layouts:
  * ``devices``: when the mesh's data axis is a multiple of the number of tasks (and every task is a pair task),
    the tasks' sub-batches are concatenated (padded to one length) so that, sharded over the data axis, each task's
    rows land on their own group of devices: the paper's layout. One compiled step per padded shape.
  * ``sequential``: otherwise each task's gradient is computed on its own batch by that task's compiled gradient
    function, one after another, summed, and applied once. Compiling one function over all tasks together would
    compile once per combination of the tasks' bucketed shapes; one per task keeps compilations to the sum.
Both give the gradient of sum_t w_t * mean loss_t (tested against per-task gradients).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from postembed_jax.models import heads as heads_lib

PAIRS = "pairs"  # the step key shared by every pair task (and mixed pair batches)
ALL = "all"  # the step key of concatenated all-task pair batches (the devices layout)
LAYOUTS = ("devices", "sequential")


def step_key(batch: dict) -> str:
  """Which compiled step a host batch goes to: the shared pair step, or its classification task's own."""
  return PAIRS if "left_ids" in batch else batch["task"]


def with_task_ids(batch: dict, pair_tasks: list[str]) -> dict:
  """Single-task pair batches get a per-row ``task_id`` (mixed batches already have one)."""
  if "left_ids" in batch and "task_id" not in batch:
    rows = batch["left_ids"].shape[0]
    batch = dict(batch, task_id=np.full((rows,), pair_tasks.index(batch["task"]), np.int32))
  return batch


def model_loss(
  graphdef,
  params,
  batch,
  *,
  key: str,
  pair_tasks: list[str],
  loss_weights: dict[str, float],
  rngs,
  widths: tuple[int, ...] | None = None,
  tower_calls: str = "auto",
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """(objective, (loss, accuracy)): the objective carries the per-task loss weights, the loss does not. Key ALL
  averages within each task first: objective = sum_t w_t * mean loss_t, loss and accuracy are per task [T].
  ``widths``: the Matryoshka widths of the pair losses (``heads.pair_loss``); classification stays at full width.
  ``tower_calls``: one tower call on both sides of a pair batch or two (``heads.PAIR_TOWER_CALLS``)."""
  model = nnx.merge(graphdef, params)
  pair_kw = dict(rngs=rngs, widths=widths, tower_calls=tower_calls)
  if key == ALL:
    loss, weight, correct = heads_lib.pair_loss(model.tower, model.heads, pair_tasks, batch, **pair_kw)
    in_task = jax.nn.one_hot(batch["task_id"], len(pair_tasks), dtype=jnp.float32) * weight[:, None]  # [B, T]
    rows = jnp.maximum(jnp.sum(in_task, axis=0), 1e-9)
    task_loss = jnp.sum(in_task * loss[:, None], axis=0) / rows
    scale = jnp.asarray([loss_weights.get(t, 1.0) for t in pair_tasks], jnp.float32)
    return jnp.sum(scale * task_loss), (task_loss, jnp.sum(in_task * correct[:, None], axis=0) / rows)
  if key == PAIRS:
    loss, weight, correct = heads_lib.pair_loss(model.tower, model.heads, pair_tasks, batch, **pair_kw)
    scale = jnp.asarray([loss_weights.get(t, 1.0) for t in pair_tasks], jnp.float32)[batch["task_id"]]
    total = jnp.maximum(jnp.sum(weight), 1e-9)
    return (jnp.sum(loss * weight * scale) / total, (jnp.sum(loss * weight) / total, jnp.sum(correct * weight) / total))
  loss, accuracy = heads_lib.classification_loss(model.tower, model.heads[key], batch, rngs=rngs)
  return loss * loss_weights.get(key, 1.0), (loss, accuracy)


def _grads(graphdef, params, batch, dropout_key, loss_kw: dict):
  """(grads, (loss, accuracy)) of ``model_loss`` with dropout drawn from ``dropout_key``."""
  loss_fn = lambda p: model_loss(graphdef, p, batch, rngs=nnx.Rngs(dropout=dropout_key), **loss_kw)
  return jax.grad(loss_fn, has_aux=True)(params)


def make_train_step(
  graphdef,
  tx: optax.GradientTransformation,
  *,
  key: str,
  pair_tasks: list[str],
  loss_weights: dict[str, float],
  seed: int,
  state_shardings,
  batch_sharding,
  widths: tuple[int, ...] | None = None,
  tower_calls: str = "auto",
) -> Callable:
  """(state, batch) -> (state, metrics), the metrics left on the device (the loop reads them at log steps).
  Dropout keys derive from (seed, step), so a resumed run draws the same masks as an uninterrupted one."""

  loss_kw = dict(key=key, pair_tasks=pair_tasks, loss_weights=loss_weights, widths=widths, tower_calls=tower_calls)

  def step_fn(state, batch):
    dropout_key = jax.random.fold_in(jax.random.key(seed), state["step"])
    grads, (loss, accuracy) = _grads(graphdef, state["params"], batch, dropout_key, loss_kw)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return jax.jit(
    step_fn, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None), donate_argnums=0
  )


def choose_layout(num_tasks: int, data_axis_size: int, all_pairs: bool) -> str:
  """``devices`` when each task can have its own group of data-parallel devices, else ``sequential``."""
  return "devices" if all_pairs and data_axis_size % num_tasks == 0 else "sequential"


def concat_pair_batches(batches: dict[str, dict], pair_tasks: list[str]) -> dict[str, np.ndarray]:
  """One pair batch from one single-task batch per task: rows task by task (in ``batches``' order), each side
  padded to the longest of the tasks, with per-row task ids. Sharded over the data axis, task k's rows then sit on
  the k-th group of devices."""
  lengths = {side: max(b[f"{side}_ids"].shape[1] for b in batches.values()) for side in ("left", "right")}
  out = {k: [] for k in ("left_ids", "left_mask", "right_ids", "right_mask", "label", "task_id")}
  for name, b in batches.items():
    for side in ("left", "right"):
      pad = ((0, 0), (0, lengths[side] - b[f"{side}_ids"].shape[1]))
      out[f"{side}_ids"].append(np.pad(b[f"{side}_ids"], pad))  # masked out, so the id value is irrelevant
      out[f"{side}_mask"].append(np.pad(b[f"{side}_mask"], pad))
    out["label"].append(b["label"])
    out["task_id"].append(np.full((len(b["label"]),), pair_tasks.index(name), np.int32))
  return {k: np.concatenate(v) for k, v in out.items()}


def make_grad_fn(
  graphdef,
  *,
  key: str,
  pair_tasks: list[str],
  loss_weights: dict[str, float],
  seed: int,
  param_shardings,
  batch_sharding,
  widths: tuple[int, ...] | None = None,
  tower_calls: str = "auto",
) -> Callable:
  """(params, step, task_index, batch) -> (grads, (loss, accuracy)) of one task's weighted loss: the sequential
  layout's part. Its dropout key folds in the task's index, so the tasks of one step draw different masks."""

  loss_kw = dict(key=key, pair_tasks=pair_tasks, loss_weights=loss_weights, widths=widths, tower_calls=tower_calls)

  def grad_fn(params, step, task_index, batch):
    dropout_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), task_index)
    return _grads(graphdef, params, batch, dropout_key, loss_kw)

  return jax.jit(
    grad_fn, in_shardings=(param_shardings, None, None, batch_sharding), out_shardings=(param_shardings, None)
  )


def make_apply_fn(tx: optax.GradientTransformation, *, state_shardings) -> Callable:
  """(state, summed grads) -> (state, grad_norm): the one update of an all-tasks step (state donated)."""

  def apply_fn(state, grads):
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, optax.tree.norm(grads)

  return jax.jit(
    apply_fn,
    in_shardings=(state_shardings, state_shardings["params"]),
    out_shardings=(state_shardings, None),
    donate_argnums=0,
  )


@functools.partial(jax.jit, donate_argnums=0)
def add_grads(total, grads):
  return jax.tree.map(jnp.add, total, grads)


@functools.partial(jax.jit, static_argnums=(4, 5))
def all_tasks_metrics(losses, accuracy, grad_norm, weights, names: tuple[str, ...], order: tuple[int, ...]):
  """The metrics of an all-tasks step, on the device: ``loss`` = sum_t w_t * loss_t, mean ``accuracy``, and each
  task's ``<task>/loss`` and ``<task>/accuracy``. ``losses`` and ``accuracy``: per-task scalars or a vector;
  entry ``order[i]`` is task ``names[i]``'s."""
  losses, accuracy = jnp.stack(losses)[jnp.asarray(order)], jnp.stack(accuracy)[jnp.asarray(order)]
  metrics = {"loss": jnp.sum(weights * losses), "grad_norm": grad_norm, "accuracy": jnp.mean(accuracy)}
  for i, name in enumerate(names):
    metrics[f"{name}/loss"], metrics[f"{name}/accuracy"] = losses[i], accuracy[i]
  return metrics


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
