"""The transfer ablation as a plan of runs, the paper's way: the multi-task model (MTL, one batch of every task per
step) against one single-task model (STL) per task, each arm with its learning rate chosen on validation, every
run early-stopped on validation and scored on the test split once, at its best validation checkpoint.

Arms. In each data regime (``regimes``): ``mtl`` (all tasks, ``data.task_mixing = "all_tasks_per_step"``, so it
sees as many examples of each task per step as each STL run), ``stl-<t>`` and optionally ``loto-<t>`` (all tasks but
t). Regimes: ``full`` (the budget's data), ``capped`` (every task at ``cap_examples`` training examples) and
``scarce`` (for each task t in turn, t at ``scarce_fraction`` of its training examples, the others unchanged: MTL on
all tasks against STL on t at the same fraction, both scored on t). Where ``cap_examples`` equals
``scarce_examples`` a capped STL arm is the scarce STL arm of its task (the same examples), so its runs are shared.

Phases. 1: each arm trains seed ``selection_seed`` at every learning rate of ``lr_grid``; the rate whose best
validation value of the arm's selection metric is highest is chosen (the test split is not read). 2: every seed at
the chosen rate, scored on the test split; the selection run at that rate is that seed's run, not trained again.
With one rate in the grid there is no phase 1.

The plan is the arms, their runs (``Run``: an arm, a learning rate and a seed), each run's training-config overrides
(``run_overrides``) and the choice of a rate from validation records; executing it is runner.py's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from postembed_jax.data.lists import as_list

REGIMES = ("full", "capped", "scarce")


@dataclasses.dataclass(frozen=True)
class Arm:
  """One side of a comparison: ``variant`` "mtl", "stl-<task>" or "loto-<task>" in a data regime; ``focus`` is the
  scarce task of a ``scarce`` arm."""

  regime: str
  variant: str
  tasks: tuple[str, ...]  # trained on
  eval_tasks: tuple[str, ...]  # scored on
  focus: str = ""
  runs_as: Arm | None = None  # the arm whose runs this one's are, trained once (same task, data and settings)

  @property
  def trained_as(self) -> Arm:
    """The arm whose runs this one's are: ``runs_as``, else itself."""
    return self.runs_as or self

  @property
  def label(self) -> str:
    return f"{self.regime}-{self.focus}" if self.focus else self.regime

  @property
  def key(self) -> str:
    return f"{self.label}/{self.variant}"


@dataclasses.dataclass(frozen=True)
class Run:
  arm: Arm
  lr: float
  seed: int

  @property
  def trained_arm(self) -> Arm:
    return self.arm.trained_as

  @property
  def name(self) -> str:
    return f"{self.trained_arm.key}/lr_{self.lr:g}/seed_{self.seed}"

  @property
  def cost(self) -> int:
    """Relative training cost: an all-tasks step holds one batch per task."""
    return len(self.arm.tasks)


def seeds_of(config) -> list[int]:
  return [int(s) for s in as_list(str(config.seeds))]


def lr_grid(config) -> list[float]:
  grid = [float(v) for v in as_list(str(config.lr_grid))]
  if not grid or any(not v > 0 for v in grid) or len(set(grid)) != len(grid):
    raise ValueError(f"lr_grid must be distinct positive learning rates like '1e-4,3e-4'; got {config.lr_grid!r}.")
  return grid


def selection_seed(config) -> int:
  seed = config.get("selection_seed")
  return seeds_of(config)[0] if seed is None else int(seed)


