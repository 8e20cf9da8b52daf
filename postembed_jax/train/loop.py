"""The training loop: config + workdir in; checkpoints, metrics, an export and final validation metrics out.

``train_and_evaluate`` is the single entry point for launch/train.py, the ablation runner and notebooks. The
trainer it runs (model, data, sharded state, steps) comes from ``postembed_jax.train.setup.build``; resuming,
validation, metrics, checkpoints and the export are the loop's.

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
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from postembed_jax.evaluation import evaluators
from postembed_jax.models import heads as heads_lib
from postembed_jax.models import hf_io
from postembed_jax.models.embedder import Embedder
from postembed_jax.train import checkpoint, setup
from postembed_jax.train.affinity import AffinityProbe
from postembed_jax.train.metrics_writer import MetricsWriter


class _StopSignal:
  """SIGTERM (a preemption notice) asks the loop to save and stop at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


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
    """Records one evaluation; True when the run should stop now."""
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


def mean_pair_auc(metrics: dict[str, float]) -> float:
  values = [v for k, v in metrics.items() if k.endswith("/pair_auc")]
  return float(np.mean(values)) if values else float("nan")


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
    metrics["val/mean_pair_auc"] = mean_pair_auc(results)
    return metrics


def train_and_evaluate(config, workdir: str | Path) -> dict[str, float]:
  """Trains (resuming from ``workdir`` when it holds checkpoints), exports, returns final validation metrics."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  setup.maybe_initialize_distributed(config.distributed)
  is_main = jax.process_index() == 0
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  manager = checkpoint.make_manager(workdir, config.checkpoint)
  # A resumed or warm-started run replaces the tower: fitting the projection's PCA start would be wasted work.
  fresh_tower = manager.latest_step() is None and not config.init_checkpoint
  trainer = setup.build(config, workdir, fit_projection=fresh_tower)
  train_iter, graphdef = trainer.train_iter, trainer.graphdef

  tracker = BestTracker(
    config.checkpoint.best_metric, int(config.early_stopping.patience), float(config.early_stopping.min_delta)
  )
  if config.export_checkpoint not in EXPORT_CHECKPOINTS:
    raise ValueError(
      f"config.export_checkpoint={config.export_checkpoint!r}; choose one of {list(EXPORT_CHECKPOINTS)}."
    )
  start_step, origin = 0, f"pretrained model {config.model}"
  if manager.latest_step() is not None:
    abstract = jax.tree.map(_abstract, trainer.state, trainer.state_shardings, is_leaf=_is_variable)
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
  if is_main:
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
  writer = MetricsWriter(workdir)
  if start_step == 0 and config.eval.at_start:
    # The starting point (pretrained tower, fresh projection) on the same validation suite: what training adds.
    writer.write(0, validator(nnx.state(model.tower)))
  stop = _StopSignal()
  meta = {"seed": config.seed, "model": str(config.model), "tasks": task_names}
  recent_loss: dict[str, float] = {}
  val_metrics: dict[str, float] = {}
  bar = tqdm(total=config.total_steps, initial=start_step, desc="train", unit="step", disable=not is_main)
  examples_seen, clock = 0, time.perf_counter()
  step = start_step
  try:
    while step < config.total_steps and not tracker.stopped:
      batch = next(train_iter)
      task = batch["task"]
      single = batch.get("batches", {task: batch})  # an all-tasks batch holds one batch per task
      if probe is not None:
        for name, b in single.items():
          if name not in probe.batches:
            probe.observe(name, trainer.device_batch(b))
      metrics = trainer.train_step(batch)  # raises on a non-finite loss or gradient
      step += 1
      examples_seen += config.data.batch_size * len(single)
      if "batches" in batch:
        recent_loss.update({name: metrics[f"{name}/loss"] for name in single})
        logged = {f"train/{k}": v for k, v in metrics.items()}
      else:
        recent_loss[task] = metrics["loss"]
        logged = {f"train/{task}/{k}": v for k, v in metrics.items()}
      if trainer.task_weights is not None and "task_weights" not in meta:
        meta["task_weights"] = trainer.task_weights
      if step % config.log_every_steps == 0 or step == config.total_steps:
        elapsed = time.perf_counter() - clock
        writer.write(
          step, logged | {"train/loss": metrics["loss"], "train/examples_per_s": examples_seen / max(elapsed, 1e-9)}
        )
        bar.set_postfix(
          {**{t: f"{l:.3f}" for t, l in recent_loss.items()}, "ex/s": f"{examples_seen / max(elapsed, 1e-9):.1f}"}
        )
        examples_seen, clock = 0, time.perf_counter()
      bar.update(1)
      if probe is not None and probe.ready and step % config.affinity_every_steps == 0:
        writer.write_matrix(step, "affinity", probe(trainer.state["params"]), task_names)
      eval_now = step % config.eval.every_steps == 0 or step == config.total_steps
      if eval_now:
        val_metrics = validator(nnx.state(nnx.merge(graphdef, trainer.state["params"]).tower))
        writer.write(step, val_metrics)
        bar.write(
          f"step {step}: "
          + ", ".join(
            f"{k}={v:.4f}"
            for k, v in sorted(val_metrics.items())
            if "pair_auc" in k and not k.endswith(("_low", "_high"))
          )
        )
        stop_now = tracker.update(step, val_metrics)
        if tracker.best_step == step and config.export_checkpoint == "best" and config.export and is_main:
          export(config, graphdef, trainer.state["params"], trainer.tokenizer, workdir, val_metrics, step)
        if stop_now:
          bar.write(
            f"Early stopping at step {step}: {tracker.metric} has not improved for {tracker.since_best} "
            f"evaluations (best {tracker.best:.4f} at step {tracker.best_step})."
          )
      meta["best"] = tracker.state()
      stopping = stop.requested  # read once: a signal landing between the save and the check must not skip it
      checkpoint.save(
        manager,
        step,
        trainer.state,
        train_iter.get_state(),
        meta,
        metrics=_finite(val_metrics) if eval_now else None,
        force=stopping or tracker.stopped or step == config.total_steps,
      )
      if stopping:
        bar.write(f"SIGTERM: saved step {step}; stopping.")
        break
  finally:
    bar.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    stop.restore()

  finished = step == config.total_steps or tracker.stopped
  if finished and config.export_checkpoint == "best" and tracker.best_step > 0:
    val_metrics = tracker.best_metrics  # its export was written when it was evaluated
  elif finished and config.export and is_main:
    export(config, graphdef, trainer.state["params"], trainer.tokenizer, workdir, val_metrics, step)
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


def export(config, graphdef, params, tokenizer, workdir: Path, val_metrics: dict[str, float], step: int) -> Path:
  """``<workdir>/export``: loadable by Embedder.from_pretrained and by SentenceTransformer(path) alike;
  ``<workdir>/export_st`` points at the same directory for users who look for the sentence-transformers name."""
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
      "validation": val_metrics,
      "config": json.loads(config.to_json_best_effort()),
      "matryoshka_widths": list(widths) if widths else None,
    },
  )
  link = workdir / "export_st"
  if not link.is_symlink():
    link.symlink_to("export", target_is_directory=True)
  return out
