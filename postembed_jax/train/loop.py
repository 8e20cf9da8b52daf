"""The training loop: config + workdir in; checkpoints, metrics, an export and final validation metrics out.

``train_and_evaluate`` is the single entry point for launch/train.py, the ablation runner and notebooks. The
trainer it runs (model, data, sharded state, steps) comes from ``postembed_jax.train.setup.build``; resuming,
validation, metrics, checkpoints and the export are the loop's.

The device does not wait on the host: batches are made and sent to the devices in a prefetch thread
(``train/prefetch.py``), and the steps' metrics stay on the device until a log step, a validation or a save reads
them together (``train/step_metrics.py``), with examples/s, model FLOP/s and MFU (``train/mfu.py``).

Each run goes to its best: validation every ``eval.every_steps`` tracks the best value of
``checkpoint.best_metric``; with ``early_stopping.patience`` > 0 the run stops after that many evaluations without
an improvement of at least ``early_stopping.min_delta``. With ``export_checkpoint = "best"`` the export is written
whenever validation reaches a new best, so it holds the best evaluated parameters (and survives any later crash);
with ``"last"`` it is written once, at the end. The tracker lives in each checkpoint's metadata, so a resumed
run counts on, and a run that stopped early stays stopped.

Where a run starts from, first match wins:
  1. the latest checkpoint in ``<workdir>/checkpoints``: an exact resume (parameters, optimizer state, step and
     data iterator position), onto the same or a different mesh;
  2. ``config.init_checkpoint``: the tower of another run's checkpoint, with fresh heads and optimizer at step 0;
  3. the pretrained model ``config.model``.
A checkpoint of another run (other tasks, model or width) is refused before it is restored. A SIGTERM saves at
the next step boundary that every process agrees on (``train/preemption.py``) and raises ``launching.Preempted``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from postembed_jax import launching
from postembed_jax.data import mixture
from postembed_jax.evaluation import evaluators
from postembed_jax.evaluation import examples as eval_examples
from postembed_jax.models import heads as heads_lib
from postembed_jax.models import hf_io
from postembed_jax.models.embedder import Embedder
from postembed_jax.train import checkpoint, mfu, preemption, prefetch, setup, step_metrics
from postembed_jax.train.affinity import AffinityProbe
from postembed_jax.train.metrics_writer import MetricsWriter


@dataclasses.dataclass
class BestTracker:
  """The best validation value so far and where it was (ties go to the later step, as the checkpoint manager's
  best-checkpoint policy keeps it), and how many evaluations have passed without an improvement of at least
  ``min_delta`` over the value that last reset the count: the patience counter."""

  metric: str
  patience: int = 0  # 0: never stop early
  min_delta: float = 0.0
  best: float = -math.inf
  best_step: int = -1
  best_metrics: dict = dataclasses.field(default_factory=dict)
  reference: float = -math.inf
  since_best: int = 0
  stopped: bool = False

  def update(self, step: int, metrics: dict[str, float]) -> bool:
    """Records one evaluation; True when the run should stop now. With no metric (``best_metric`` gave None)
    nothing ranks evaluations: no best step, never a stop."""
    if self.metric is None:
      return False
    value = metrics.get(self.metric, math.nan)
    if not math.isfinite(value):
      raise ValueError(
        f"checkpoint.best_metric={self.metric!r} is missing from the validation metrics or not "
        f"finite ({value}); early stopping and the best export need it. Validation has: "
        f"{sorted(metrics)}."
      )
    if value >= self.best:
      self.best, self.best_step, self.best_metrics = value, step, dict(metrics)
    if value > self.reference + self.min_delta:
      self.reference, self.since_best = value, 0
    else:
      self.since_best += 1
    self.stopped = bool(self.patience) and self.since_best >= self.patience
    return self.stopped

  def state(self) -> dict:
    return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("metric", "patience", "min_delta")}

  def load(self, state: dict) -> None:
    for k, v in state.items():
      setattr(self, k, v)


# Means over tasks that validation adds when it has a task's metric: "val/<name>" from every "<task>/<metric>".
MEAN_METRICS = {"mean_pair_auc": "pair_auc", "mean_linear_map": "linear_map"}
AUTO_METRIC = "auto"


def best_metric(config) -> str | None:
  """The validation metric that ranks evaluations (the best checkpoint and export, early stopping):
  ``checkpoint.best_metric`` as given, or for ``"auto"`` ``val/mean_pair_auc`` when the ``pair_auc`` evaluator
  validates a pair task, else ``val/mean_linear_map`` (the linear probe's mAP) when ``classification`` validates a
  label task, else None, so that any task set trains: nothing ranks evaluations, the export is the last checkpoint
  and early stopping is refused. A named metric needs evaluators to produce it."""
  metric = config.checkpoint.best_metric
  names = evaluators.check_names(config.eval.evaluators)
  if metric != AUTO_METRIC:
    if not names:
      raise ValueError(
        f"checkpoint.best_metric={metric!r} ranks validation metrics, but config.eval.evaluators is empty; name "
        f"evaluators, or set checkpoint.best_metric='{AUTO_METRIC}' to export the last checkpoint."
      )
    return metric
  if "pair_auc" in names and eval_examples.configured_tasks(config.data, kind="pair"):
    return "val/mean_pair_auc"
  if "classification" in names and eval_examples.configured_tasks(config.data, kind="classification"):
    return "val/mean_linear_map"
  return None


class Validator:
  """Runs the configured evaluators on the validation split with the current tower, compiling once."""

  def __init__(self, config, tower, tokenizer):
    self.config = config
    self.names = evaluators.check_names(config.eval.evaluators)
    self.embedder = Embedder(
      tower, tokenizer, max_length=config.data.max_length, batch_size=config.eval.batch_size, name="training"
    )
    self.settings = evaluators.EvalSettings(max_examples=config.eval.max_examples)

  def __call__(self, tower_params) -> dict[str, float]:
    self.embedder.set_params(tower_params)
    results = evaluators.evaluate(
      self.embedder, self.names, split="validation", data_config=self.config.data, settings=self.settings
    )
    metrics = {f"val/{k}": v for k, v in results.items()}
    for name, metric in MEAN_METRICS.items():
      values = [v for k, v in results.items() if k.endswith(f"/{metric}")]
      if values:
        metrics[f"val/{name}"] = float(np.mean(values))
    return metrics


class Throughput:
  """Examples/s and model FLOP/s of training between log steps, timed over the spans that end in a read of the
  steps' metrics (which waits for them); validation, affinity probes and checkpoint saves are left out. MFU
  divides by the devices' dense bf16 peak (``train/mfu.py``); it is left out for other compute dtypes and for
  devices without a known peak (CPUs)."""

  def __init__(self, dtype: str):
    peak = mfu.peak_tflops(jax.devices()[0].device_kind) if dtype == "bfloat16" else None
    self.peak = peak * 1e12 * jax.device_count() if peak else None
    self.examples, self.flops, self.seconds = 0, 0.0, 0.0
    self._since = time.perf_counter()

  def add(self, examples: int, flops: float) -> None:
    self.examples += examples
    self.flops += flops

  def steps_done(self) -> None:
    """The steps added so far are done (their metrics were just read): their time counts."""
    now = time.perf_counter()
    self.seconds, self._since = self.seconds + now - self._since, now

  def paused(self) -> None:
    """Time since the last read that no step used (validation, a save): not counted."""
    self._since = time.perf_counter()

  def take(self) -> dict[str, float]:
    """The rates since the last ``take``, as metrics; then counting starts again."""
    seconds = max(self.seconds, 1e-9)
    out = {"train/examples_per_s": self.examples / seconds, "train/model_tflops_per_s": self.flops / seconds / 1e12}
    if self.peak:
      out["train/mfu"] = self.flops / seconds / self.peak
    self.examples, self.flops, self.seconds = 0, 0.0, 0.0
    return out


def train_and_evaluate(config, workdir: str | Path) -> dict[str, float]:
  """Trains (resuming from ``workdir`` when it holds checkpoints), exports, returns final validation metrics.
  Raises ``checkpoint.ResumeMismatch`` when ``workdir`` holds another run's checkpoints, and ``launching.Preempted``
  when a SIGTERM stopped the run before its end, having saved: the same call again resumes it."""
  setup.start_jax(config)
  watch = preemption.PreemptionWatch()  # before the model loads: from here on a notice saves rather than kills
  try:
    return _train_and_evaluate(config, Path(workdir), watch)
  finally:
    watch.close()


def _train_and_evaluate(config, workdir: Path, watch: preemption.PreemptionWatch) -> dict[str, float]:
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  ranked_by = best_metric(config)
  if ranked_by is None and int(config.early_stopping.patience):
    raise ValueError(
      "config.early_stopping.patience > 0 needs a validation metric to stop on, but validation yields none that "
      f"ranks runs (config.eval.evaluators={config.eval.evaluators!r}); add 'pair_auc' or 'classification'."
    )
  manager = checkpoint.make_manager(workdir, config.checkpoint, best_metric=ranked_by)
  # A resumed or warm-started run replaces the tower: fitting the projection's PCA start would be wasted work.
  fresh_tower = manager.latest_step() is None and not config.init_checkpoint
  trainer = setup.build(config, workdir, fit_projection=fresh_tower)
  train_iter, graphdef = trainer.train_iter, trainer.graphdef

  tracker = BestTracker(ranked_by, int(config.early_stopping.patience), float(config.early_stopping.min_delta))
  if is_main:
    print(
      f"Best checkpoint by {ranked_by}."
      if ranked_by
      else "No validation metric ranks checkpoints (no pair_auc or classification evaluator): the export is the "
      "last checkpoint."
    )
  if config.export_checkpoint not in EXPORT_CHECKPOINTS:
    raise ValueError(
      f"config.export_checkpoint={config.export_checkpoint!r}; choose one of {list(EXPORT_CHECKPOINTS)}."
    )
  # Saved in every checkpoint (checkpoint.RUN_FIELDS): a resume checks that the checkpoint is this run's.
  meta = {"seed": config.seed, "model": str(config.model), "tasks": trainer.task_names, "embed_dim": config.embed_dim}
  resumed = manager.latest_step() is not None
  start_step, origin = 0, f"pretrained model {config.model}"
  if resumed:
    abstract = jax.tree.map(_abstract, trainer.state, trainer.state_shardings, is_leaf=_is_variable)
    checkpoint.check_resumable(manager, manager.latest_step(), abstract, meta)
    trainer.state, data_state, saved_meta = checkpoint.restore(manager, manager.latest_step(), abstract)
    train_iter.set_state(data_state)
    if saved_meta.get("task_weights"):
      trainer.task_weights = dict(saved_meta["task_weights"])  # initial_loss weights were measured at step 0
    tracker.load(saved_meta.get("best", {}))
    start_step, origin = int(trainer.state["step"]), f"{workdir}/checkpoints/{manager.latest_step()}"
  elif config.init_checkpoint:
    tower = checkpoint.restore_tower(config.init_checkpoint, trainer.state["params"]["tower"])
    trainer.state["params"]["tower"] = jax.device_put(tower, trainer.param_shardings["tower"])
    origin = f"tower of {config.init_checkpoint}"
  if is_main:  # once the workdir's checkpoint is known to be this run's
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    print(
      f"Starting at step {start_step} of {config.total_steps} from {origin}; mesh {dict(trainer.mesh.shape)}; "
      f"tasks {train_iter.task_names} "
      + (
        f"all in every step ({trainer.layout} layout, task weighting {config.task_weighting})."
        if config.data.task_mixing == "all_tasks_per_step"
        else f"with probabilities { {k: round(v, 3) for k, v in train_iter.probabilities.items()} }."
      )
    )

  model = nnx.merge(graphdef, trainer.state["params"])
  validator = Validator(config, model.tower, trainer.tokenizer)
  task_names = trainer.task_names
  probe = None
  if config.affinity_every_steps and len(task_names) > 1 and not config.data.mixed:
    probe = AffinityProbe(graphdef, task_names, trainer.pair_tasks, config.optim.lr, widths=trainer.matryoshka_widths)
  writer = MetricsWriter(workdir, keep_through=start_step if resumed else -1)  # each step logged once
  if start_step == 0 and config.eval.at_start:
    # The starting point (pretrained tower, fresh projection) on the same validation suite: what training adds.
    writer.write(0, validator(nnx.state(model.tower)))
  preempted = watch.requested()  # a notice while the model loaded or compiled: stop before the first step
  recent_loss: dict[str, float] = {}
  val_metrics: dict[str, float] = {}
  bar = tqdm(total=config.total_steps, initial=start_step, desc="train", unit="step", disable=not is_main)
  pending, rate = step_metrics.Pending(trainer.workdir), Throughput(config.dtype)
  # One process: batches are made and sent to the devices in the prefetch thread. Several: the thread makes them
  # and the main thread sends them, as the hosts agree on a common padded length there (Trainer.prepare).
  single_process = jax.process_count() == 1
  batches = prefetch.Prefetcher(
    train_iter, transform=trainer.prepare if single_process else None, count=config.total_steps - start_step
  )

  def read_steps() -> list[tuple[int, str, dict[str, float]]]:
    """The pending steps' metrics (waits for them; raises on a non-finite loss or gradient)."""
    records = pending.read()
    rate.steps_done()
    for _, t, m in records:  # an all-tasks step has "<task>/loss" for each task
      per_task = {k.removesuffix("/loss"): v for k, v in m.items() if k.endswith("/loss")}
      recent_loss.update(per_task if t == mixture.ALL_TASKS else {t: m["loss"]})
    return records

  step = start_step
  try:
    while step < config.total_steps and not tracker.stopped and not preempted:
      batch = next(batches)
      if not single_process:
        batch = trainer.prepare(batch)
      task = batch["task"]
      single = batch.get("batches", {task: batch})  # an all-tasks batch holds one batch per task
      if probe is not None:
        for name, b in single.items():
          if name not in probe.batches:
            probe.observe(name, trainer.device_batch(b))
      step += 1
      pending.add(step, task, trainer.dispatch(batch))  # does not wait for the step
      rate.add(config.data.batch_size * len(single), batch["flops"])
      if trainer.task_weights is not None and "task_weights" not in meta:
        meta["task_weights"] = trainer.task_weights
      if step % config.log_every_steps == 0 or step == config.total_steps:
        metrics = read_steps()[-1][2]
        prefix = "train/" if task == mixture.ALL_TASKS else f"train/{task}/"
        logged = {f"{prefix}{k}": v for k, v in metrics.items()}
        speed = rate.take()
        writer.write(step, logged | {"train/loss": metrics["loss"]} | speed)
        bar.set_postfix(
          {**{t: f"{l:.3f}" for t, l in recent_loss.items()}, "ex/s": f"{speed['train/examples_per_s']:.1f}"}
        )
      bar.update(1)
      if probe is not None and probe.ready and step % config.affinity_every_steps == 0:
        read_steps()
        writer.write_matrix(step, "affinity", probe(trainer.state["params"]), task_names)
        rate.paused()
      eval_now = step % config.eval.every_steps == 0 or step == config.total_steps
      if eval_now:
        read_steps()  # no validation of a state past a non-finite step
        val_metrics = validator(nnx.state(nnx.merge(graphdef, trainer.state["params"]).tower))
        writer.write(step, val_metrics)
        bar.write(
          f"step {step}: "
          + ", ".join(
            f"{k}={v:.4f}"
            for k, v in sorted(val_metrics.items())
            if ("pair_auc" in k or k == tracker.metric) and not k.endswith(("_low", "_high"))
          )
        )
        stop_now = tracker.update(step, val_metrics)
        if tracker.best_step == step and config.export_checkpoint == "best" and config.export and is_main:
          export(config, graphdef, trainer.state["params"], trainer.tokenizer, workdir, val_metrics, step, final=False)
        if stop_now:
          bar.write(
            f"Early stopping at step {step}: {tracker.metric} has not improved for {tracker.since_best} "
            f"evaluations (best {tracker.best:.4f} at step {tracker.best_step})."
          )
        rate.paused()
      meta["best"] = tracker.state()
      preempted = watch.requested()  # the same answer on every process: they save this step together
      force = preempted or tracker.stopped or step == config.total_steps
      if force or manager.should_save(step):
        read_steps()  # no checkpoint of a state past a non-finite step
      saved = checkpoint.save(
        manager,
        step,
        trainer.state,
        batches.get_state(),  # the position after this step's batch, not the prefetch thread's
        meta,
        metrics=_finite(val_metrics) if eval_now else None,
        force=force,
      )
      if saved:
        rate.paused()
      if preempted:
        bar.write(f"SIGTERM: saved step {step}; stopping.")
        break
  finally:
    batches.close()
    bar.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()

  finished = step == config.total_steps or tracker.stopped
  if preempted and not finished:
    raise launching.Preempted(
      f"Preempted by SIGTERM at step {step} of {config.total_steps}; saved it in {workdir}/checkpoints/{step}."
      if step > start_step
      else f"Preempted by SIGTERM before step {start_step + 1} of {config.total_steps}, so nothing new to save"
      + (f" (the run continues from {origin})." if resumed else ".")
    )
  if finished and config.export_checkpoint == "best" and tracker.best_step > 0:
    val_metrics = tracker.best_metrics  # its export was written when it was evaluated
    if config.export and is_main:  # the run is over, so the best so far is the run's best
      hf_io.update_export_metadata(workdir / "export", final=True)
  elif finished and config.export and is_main:
    export(config, graphdef, trainer.state["params"], trainer.tokenizer, workdir, val_metrics, step, final=True)
  return val_metrics


EXPORT_CHECKPOINTS = ("best", "last")


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _abstract(leaf, leaf_sharding):
  """What a restore fills in: shape, dtype and target sharding (Variables keep their metadata)."""
  if _is_variable(leaf):
    return leaf.replace(jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf_sharding))
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf_sharding)


