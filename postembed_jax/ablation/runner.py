"""The transfer ablation as a plan of runs, the paper's way: the multi-task model (MTL, one batch of every task per
step) against one single-task model (STL) per task, each arm with its learning rate chosen on validation, every
run early-stopped on validation and scored on the test split once, at its best validation checkpoint.

Arms. In each data regime (``regimes``): ``mtl`` (all tasks, ``data.task_mixing = "all_tasks_per_step"``, so it
sees as many examples of each task per step as each STL run), ``stl-<t>`` and optionally ``loto-<t>`` (all tasks but
t). Regimes: ``full`` (the budget's data), ``capped`` (every task at ``cap_examples`` training examples) and
``scarce`` (for each task t in turn, t at ``scarce_fraction`` of its training examples, the others unchanged: MTL on
all tasks against STL on t at the same fraction, both scored on t).

Phases. 1: each arm trains seed ``selection_seed`` at every learning rate of ``lr_grid``; the rate whose best
validation value of the arm's selection metric is highest is chosen (the test split is not read). 2: every seed at
the chosen rate, scored on the test split; the selection run at that rate is that seed's run, not trained again.
With one rate in the grid there is no phase 1.

Each run is the training config plus a few ml_collections overrides (``Run.overrides``), trained in
``<workdir>/<regime>/<arm>/lr_<lr>/seed_<s>`` by ``train_and_evaluate``. A trained run has ``train.json``, a
scored one ``result.json``; both are skipped when present, and a killed run resumes from its checkpoint. Runs go one
after another, or to ``workers`` processes at once, longest first.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import multiprocessing
import shutil
import time
from pathlib import Path
from typing import Any

import ml_collections

from postembed_jax.data.lists import as_list

TRAIN_FILE = "train.json"  # written when training (and the export) finished: the run's validation record
RESULT_FILE = "result.json"  # written when the export was scored on the test split
OVERRIDES_FILE = "overrides.json"
SELECTION_FILE = "selection.json"  # in the ablation's workdir: every arm's grid values and chosen learning rate
REGIMES = ("full", "capped", "scarce")
EXPORT_META = "export/postembed.json"


@dataclasses.dataclass(frozen=True)
class Arm:
  """One side of a comparison: ``variant`` "mtl", "stl-<task>" or "loto-<task>" in a data regime; ``focus`` is the
  scarce task of a ``scarce`` arm."""

  regime: str
  variant: str
  tasks: tuple[str, ...]  # trained on
  eval_tasks: tuple[str, ...]  # scored on
  focus: str = ""

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
  def name(self) -> str:
    return f"{self.arm.key}/lr_{self.lr:g}/seed_{self.seed}"

  @property
  def cost(self) -> int:
    """Relative training cost: an all-tasks step holds one batch per task."""
    return len(self.arm.tasks)


@dataclasses.dataclass
class Outcome:
  """What ``run_ablation`` returns: the scored final runs, every selection run's record and the choices."""

  results: list[dict]  # phase 2, test-scored, in plan order
  selection: list[dict]  # phase 1 training records, each with "chosen"
  runs: list[dict]  # every trained run once (a reused selection run appears once), for timings
  choices: dict[str, dict]  # arm key -> {"metric", "lr", "values": {lr: validation value}}


# ---------------------------------------------------------------------------------------------------------------
# The plan.
# ---------------------------------------------------------------------------------------------------------------


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
    arms += [Arm(regime, f"stl-{t}", (t,), (t,)) for t in tasks]
    if config.leave_one_out and len(tasks) > 2:
      arms += [Arm(regime, f"loto-{t}", tuple(x for x in tasks if x != t), tasks) for t in tasks]
  return arms


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
  if len(grid) == 1:
    return len(arms) * len(seeds)
  return len(arms) * (len(grid) + len(seeds) - (selection_seed(config) in seeds))


def run_overrides(config, run: Run) -> dict[str, Any]:
  """The flattened training-config overrides of one run: all that differs between the runs of the ablation."""
  arm = run.arm
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
    out["data.task_fractions"] = f"{arm.focus}={float(config.scarce_fraction):g}"
  if arm.variant == "mtl" and config.affinity_every_steps:
    out["affinity_every_steps"] = int(config.affinity_every_steps)
  return out


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
      f"scarce: for each task in turn, that task at {float(config.scarce_fraction):g} of its training "
      "examples for both arms, the others full; MTL (all tasks) against STL, scored on that task."
    )
  return lines


