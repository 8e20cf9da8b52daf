"""Executes the ablation's plan (plan.py): trains and scores its runs, resumably, one after another or in worker
processes, phase 2 of an arm as soon as its learning rate is chosen.

Each run is the training config plus a few ml_collections overrides (``plan.run_overrides``), trained in
``<workdir>/<regime>/<arm>/lr_<lr>/seed_<s>`` (the arm it is trained as: ``plan.Run.trained_arm``) by
``train_and_evaluate``. A trained run has ``train.json``, a scored one ``result.json``; both are skipped when
present, and a killed run resumes from its checkpoint. Runs go one after another, or to ``workers`` processes at
once, longest first.

A SIGTERM to the ablation (a scheduler's preemption notice) stops it as it stops one training run: every run in
training saves and stops, no new run starts, and the ablation raises ``launching.Preempted``; the same command
resumes. With worker processes the parent passes the notice on: workers are fresh interpreters that would otherwise
be orphaned and train on. A worker that is not training (idle, or scoring) ignores the notice and finishes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import ml_collections

from postembed_jax import host_malloc, launching
from postembed_jax.ablation import plan

TRAIN_FILE = "train.json"  # written when training (and the export) finished: the run's validation record
RESULT_FILE = "result.json"  # written when the export was scored on the test split
OVERRIDES_FILE = "overrides.json"
SELECTION_FILE = "selection.json"  # in the ablation's workdir: every arm's grid values and chosen learning rate
EXPORT_META = "export/postembed.json"


@dataclasses.dataclass
class Outcome:
  """What ``run_ablation`` returns: the scored final runs, every selection run's record and the choices."""

  results: list[dict]  # phase 2, test-scored, in plan order
  selection: list[dict]  # phase 1 training records, each with "chosen"
  runs: list[dict]  # every trained run once (a reused selection run appears once), for timings
  choices: dict[str, dict]  # arm key -> {"metric", "lr", "values": {lr: validation value}}


