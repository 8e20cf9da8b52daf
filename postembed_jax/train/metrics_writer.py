"""Where training metrics go: TensorBoard event files (tensorboardX, no TensorFlow needed) and a JSONL log that
scripts and notebooks read without TensorBoard. Only process 0 writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np


class MetricsWriter:
  def __init__(self, workdir: str | Path):
    self.enabled = jax.process_index() == 0
    self.path = Path(workdir) / "metrics.jsonl"
    if self.enabled:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
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
    """A small matrix (task affinity) as one JSONL record and per-cell scalars."""
    if not self.enabled:
      return
    for i, row_name in enumerate(labels):
      for j, col_name in enumerate(labels):
        self._tb.add_scalar(f"{name}/{row_name}->{col_name}", float(matrix[i, j]), step)
    self._jsonl.write(
      json.dumps({"step": step, "time": time.time(), name: np.asarray(matrix).tolist(), f"{name}_labels": labels})
      + "\n"
    )
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def read_metrics(workdir: str | Path) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