def _finite(metrics: dict[str, float]) -> dict[str, float]:
  return {k: v for k, v in metrics.items() if np.isfinite(v)}


def export(
  config, graphdef, params, tokenizer, workdir: Path, val_metrics: dict[str, float], step: int, *, final: bool
) -> Path:
  """``<workdir>/export``: loadable by Embedder.from_pretrained and by SentenceTransformer(path) alike;
  ``<workdir>/export_st`` points at the same directory for users who look for the sentence-transformers name.
  ``final`` (in postembed.json) says the run has finished: a best-so-far export is written mid-run."""
  tower = nnx.merge(graphdef, jax.device_get(params)).tower
  settings = hf_io.TowerSettings(
    pooling=config.pooling, normalize=config.normalize, embed_dim=config.embed_dim, max_length=config.data.max_length
  )
  # The Matryoshka widths trained (None: off), full width included: the prefixes meant to be read as "dim<d>:<export>".
  widths = heads_lib.matryoshka_widths(config.get("matryoshka_dims", ""), tower.output_dim)
  out = hf_io.export_model(
    tower,
    tokenizer,
    settings,
    workdir / "export",
    metadata={
      "step": step,
      "final": final,
      "validation": val_metrics,
      "config": json.loads(config.to_json_best_effort()),
      "matryoshka_widths": list(widths) if widths else None,
    },
  )
  link = workdir / "export_st"
  if not link.is_symlink():
    link.symlink_to("export", target_is_directory=True)
  return out
