"""Lookahead inter-task affinity inside one multi-task run (Fifty et al., "Efficiently Identifying Task Groupings for
Multi-Task Learning", NeurIPS 2021): the cheap in-run signal that the ablation report sets beside measured transfer.

    affinity[i, j] = 1 - L_j(theta - lr * grad L_i(theta)) / L_j(theta)

Positive: a step on task i lowers task j's loss (i helps j); negative: it raises it. Each task's loss is evaluated on
its own batch, before and after a hypothetical SGD step on each task's gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from postembed_jax.train import step as step_lib
from postembed_jax.train.metrics_writer import read_metrics

LossFn = Callable[[Any, Any], jax.Array]  # (params, batch) -> scalar loss


def lookahead_affinity(
  loss_fns: Sequence[LossFn], params, batches: Sequence[Any], lr: float | jax.Array, grads: Sequence[Any] | None = None
) -> jax.Array:
  """[T, T] affinity matrix, rows = the task stepped on, columns = the task whose loss is measured.

  Pure and jit-friendly: close over the loss functions, e.g.
  ``jax.jit(functools.partial(lookahead_affinity, loss_fns))(params, batches, lr)``; ``batches`` is a tuple with
  one batch per task (each task's own structure), ``lr`` may be a traced scalar (the schedule's current value).
  ``grads`` (one gradient pytree per task, like ``params``) skips recomputing gradients the caller already has;
  pass them restricted to the shared tower (zeros elsewhere) for the paper's exact definition. The losses should be
  deterministic (no dropout), so the matrix measures the step and not the noise.
  """
  if len(loss_fns) != len(batches) or (grads is not None and len(grads) != len(loss_fns)):
    raise ValueError(
      f"lookahead_affinity: {len(loss_fns)} loss functions, {len(batches)} batches"
      f"{'' if grads is None else f', {len(grads)} gradients'}; need one of each per task."
    )
  if grads is None:
    grads = [jax.grad(loss)(params, batch) for loss, batch in zip(loss_fns, batches)]
  losses_at = lambda p: jnp.stack([loss(p, batch) for loss, batch in zip(loss_fns, batches)])
  before = losses_at(params)
  after = jnp.stack([losses_at(jax.tree.map(lambda p, g: p - lr * g, params, grad)) for grad in grads])
  return 1.0 - after / before[None, :]


def read_affinity(workdir: str | Path, name: str = "affinity") -> tuple[list[str], np.ndarray, int] | None:
  """(task names, mean matrix over the logged steps, number of steps) from a run's metrics.jsonl, or None when the
  run logged no affinity (the trainer writes ``{name: [[...]], name + "_labels": [...]}`` records)."""
  records = [r for r in read_metrics(workdir) if name in r]
  if not records:
    return None
  labels = records[-1][f"{name}_labels"]
  matrices = [np.asarray(r[name], np.float64) for r in records if r[f"{name}_labels"] == labels]
  return labels, np.mean(matrices, axis=0), len(matrices)


class AffinityProbe:
  """Lookahead inter-task affinity on fixed probe batches (the first batch of each task the run draws), so the
  matrix compiles once and its changes over training come from the parameters alone. The lookahead steps move the
  shared tower only (head gradients zeroed), with SGD at ``optim.lr``, as in Fifty et al. (2021)."""

  def __init__(
    self, graphdef, task_names: list[str], pair_tasks: list[str], lr: float, widths: tuple[int, ...] | None = None
  ):
    self.task_names = task_names
    self.batches: dict[str, dict] = {}

    def task_loss(task, params, batch):
      key = step_lib.PAIRS if task in pair_tasks else task
      return step_lib.model_loss(
        graphdef, params, batch, key=key, pair_tasks=pair_tasks, loss_weights={}, rngs=None, widths=widths
      )[1][0]

    loss_fns = [functools.partial(task_loss, task) for task in task_names]

    def tower_only(grad):
      return jax.tree_util.tree_map_with_path(lambda path, g: g if path[0].key == "tower" else jnp.zeros_like(g), grad)

    def affinity(params, batches):
      grads = [tower_only(jax.grad(loss)(params, batch)) for loss, batch in zip(loss_fns, batches)]
      return lookahead_affinity(loss_fns, params, batches, lr, grads)

    self._affinity = jax.jit(affinity)

  def observe(self, task: str, batch: dict) -> None:
    self.batches.setdefault(task, batch)

  @property
  def ready(self) -> bool:
    return len(self.batches) == len(self.task_names)

  def __call__(self, params) -> np.ndarray:
    return np.asarray(self._affinity(params, tuple(self.batches[t] for t in self.task_names)))
