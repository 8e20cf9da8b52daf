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

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


def make_manager(workdir: str | Path, checkpoint_config, *, best_metric: str | None) -> ocp.CheckpointManager:
  """Keeps the last ``checkpoint_config.keep`` checkpoints, plus the best by ``best_metric`` (the loop's
  ``best_metric(config)``; None: the last ones only, as no validation metric ranks them)."""
  keep = [policies.LatestN(checkpoint_config.keep)]
  if best_metric is not None:
    keep.append(
      policies.BestN(get_metric_fn=lambda metrics: metrics[best_metric], n=1, keep_checkpoints_without_metrics=False)
    )
  options = ocp.CheckpointManagerOptions(
    save_interval_steps=checkpoint_config.every_steps,
    preservation_policy=policies.AnyPreservationPolicy(keep),
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


class ResumeMismatch(ValueError):
  """The workdir's checkpoint was written by a run with other tasks, another model or another embedding width."""


# What every checkpoint's metadata records about the run that wrote it: how the message names it, and its setting.
RUN_FIELDS = {
  "tasks": ("tasks", "config.data.tasks"),
  "model": ("model", "config.model"),
  "embed_dim": ("embedding width", "config.embed_dim"),
}


def check_resumable(manager: ocp.CheckpointManager, step: int, abstract_state: Any, run: dict[str, Any]) -> None:
  """Raises ResumeMismatch, naming the differences, when the checkpoint at ``step`` is not this run's (``run``: its
  ``RUN_FIELDS``, as the loop saves them in every checkpoint's metadata). Without this, other tasks or widths fail
  deep in Orbax with a pytree diff, and a same-shaped other model would silently continue this checkpoint. Falls
  back to comparing parameter shapes for what the metadata does not record."""
  saved = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  differences = [
    f"its {label} {saved[key]!r}, this run's {run[key]!r} ({setting})"
    for key, (label, setting) in RUN_FIELDS.items()
    if key in saved and key in run and not _same_value(key, saved[key], run[key])
  ]
  if not differences:
    differences = _shape_differences(Path(manager.directory) / str(step) / "state", abstract_state)
  if differences:
    raise ResumeMismatch(
      f"Cannot resume from {Path(manager.directory) / str(step)}, another run's checkpoint: "
      + "; ".join(differences)
      + ". Use a new --workdir for this run, or resume with the settings the checkpoint was trained with."
    )


def _same_value(key: str, saved: Any, current: Any) -> bool:
  if key == "model" and saved != current and Path(saved).exists() and Path(current).exists():
    return Path(saved).resolve() == Path(current).resolve()  # one directory, spelled two ways
  return saved == current


def _shape_differences(state_dir: Path, abstract_state: Any, shown: int = 3) -> list[str]:
  """The first ``shown`` arrays that a restore into ``abstract_state`` would not find, or find with another shape."""

  def shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}

  there, here = shapes(ocp.PyTreeCheckpointHandler().metadata(state_dir)), shapes(abstract_state)
  named = [
    (n, f"its {n} has shape {there[n]}, this run's {here[n]}")
    for n in there.keys() & here.keys()
    if there[n] != here[n]
  ]
  named += [(n, f"it has {n}, this run has not") for n in there.keys() - here.keys()]
  named += [(n, f"it lacks this run's {n}") for n in here.keys() - there.keys()]
  named.sort(key=lambda d: (not d[0].startswith("params/"), d[0]))  # parameters say more than optimizer moments
  differences = [text for _, text in named]
  more = len(differences) - shown
  return differences[:shown] + ([f"and {more} more differences"] if more > 0 else [])


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


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
