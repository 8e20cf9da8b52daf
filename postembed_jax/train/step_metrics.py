"""Step metrics read in one transfer, and the non-finite check on what was read.

A step's metrics are device arrays; reading them waits for the step. The loop keeps them as they come and reads
the steps since the last read together, at log steps and before anything is saved or validated, so the device
never idles between log steps (as big_vision and the Flax examples do). The non-finite check then runs on the
values read and names the step range they cover and the first bad step in it; since a read precedes every save,
no checkpoint holds a state after a non-finite step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

CHECKED = ("loss", "grad_norm")


def read(pending: list[tuple[int, str, dict[str, Any]]], workdir: Path | None = None) -> list[dict[str, float]]:
  """The host values of ``pending`` ((step, task, device metrics) in step order) in one ``jax.device_get``.
  Raises FloatingPointError naming the range and the first step whose loss or gradient norm is not finite."""
  values = jax.device_get([metrics for _, _, metrics in pending])
  records = [{k: float(np.asarray(v)) for k, v in m.items()} for m in values]
  for (step, task, _), metrics in zip(pending, records):
    bad = [k for k in CHECKED if not np.isfinite(metrics[k])]
    if bad:
      first, last = pending[0][0], pending[-1][0]
      span = f"between steps {first} and {last}, first " if first != last else ""
      where = f" The last good checkpoint is in {workdir}/checkpoints." if workdir else ""
      raise FloatingPointError(
        f"Non-finite {' and '.join(bad)} {span}at step {step} on task {task!r} "
        f"(loss={metrics['loss']}, grad_norm={metrics['grad_norm']}).{where}"
      )
  return records


class Pending:
  """The device metrics of the steps since the last read, as the loop dispatched them."""

  def __init__(self, workdir: Path | None = None):
    self.workdir = workdir
    self._items: list[tuple[int, str, dict[str, Any]]] = []

  def add(self, step: int, task: str, metrics: dict[str, Any]) -> None:
    self._items.append((step, task, metrics))

  def __len__(self) -> int:
    return len(self._items)

  def read(self) -> list[tuple[int, str, dict[str, float]]]:
    """(step, task, host metrics) of every pending step, read in one transfer and checked; then none pend."""
    if not self._items:
      return []
    items, self._items = self._items, []
    return [(step, task, m) for (step, task, _), m in zip(items, read(items, self.workdir))]