def plan_arms(config) -> list[Arm]:
  """Every arm, regime by regime, multi-task first so the headline comparison is complete early."""
  tasks = tuple(as_list(config.tasks))
  if len(tasks) < 2:
    raise ValueError(f"An ablation needs at least 2 tasks to compare multi- and single-task training; got {tasks}.")
  regimes = as_list(config.regimes)
  unknown = [r for r in regimes if r not in REGIMES]
  if unknown or not regimes:
    raise ValueError(f"Unknown regime(s) {unknown or regimes}; valid regimes: {list(REGIMES)}.")
  arms = []
  for regime in regimes:
    if regime == "scarce":
      focus = as_list(config.scarce_tasks) or list(tasks)
      if any(t not in tasks for t in focus):
        raise ValueError(f"scarce_tasks {focus} must be among the tasks {list(tasks)}.")
      arms += [Arm(regime, "mtl", tasks, (t,), focus=t) for t in focus]
      arms += [Arm(regime, f"stl-{t}", (t,), (t,), focus=t) for t in focus]
      continue
    arms.append(Arm(regime, "mtl", tasks, tasks))
    arms += [Arm(regime, f"stl-{t}", (t,), (t,), runs_as=_scarce_twin(config, regime, t)) for t in tasks]
    if config.leave_one_out and len(tasks) > 2:
      arms += [Arm(regime, f"loto-{t}", tuple(x for x in tasks if x != t), tasks) for t in tasks]
  return arms


def _scarce_twin(config, regime: str, task: str) -> Arm | None:
  """The scarce STL arm of ``task`` where a capped STL arm is the same training: the scarce regime keeps
  ``scarce_examples`` of the task, the capped one ``cap_examples``, and equal counts draw the same seeded subset
  (data.examples.task_examples). Its runs are then trained once, under the scarce arm's name. Not where the two
  would read other data: a base cap below the count (the scarce arm keeps it) or base ``task_fractions`` (the capped
  arm keeps them); a count of 1 is a share (all examples) in ``task_fractions``."""
  count, data = int(config.get("scarce_examples") or 0), config.train.data
  base_cap = int(data.get("max_examples_per_task") or 0)
  same_data = count > 1 and count == int(config.cap_examples) and not 0 < base_cap < count
  if regime != "capped" or not same_data or data.get("task_fractions"):
    return None
  return Arm("scarce", f"stl-{task}", (task,), (task,), focus=task)


def selection_key(config, arm: Arm) -> str:
  """The validation metric an arm's learning rate and best checkpoint are chosen by: ``selection_metric`` over the
  tasks it is scored on and trains on (the trainer validates those), i.e. ``val/<t>/<metric>`` for one task and the
  trainer's ``val/mean_pair_auc`` for several."""
  metric = config.selection_metric
  tasks = [t for t in arm.eval_tasks if t in arm.tasks]
  if len(tasks) == 1:
    return f"val/{tasks[0]}/{metric}"
  if metric != "pair_auc":
    raise ValueError(
      f"selection_metric={metric!r}: arm {arm.key} is chosen over {len(tasks)} tasks, and the trainer "
      "logs a mean over tasks for pair_auc only (val/mean_pair_auc); use selection_metric='pair_auc'."
    )
  return "val/mean_pair_auc"


def selection_runs(config, arms: list[Arm] | None = None) -> list[Run]:
  """Phase 1: seed ``selection_seed`` of every arm at every learning rate; none with a one-value grid."""
  grid = lr_grid(config)
  if len(grid) == 1:
    return []
  seed = selection_seed(config)
  return [Run(arm, lr, seed) for arm in (arms or plan_arms(config)) for lr in grid]


def final_runs(config, arm: Arm, lr: float) -> list[Run]:
  """Phase 2 of one arm: every seed at its chosen learning rate."""
  return [Run(arm, lr, s) for s in seeds_of(config)]


def count_runs(config) -> int:
  """Trainings in the whole plan: the selection runs plus every final run that is not a reused selection run."""
  arms, grid, seeds = plan_arms(config), lr_grid(config), seeds_of(config)
  trained = len({a.trained_as.key for a in arms})  # an arm sharing another's runs adds none
  if len(grid) == 1:
    return trained * len(seeds)
  return trained * (len(grid) + len(seeds) - (selection_seed(config) in seeds))