def _read_json(path: Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None


def read_train(config, run: plan.Run) -> dict | None:
  return _read_json(Path(config.workdir) / run.name / TRAIN_FILE)


def read_result(config, run: plan.Run) -> dict | None:
  return _read_json(Path(config.workdir) / run.name / RESULT_FILE)


def _steps_trained(workdir: Path) -> int:
  from postembed_jax.train.metrics_writer import read_metrics

  return max((int(r["step"]) for r in read_metrics(workdir)), default=0)  # a run stops at a logged evaluation


def _train(config, run: plan.Run, workdir: Path) -> dict:
  """Trains (or resumes) one run unless its export is final; writes and returns its training record."""
  from postembed_jax.train.loop import train_and_evaluate

  train = plan.run_config(config, run)
  start = time.perf_counter()
  meta = _read_json(workdir / EXPORT_META)
  # A best-so-far export is written mid-run; only a finished run marks it final, so a killed one is resumed.
  if not (meta or {}).get("final"):
    train_and_evaluate(train, workdir)
    meta = _read_json(workdir / EXPORT_META)
    if not (meta or {}).get("final"):
      raise RuntimeError(f"Run {run.name} finished training without a final export in {workdir / 'export'}.")
  key = plan.selection_key(config, run.arm)
  validation = meta.get("validation") or {}
  arm = run.trained_arm
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


def execute_run(config_json: str, run: plan.Run, score: bool) -> dict:
  """Trains one run (unless trained) and, with ``score``, scores its export on the test split: returns the
  training record, or the result (the record plus test ``metrics``)."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  workdir = Path(config.workdir) / run.name
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / OVERRIDES_FILE).write_text(json.dumps(plan.run_overrides(config, run), indent=2))
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
    data_config=plan.eval_data_config(config, run.arm.eval_tasks),
    settings=evaluators.EvalSettings.from_config(config.evaluation),
  )
  result = dict(record, eval_seconds=round(time.perf_counter() - start, 1), metrics=metrics)
  (workdir / RESULT_FILE).write_text(json.dumps(result, indent=2))
  return result


def _start_worker() -> None:
  """Worker initializer: the launcher's malloc settings (a spawned interpreter does not inherit them), and SIGTERM
  ignored, since only a training run (its PreemptionWatch) acts on the notice the parent passes on."""
  host_malloc.keep_freed_memory()
  signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _ForwardSigterm:
  """Holds the parent's SIGTERM handler while worker processes run: records the notice and passes it to them."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True
    for child in multiprocessing.active_children():
      os.kill(child.pid, signal.SIGTERM)

  def close(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)


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
  from postembed_jax.data import config as data_config_lib
  from postembed_jax.data import debian
  from postembed_jax.evaluation import evaluators

  evaluators.check_names(config.evaluators)
  arms, grid = plan.plan_arms(config), plan.lr_grid(config)
  # An unknown task or a bad user file (train.data.files) fails before any training.
  data_config_lib.resolve_tasks(plan.eval_data_config(config, arms[0].tasks))
  for arm in arms:
    plan.selection_key(config, arm)  # a bad selection metric fails before any training
  if config.workers > 1 and config.train.data.source == "debian":
    debian.prepare(config.train.data)  # once, here: workers starting together would each build it and collide
  selecting = {arm.key: plan.selection_runs(config, [arm]) for arm in arms}
  records: dict[str, dict] = {}  # run name -> training record, or result once scored
  scored: set[str] = set()
  choices: dict[str, dict] = {}
  ready: list[tuple[plan.Run, bool]] = []  # (run, score on test)
  queued: set[tuple[str, bool]] = set()

  def queue(run: plan.Run, score: bool) -> None:
    if (run.name, score) not in queued:
      queued.add((run.name, score))
      ready.append((run, score))

  def advance(arm: plan.Arm) -> None:
    """Queues what an arm can run next: its untrained selection runs or, once all are trained, the choice of its
    learning rate (on their validation records) and its unscored final runs."""
    todo = [r for r in selecting[arm.key] if r.name not in records]
    for run in todo:
      queue(run, False)
    if todo or arm.key in choices:
      return
    key = plan.selection_key(config, arm)
    lr, values = (
      plan.choose_lr([records[r.name] for r in selecting[arm.key]], key) if selecting[arm.key] else (grid[0], {})
    )
    choices[arm.key] = {"metric": key, "lr": lr, "values": values}
    for run in plan.final_runs(config, arm, lr):
      if run.name not in scored:
        queue(run, True)

  for arm in arms:
    for run in selecting[arm.key] + [r for lr in grid for r in plan.final_runs(config, arm, lr)]:
      if (found := read_result(config, run)) is not None:
        records[run.name] = found
        scored.add(run.name)
      elif (found := read_train(config, run)) is not None:
        records[run.name] = found
    advance(arm)
  print(
    f"Ablation in {config.workdir}: {plan.count_runs(config)} trainings in {len(arms)} arms (lr grid "
    f"{', '.join(f'{v:g}' for v in grid)}); {len(records)} found trained; {config.workers} worker(s)."
  )
  arm_of = {arm.key: arm for arm in arms}
  if config.workers <= 1:
    pool_context = contextlib.nullcontext(_Inline())
  else:  # fresh interpreters (spawn): JAX's runtime must not be forked
    pool_context = concurrent.futures.ProcessPoolExecutor(
      config.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
    )
  preempted: list[str] = []
  notice = _ForwardSigterm() if config.workers > 1 else None  # one process: the training loop's own watch
  try:
    with pool_context as pool:
      _execute(config, pool, ready, records, scored, advance, arm_of, notice, preempted)
  finally:
    if notice is not None:
      notice.close()
  _write_selection(config, choices)
  if preempted or (notice is not None and notice.requested):
    raise launching.Preempted(
      f"Ablation stopped by SIGTERM; {len(preempted)} run(s) saved mid-training ({', '.join(preempted) or 'none'})."
    )
  return _outcome(config, arms, records, choices)


def _execute(config, pool, ready, records, scored, advance, arm_of, notice, preempted) -> None:
  """Submits ready runs longest first, at most ``workers`` at a time, until none is left or a notice came; a run
  stopped by the notice is added to ``preempted``."""
  config_json, started = config.to_json(), 0
  in_flight: dict[concurrent.futures.Future, tuple[plan.Run, bool]] = {}
  while (ready and not (notice is not None and notice.requested)) or in_flight:
    while ready and not (notice is not None and notice.requested) and len(in_flight) < max(1, config.workers):
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
    if not in_flight:
      break
    finished, _ = concurrent.futures.wait(list(in_flight), return_when=concurrent.futures.FIRST_COMPLETED)
    for future in finished:
      run, score = in_flight.pop(future)
      try:
        record = records[run.name] = future.result()
      except launching.Preempted:
        if notice is None:
          raise  # one process: the run's own message is the ablation's
        preempted.append(run.name)
        continue
      if score:
        scored.add(run.name)
      print(
        f"finished {run.name}: {record['steps']} steps, best {record['selection_metric']} "
        f"{record['selection_value']:.4f} at step {record['best_step']}",
        flush=True,
      )
      for arm in arm_of.values():  # every arm: one sharing this run's training (plan.Arm.runs_as) may now move on
        advance(arm)


def _write_selection(config, choices: dict[str, dict]) -> None:
  path = Path(config.workdir) / SELECTION_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(
    json.dumps(
      {k: dict(v, values={f"{lr:g}": x for lr, x in v["values"].items()}) for k, v in choices.items()}, indent=2
    )
  )


def _outcome(config, arms: list[plan.Arm], records: dict[str, dict], choices: dict[str, dict]) -> Outcome:
  results, selection, runs, timed = [], [], [], set()
  for arm in arms:
    chosen = choices[arm.key]["lr"]
    picking, final = plan.selection_runs(config, [arm]), plan.final_runs(config, arm, chosen)
    as_arm = {"regime": arm.regime, "focus": arm.focus, "variant": arm.variant}  # a shared run counts for both arms
    selection += [dict(records[r.name], chosen=r.lr == chosen, **as_arm) for r in picking]
    results += [dict(records[r.name], **as_arm) for r in final]
    for run in picking + [r for r in final if r not in picking]:
      phase = "selection+final" if run in picking and run in final else "selection" if run in picking else "final"
      if run.name not in timed:
        timed.add(run.name)
        runs.append(dict(records[run.name], phase=phase))
  return Outcome(results=results, selection=selection, runs=runs, choices=choices)