# ---------------------------------------------------------------------------------------------------------------
# Executing runs.
# ---------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None


def read_train(config, run: Run) -> dict | None:
  return _read_json(Path(config.workdir) / run.name / TRAIN_FILE)


def read_result(config, run: Run) -> dict | None:
  return _read_json(Path(config.workdir) / run.name / RESULT_FILE)


def _steps_trained(workdir: Path) -> int:
  from postembed_jax.train.metrics_writer import read_metrics

  return max((int(r["step"]) for r in read_metrics(workdir)), default=0)  # a run stops at a logged evaluation


def _train(config, run: Run, workdir: Path) -> dict:
  """Trains (or resumes) one run unless its export exists; writes and returns its training record."""
  from postembed_jax.train.loop import train_and_evaluate

  train = run_config(config, run)
  start = time.perf_counter()
  meta = _read_json(workdir / EXPORT_META)
  if meta is None:  # an export is written only by a finished run: do not train it again
    train_and_evaluate(train, workdir)
    meta = _read_json(workdir / EXPORT_META)
    if meta is None:
      raise RuntimeError(f"Run {run.name} finished training without an export in {workdir / 'export'}.")
  key = selection_key(config, run.arm)
  validation = meta.get("validation") or {}
  arm = run.arm
  record = {
    "name": run.name,
    "regime": arm.regime,
    "focus": arm.focus,
    "variant": arm.variant,
    "lr": run.lr,
    "seed": run.seed,
    "tasks": list(arm.tasks),
    "eval_tasks": list(arm.eval_tasks),
    "workdir": run.name,
    "selection_metric": key,
    "selection_value": validation.get(key, math.nan),
    "validation": validation,
    "best_step": meta.get("step"),
    "steps": _steps_trained(workdir),
    "train_seconds": round(time.perf_counter() - start, 1),
  }
  (workdir / TRAIN_FILE).write_text(json.dumps(record, indent=2))
  if config.delete_checkpoints:  # the export is what is scored; resuming is over
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
  return record