def run_overrides(config, run: Run) -> dict[str, Any]:
  """The flattened training-config overrides of one run: all that differs between the runs of the ablation."""
  arm = run.trained_arm
  out: dict[str, Any] = {
    "data.tasks": ",".join(arm.tasks),
    "seed": run.seed,
    "optim.lr": run.lr,
    "checkpoint.best_metric": selection_key(config, arm),
  }
  if len(arm.tasks) > 1:
    out["data.task_mixing"] = "all_tasks_per_step"
  if arm.regime == "capped":
    out["data.max_examples_per_task"] = int(config.cap_examples)
  if arm.regime == "scarce":
    out["data.task_fractions"] = f"{arm.focus}={scarce_share(config)}"
  if arm.variant == "mtl" and config.affinity_every_steps:
    out["affinity_every_steps"] = int(config.affinity_every_steps)
  return out


def scarce_share(config) -> str:
  """The scarce task's share of its training examples (``scarce_fraction``), or their number where
  ``scarce_examples`` is set: data.task_fractions' value."""
  count = int(config.get("scarce_examples") or 0)
  return str(count) if count else f"{float(config.scarce_fraction):g}"


def run_config(config, run: Run) -> ml_collections.ConfigDict:
  """The training config of one run: the ablation's ``train`` block with the run's overrides applied."""
  train = ml_collections.ConfigDict(config.train.to_dict())
  train.update_from_flattened_dict(run_overrides(config, run))
  return train


def eval_data_config(config, tasks: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The data config runs are scored with: the shared training block's, whatever the run's own overrides, so every
  model sees the same test pairs of a task."""
  data = ml_collections.ConfigDict(config.train.data.to_dict())
  data.tasks = ",".join(tasks)
  return data


def choose_lr(records: list[dict], key: str) -> tuple[float, dict[float, float]]:
  """(chosen rate, {rate: value}) from the selection runs' training records: the highest validation value of
  ``key``; a tie goes to the rate listed first. Reads ``record["validation"]`` only, never test metrics."""
  values = {float(r["lr"]): float(r["validation"].get(key, math.nan)) for r in records}
  missing = [lr for lr, v in values.items() if not math.isfinite(v)]
  if missing:
    raise ValueError(
      f"Selection metric {key!r} is missing or not finite in the validation of the runs at lr "
      f"{missing}; validation has {sorted(records[0]['validation'])}."
    )
  best = max(values.values())
  return next(lr for lr, v in values.items() if v == best), values


def describe(config) -> list[str]:
  """The protocol in a few lines, for the report."""
  train, grid = config.train, lr_grid(config)
  patience = int(train.early_stopping.patience)
  lines = [
    f"Regimes: {', '.join(as_list(config.regimes))}; tasks {config.tasks}; seeds {config.seeds}.",
    f"Every run: at most {train.total_steps} steps of {train.data.batch_size} pairs per task (MTL: one batch of "
    f"every task per step), max length {train.data.max_length}; validation every {train.eval.every_steps} steps "
    f"on {train.eval.max_examples} examples per task; "
    + (f"early stopping after {patience} evaluations without improvement; " if patience else "no early stopping; ")
    + f"exported at its {train.export_checkpoint} validation checkpoint.",
    (
      f"Learning rate per arm from {{{', '.join(f'{v:g}' for v in grid)}}} by the best validation value of seed "
      f"{selection_seed(config)} (selection metric `{config.selection_metric}` over the tasks an arm is scored on: "
      "`val/mean_pair_auc` for MTL, `val/<task>/...` for STL and scarce arms); every seed at the chosen rate."
      if len(grid) > 1
      else f"Learning rate {grid[0]:g} for every run (no selection)."
    ),
    f"Test: `{config.evaluators}` on {config.evaluation.max_examples} examples per task, once per final run.",
  ]
  if "capped" in as_list(config.regimes):
    lines.append(f"capped: every task at {config.cap_examples} training examples.")
  if "scarce" in as_list(config.regimes):
    lines.append(
      f"scarce: for each of {', '.join(as_list(config.scarce_tasks) or as_list(config.tasks))} in turn, that task at "
      + (
        f"{int(config.scarce_examples)} training examples"
        if config.get("scarce_examples")
        else f"{float(config.scarce_fraction):g} of its training examples"
      )
      + " for both arms, the others full; MTL (all tasks) against STL, scored on that task."
    )
  return lines
