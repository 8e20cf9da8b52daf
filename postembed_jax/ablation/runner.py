"""The transfer ablation as a list of runs: the multi-task model, one single-task model per task and, optionally, each
leave-one-task-out model, over several seeds, all with the same steps and batch size.

Each run is the training config plus a few ml_collections overrides (``data.tasks``, ``seed``), trained in its own
workdir by ``train_and_evaluate`` and then scored on the test split. A run whose ``result.json`` exists is finished
and skipped; a killed run is simply started again and ``train_and_evaluate`` resumes it from its checkpoint. Runs go
one after another, or to ``workers`` processes at once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import ml_collections

RESULT_FILE = "result.json"
OVERRIDES_FILE = "overrides.json"


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the ablation: ``variant`` is "mtl", "stl-<task>" or "loto-<task>" (leave <task> out)."""

  variant: str
  seed: int
  tasks: tuple[str, ...]  # trained on
  eval_tasks: tuple[str, ...]  # scored on

  @property
  def name(self) -> str:
    return f"{self.variant}/seed_{self.seed}"

  def overrides(self) -> dict[str, Any]:
    return {"data.tasks": ",".join(self.tasks), "seed": self.seed}


def _as_list(value) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


def plan_runs(config) -> list[Run]:
  """All runs of the ablation, multi-task first so the headline comparison is complete early."""
  tasks = tuple(_as_list(config.tasks))
  seeds = [int(s) for s in _as_list(str(config.seeds))]
  if len(tasks) < 2:
    raise ValueError(f"An ablation needs at least 2 tasks to compare multi- and single-task training; got {tasks}.")
  runs = [Run("mtl", s, tasks, tasks) for s in seeds]
  runs += [Run(f"stl-{t}", s, (t,), (t,)) for t in tasks for s in seeds]
  if config.leave_one_out and len(tasks) > 2:
    runs += [Run(f"loto-{t}", s, tuple(x for x in tasks if x != t), tasks) for t in tasks for s in seeds]
  return runs


def run_config(config, run: Run) -> ml_collections.ConfigDict:
  """The training config of one run: the ablation's ``train`` block with the run's overrides applied."""
  train = ml_collections.ConfigDict(config.train.to_dict())
  train.update_from_flattened_dict(run.overrides())
  if run.variant == "mtl" and config.affinity_every_steps:
    train.affinity_every_steps = config.affinity_every_steps
  return train


def eval_data_config(config, tasks: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The data config runs are scored with: the shared training block's, whatever the run's own overrides, so every
  model sees the same test pairs of a task."""
  data = ml_collections.ConfigDict(config.train.data.to_dict())
  data.tasks = ",".join(tasks)
  return data


def execute_run(config_json: str, run: Run) -> dict:
  """Trains (or resumes) one run, scores its export on the test split, writes and returns its result."""
  from postembed_jax.evaluation import evaluators
  from postembed_jax.serving.embedder import Embedder
  from postembed_jax.train.loop import train_and_evaluate

  config = ml_collections.ConfigDict(json.loads(config_json))
  workdir = Path(config.workdir) / run.name
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / OVERRIDES_FILE).write_text(json.dumps(run.overrides(), indent=2))
  start = time.perf_counter()
  train = run_config(config, run)
  train_and_evaluate(train, workdir)
  train_seconds = time.perf_counter() - start
  embedder = Embedder.from_pretrained(str(workdir / "export"), max_length=train.data.max_length,
                                      batch_size=config.evaluation.batch_size)
  metrics = evaluators.evaluate(embedder, config.evaluators, split="test",
                                data_config=eval_data_config(config, run.eval_tasks),
                                settings=evaluators.EvalSettings.from_config(config.evaluation))
  result = {"variant": run.variant, "seed": run.seed, "tasks": list(run.tasks), "eval_tasks": list(run.eval_tasks),
            "train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - start
                                                                             - train_seconds, 1),
            "metrics": metrics}
  (workdir / RESULT_FILE).write_text(json.dumps(result, indent=2))
  return result


def read_result(config, run: Run) -> dict | None:
  path = Path(config.workdir) / run.name / RESULT_FILE
  return json.loads(path.read_text()) if path.exists() else None


def run_ablation(config) -> list[dict]:
  """Runs every unfinished run (skipping finished ones), then returns all results in plan order."""
  from postembed_jax.evaluation import evaluators
  evaluators.check_names(config.evaluators)
  runs = plan_runs(config)
  pending = [r for r in runs if read_result(config, r) is None]
  print(f"Ablation in {config.workdir}: {len(runs)} runs, {len(runs) - len(pending)} finished, "
        f"{len(pending)} to run with {config.workers} worker(s).")
  config_json = config.to_json()
  if config.workers <= 1:
    for i, run in enumerate(pending):
      print(f"[{i + 1}/{len(pending)}] {run.name}: tasks {','.join(run.tasks)}")
      execute_run(config_json, run)
  else:
    # Fresh interpreters (spawn): JAX's runtime must not be forked.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(config.workers, mp_context=context) as pool:
      futures = {pool.submit(execute_run, config_json, run): run for run in pending}
      for future in concurrent.futures.as_completed(futures):
        future.result()
        print(f"finished {futures[future].name}")
  return [read_result(config, r) for r in runs]