def execute_run(config_json: str, run: Run, score: bool) -> dict:
  """Trains one run (unless trained) and, with ``score``, scores its export on the test split: returns the
  training record, or the result (the record plus test ``metrics``)."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  workdir = Path(config.workdir) / run.name
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / OVERRIDES_FILE).write_text(json.dumps(run_overrides(config, run), indent=2))
  record = read_train(config, run) or _train(config, run, workdir)
  if not score:
    return record
  from postembed_jax.evaluation import evaluators
  from postembed_jax.models.embedder import Embedder

  start = time.perf_counter()
  embedder = Embedder.from_pretrained(
    str(workdir / "export"), max_length=config.train.data.max_length, batch_size=config.evaluation.batch_size
  )
  metrics = evaluators.evaluate(
    embedder,
    config.evaluators,
    split="test",
    data_config=eval_data_config(config, run.arm.eval_tasks),
    settings=evaluators.EvalSettings.from_config(config.evaluation),
  )
  result = dict(record, eval_seconds=round(time.perf_counter() - start, 1), metrics=metrics)
  (workdir / RESULT_FILE).write_text(json.dumps(result, indent=2))
  return result


class _Inline:
  """A pool of one that runs each job in this process when it is submitted."""

  def submit(self, fn, *args):
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args))
    except BaseException as error:  # re-raised by result(), as a process pool would
      future.set_exception(error)
    return future


def run_ablation(config) -> Outcome:
  """Runs every unfinished run (skipping finished ones), phase 2 of an arm as soon as its phase 1 is complete, and
  returns the outcome in plan order; writes ``selection.json``."""
  from postembed_jax.evaluation import evaluators

  evaluators.check_names(config.evaluators)
  arms, grid = plan_arms(config), lr_grid(config)
  for arm in arms:
    selection_key(config, arm)  # a bad selection metric fails before any training
  selecting = {arm.key: selection_runs(config, [arm]) for arm in arms}
  records: dict[str, dict] = {}  # run name -> training record, or result once scored
  scored: set[str] = set()
  choices: dict[str, dict] = {}
  ready: list[tuple[Run, bool]] = []  # (run, score on test)
  queued: set[tuple[str, bool]] = set()

  def queue(run: Run, score: bool) -> None:
    if (run.name, score) not in queued:
      queued.add((run.name, score))
      ready.append((run, score))

  def advance(arm: Arm) -> None:
    """Queues what an arm can run next: its untrained selection runs or, once all are trained, the choice of its
    learning rate (on their validation records) and its unscored final runs."""
    todo = [r for r in selecting[arm.key] if r.name not in records]
    for run in todo:
      queue(run, False)
    if todo or arm.key in choices:
      return
    key = selection_key(config, arm)
    lr, values = choose_lr([records[r.name] for r in selecting[arm.key]], key) if selecting[arm.key] else (grid[0], {})
    choices[arm.key] = {"metric": key, "lr": lr, "values": values}
    for run in final_runs(config, arm, lr):
      if run.name not in scored:
        queue(run, True)

  for arm in arms:
    for run in selecting[arm.key] + [r for lr in grid for r in final_runs(config, arm, lr)]:
      if (found := read_result(config, run)) is not None:
        records[run.name] = found
        scored.add(run.name)
      elif (found := read_train(config, run)) is not None:
        records[run.name] = found
    advance(arm)
  print(
    f"Ablation in {config.workdir}: {count_runs(config)} trainings in {len(arms)} arms (lr grid "
    f"{', '.join(f'{v:g}' for v in grid)}); {len(records)} found trained; {config.workers} worker(s)."
  )
  config_json = config.to_json()
  arm_of = {arm.key: arm for arm in arms}
  if config.workers <= 1:
    pool_context = contextlib.nullcontext(_Inline())
  else:  # fresh interpreters (spawn): JAX's runtime must not be forked
    pool_context = concurrent.futures.ProcessPoolExecutor(
      config.workers, mp_context=multiprocessing.get_context("spawn")
    )
  started = 0
  with pool_context as pool:
    in_flight: dict[concurrent.futures.Future, tuple[Run, bool]] = {}
    while ready or in_flight:
      while ready and len(in_flight) < max(1, config.workers):
        ready.sort(key=lambda item: (-item[0].cost, item[1]))  # longest first, selection before scoring
        run, score = ready.pop(0)
        started += 1
        what = (
          ("test (trained for the selection)" if run.name in records else "train, then test")
          if score
          else "train, for the lr selection"
        )
        print(f"[{started}] {run.name}: {what} (tasks {','.join(run.arm.tasks)})", flush=True)
        in_flight[pool.submit(execute_run, config_json, run, score)] = (run, score)
      finished, _ = concurrent.futures.wait(list(in_flight), return_when=concurrent.futures.FIRST_COMPLETED)
      for future in finished:
        run, score = in_flight.pop(future)
        record = records[run.name] = future.result()
        if score:
          scored.add(run.name)
        print(
          f"finished {run.name}: {record['steps']} steps, best {record['selection_metric']} "
          f"{record['selection_value']:.4f} at step {record['best_step']}",
          flush=True,
        )
        advance(arm_of[run.arm.key])
  _write_selection(config, choices)
  return _outcome(config, arms, records, choices)


def _write_selection(config, choices: dict[str, dict]) -> None:
  path = Path(config.workdir) / SELECTION_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
    json.dumps(
      {k: dict(v, values={f"{lr:g}": x for lr, x in v["values"].items()}) for k, v in choices.items()}, indent=2
    )
  )


def _outcome(config, arms: list[Arm], records: dict[str, dict], choices: dict[str, dict]) -> Outcome:
  results, selection, runs = [], [], []
  for arm in arms:
    chosen = choices[arm.key]["lr"]
    picking, final = selection_runs(config, [arm]), final_runs(config, arm, chosen)
    selection += [dict(records[r.name], chosen=r.lr == chosen) for r in picking]
    results += [records[r.name] for r in final]
    for run in picking + [r for r in final if r not in picking]:
      phase = "selection+final" if run in picking and run in final else "selection" if run in picking else "final"
      runs.append(dict(records[run.name], phase=phase))
  return Outcome(results=results, selection=selection, runs=runs, choices=choices)
