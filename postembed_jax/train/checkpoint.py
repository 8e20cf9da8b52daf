"""Orbax checkpoints of the whole run: parameters, optimizer state, step, RNG seed and the data iterator.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed mid-save leaves
the previous checkpoint intact. Saves are asynchronous (training continues while the host writes). We keep the
last ``keep`` checkpoints plus the best one by a validation metric.

Where a run starts from (first match wins):
  1. the latest checkpoint in ``<workdir>/checkpoints`` (automatic resume: same run, same data position);
  2. ``config.init_checkpoint``: parameters of another run's checkpoint directory (a warm start: fresh optimizer,
     step 0, fresh data order);
  3. the pretrained model named by ``config.model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def make_manager(workdir: str | Path, checkpoint_config) -> ocp.CheckpointManager:
  best_metric = checkpoint_config.best_metric
  options = ocp.CheckpointManagerOptions(
    save_interval_steps=checkpoint_config.every_steps,
    preservation_policy=policies.AnyPreservationPolicy(
      [
        policies.LatestN(checkpoint_config.keep),
        policies.BestN(get_metric_fn=lambda metrics: metrics[best_metric], n=1, keep_checkpoints_without_metrics=False),
      ]
    ),
    enable_async_checkpointing=checkpoint_config.async_save,
    create=True,
  )
  return ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)


def save(
  manager: ocp.CheckpointManager,
  step: int,
  train_state: dict[str, Any],
  data_state: dict[str, Any],
  meta: dict[str, Any],
  *,
  metrics: dict[str, float] | None = None,
  force: bool = False,
) -> bool:
  return manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(train_state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)
    ),
    metrics=metrics,
    force=force,
  )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
  """Restores into ``abstract_state``'s shardings, whatever mesh wrote the checkpoint."""
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
    ),
  )
  return restored["state"], restored["data"], restored["meta"]


def restore_tower(checkpoint_dir: str | Path, abstract_tower: Any) -> Any:
  """The tower's parameters from another run's checkpoint (its latest step, or the step directory named);
  its heads and optimizer state are ignored, so the tasks may differ."""
  path = Path(checkpoint_dir).absolute()
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  if not (path / "state").is_dir():
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []
    if not steps:
      raise ValueError(f"config.init_checkpoint={checkpoint_dir} holds no checkpoint.")
    path = path / str(steps[-1])
  item = {"params": {"tower": abstract_tower}}
  restored = ocp.PyTreeCheckpointer().restore(
    path / "state",
    args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
    ),
  )
  return restored["params"]["tower"]
