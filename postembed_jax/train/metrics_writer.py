"""Where training metrics go: TensorBoard event files (tensorboardX, no TensorFlow needed) and a JSONL log that
scripts and notebooks read without TensorBoard. Only process 0 writes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import numpy as np


class MetricsWriter:
  """Appends to ``<workdir>/metrics.jsonl`` and the TensorBoard events. With ``keep_through`` (the restored step
  of a resumed run, -1 for a fresh start, which keeps nothing of an earlier attempt) the records of later steps,
  logged by an attempt killed after its last checkpoint, are cut first, so that each step appears once."""

  def __init__(self, workdir: str | Path, keep_through: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = Path(workdir) / "metrics.jsonl"
    if self.enabled:
      from tensorboardX import SummaryWriter

      purge_step = None
      if keep_through is not None:
        cut_metrics(self.path, keep_through)
        purge_step = keep_through + 1  # TensorBoard hides the earlier attempt's events from here on
      # Event files are named by the second they were opened, and read in name order: the nanoseconds keep a
      # restart within the same second from overwriting the earlier file, and after it.
      self._tb = SummaryWriter(
        str(Path(workdir) / "tensorboard"), purge_step=purge_step, filename_suffix=f".{time.time_ns() % 10**9:09d}"
      )
      self._jsonl = open(self.path, "a")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()

  def write_matrix(self, step: int, name: str, matrix: np.ndarray, labels: list[str]) -> None:
    """A small matrix (task affinity) as one JSONL record and per-cell scalars ``name/row_to_col`` (TensorBoard
    tags keep only letters, digits and ``-/_.``: tensorboardX would rewrite ``->`` to ``-_``)."""
    if not self.enabled:
      return
    for i, row_name in enumerate(labels):
      for j, col_name in enumerate(labels):
        self._tb.add_scalar(f"{name}/{row_name}_to_{col_name}", float(matrix[i, j]), step)
    self._jsonl.write(
      json.dumps({"step": step, "time": time.time(), name: np.asarray(matrix).tolist(), f"{name}_labels": labels})
      + "\n"
    )
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def cut_metrics(path: Path, keep_through: int) -> None:
  """Keeps the records of steps <= ``keep_through`` (a half-written last line goes too), atomically: a temporary
  file renamed over the old, so a crash leaves the old log or the new, never a truncated one."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # the line a killed run was writing
    if record.get("step", 0) <= keep_through:
      kept.append(line + "\n")
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text("".join(kept))
  os.replace(temporary, path)


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
