"""The training loop: config + workdir in; checkpoints, metrics, an export and final validation metrics out.

``train_and_evaluate`` is the single entry point for launch/train.py, the ablation runner and notebooks.
"""

from __future__ import annotations

import functools
import json
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from postembed_jax import compilation_cache
from postembed_jax.ablation.affinity import lookahead_affinity
from postembed_jax.data import pipeline
from postembed_jax.evaluation import evaluators
from postembed_jax.models import hf_io
from postembed_jax.models.encoder import EncoderConfig
from postembed_jax.serving.embedder import Embedder
from postembed_jax.train import checkpoint, sharding
from postembed_jax.train import state as state_lib
from postembed_jax.train import step as step_lib
from postembed_jax.train.metrics_writer import MetricsWriter


def maybe_initialize_distributed(distributed_config) -> None:
  """Multi-host: join the other processes before any JAX computation (no-op for a single process)."""
  if distributed_config.num_processes > 1 and not jax.distributed.is_initialized():
    if not distributed_config.coordinator_address:
      raise ValueError("config.distributed.num_processes > 1 needs config.distributed.coordinator_address.")
    jax.distributed.initialize(coordinator_address=distributed_config.coordinator_address,
                               num_processes=distributed_config.num_processes,
                               process_id=distributed_config.process_id)


class _StopSignal:
  """SIGTERM (a preemption notice) asks the loop to save and stop at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def mean_pair_auc(metrics: dict[str, float]) -> float:
  values = [v for k, v in metrics.items() if k.endswith("/pair_auc")]
  return float(np.mean(values)) if values else float("nan")


class Validator:
  """Runs the configured evaluators on the validation split with the current tower, compiling once."""

  def __init__(self, config, tower, tokenizer):
    self.config = config
    self.names = evaluators.check_names(config.eval.evaluators)
    self.embedder = Embedder(tower, tokenizer, max_length=config.data.max_length,
                             batch_size=config.eval.batch_size, name="training")
    self.settings = evaluators.EvalSettings(max_examples=config.eval.max_examples)

  def __call__(self, tower_params) -> dict[str, float]:
    self.embedder.set_params(tower_params)
    results = evaluators.evaluate(self.embedder, self.names, split="validation", data_config=self.config.data,
                                  settings=self.settings)
    metrics = {f"val/{k}": v for k, v in results.items()}
    metrics["val/mean_pair_auc"] = mean_pair_auc(results)
    return metrics


class AffinityProbe:
  """Lookahead inter-task affinity on fixed probe batches (the first batch of each task the run draws), so the
  matrix compiles once and its changes over training come from the parameters alone. The lookahead steps move the
  shared tower only (head gradients zeroed), with SGD at ``optim.lr``, as in Fifty et al. (2021)."""

  def __init__(self, graphdef, task_names: list[str], pair_tasks: list[str], lr: float):
    self.task_names = task_names
    self.batches: dict[str, dict] = {}

    def task_loss(task, params, batch):
      key = step_lib.PAIRS if task in pair_tasks else task
      return step_lib.model_loss(graphdef, params, batch, key=key, pair_tasks=pair_tasks, loss_weights={},
                                 rngs=None)[1][0]

    loss_fns = [functools.partial(task_loss, task) for task in task_names]

    def tower_only(grad):
      return jax.tree_util.tree_map_with_path(
          lambda path, g: g if path[0].key == "tower" else jnp.zeros_like(g), grad)

    def affinity(params, batches):
      grads = [tower_only(jax.grad(loss)(params, batch)) for loss, batch in zip(loss_fns, batches)]
      return lookahead_affinity(loss_fns, params, batches, lr, grads)

    self._affinity = jax.jit(affinity)

  def observe(self, task: str, batch: dict) -> None:
    self.batches.setdefault(task, batch)

  @property
  def ready(self) -> bool:
    return len(self.batches) == len(self.task_names)

  def __call__(self, params) -> np.ndarray:
    return np.asarray(self._affinity(params, tuple(self.batches[t] for t in self.task_names)))


def train_and_evaluate(config, workdir: str | Path) -> dict[str, float]:
  """Trains (resuming from ``workdir`` when it holds checkpoints), exports, returns final validation metrics."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  maybe_initialize_distributed(config.distributed)
  compilation_cache.enable(config.compilation_cache_dir)
  is_main = jax.process_index() == 0
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  if config.dtype not in state_lib.DTYPES:
    raise ValueError(f"config.dtype={config.dtype!r}; choose one of {sorted(state_lib.DTYPES)}.")

  mesh = sharding.make_mesh(config.mesh)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  model_dir = hf_io.resolve_model_dir(config.model)
  cfg = EncoderConfig.from_hf_config(hf_io.read_hf_config(model_dir))
  tokenizer = hf_io.load_tokenizer(model_dir)
  train_iter = pipeline.make_train_iterator(config.data, tokenizer, seed=config.seed,
                                            process_index=jax.process_index(), process_count=jax.process_count())
  infos = state_lib.task_infos(config, train_iter.label_names, train_iter.task_names)

  graphdef, params, param_shardings = state_lib.create_params(config, model_dir, cfg, infos, mesh, rules)
  tx, train_state, state_shardings = state_lib.init_train_state(config, params, param_shardings, mesh, rules)

  manager = checkpoint.make_manager(workdir, config.checkpoint)
  start_step, origin = 0, f"pretrained model {config.model}"
  if manager.latest_step() is not None:
    abstract = jax.tree.map(_abstract, train_state, state_shardings, is_leaf=_is_variable)
    train_state, data_state, _ = checkpoint.restore(manager, manager.latest_step(), abstract)
    train_iter.set_state(data_state)
    start_step, origin = int(train_state["step"]), f"{workdir}/checkpoints/{manager.latest_step()}"
  elif config.init_checkpoint:
    tower = checkpoint.restore_tower(config.init_checkpoint, train_state["params"]["tower"])
    train_state["params"]["tower"] = jax.device_put(tower, param_shardings["tower"])
    origin = f"tower of {config.init_checkpoint}"
  if is_main:
    print(f"Starting at step {start_step} of {config.total_steps} from {origin}; mesh {dict(mesh.shape)}; "
          f"tasks {train_iter.task_names} with probabilities "
          f"{ {k: round(v, 3) for k, v in train_iter.probabilities.items()} }.")

  model = nnx.merge(graphdef, train_state["params"])
  validator = Validator(config, model.tower, tokenizer)
  batch_sharding = sharding.batch_sharding(mesh)
  task_names = train_iter.task_names
  pair_tasks = [t for t in task_names if infos[t].num_classes is None]
  loss_weights = {t: float(config.loss_weights.get(t, 1.0)) for t in task_names}
  steps = {}  # one jitted step for all pair tasks, one per classification task; compiled per batch shape

  def step_for(key: str):
    if key not in steps:
      steps[key] = step_lib.make_train_step(graphdef, tx, key=key, pair_tasks=pair_tasks, loss_weights=loss_weights,
                                            seed=config.seed, state_shardings=state_shardings,
                                            batch_sharding=batch_sharding)
    return steps[key]

  probe = None
  if config.affinity_every_steps and len(task_names) > 1 and not config.data.mixed:
    probe = AffinityProbe(graphdef, task_names, pair_tasks, config.optim.lr)
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
    while step < config.total_steps:
      batch = next(train_iter)
      task = batch["task"]
      device_batch = step_lib.global_batch(step_lib.with_task_ids(batch, pair_tasks), batch_sharding)
      if probe is not None:
        probe.observe(task, device_batch)
      train_state, metrics = step_for(step_lib.step_key(batch))(train_state, device_batch)
      step += 1
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
      if bad:
        raise FloatingPointError(f"Non-finite {' and '.join(bad)} at step {step} on task {task!r} "
                                 f"(loss={metrics['loss']}, grad_norm={metrics['grad_norm']}). The last good "
                                 f"checkpoint is in {workdir}/checkpoints.")
      examples_seen += config.data.batch_size
      recent_loss[task] = metrics["loss"]
      if step % config.log_every_steps == 0 or step == config.total_steps:
        elapsed = time.perf_counter() - clock
        writer.write(step, {f"train/{task}/{k}": v for k, v in metrics.items()} | {
            "train/loss": metrics["loss"], "train/examples_per_s": examples_seen / max(elapsed, 1e-9)})
        bar.set_postfix({**{t: f"{l:.3f}" for t, l in recent_loss.items()},
                         "ex/s": f"{examples_seen / max(elapsed, 1e-9):.1f}"})
        examples_seen, clock = 0, time.perf_counter()
      bar.update(1)
      if probe is not None and probe.ready and step % config.affinity_every_steps == 0:
        writer.write_matrix(step, "affinity", probe(train_state["params"]), task_names)
      eval_now = step % config.eval.every_steps == 0 or step == config.total_steps
      if eval_now:
        val_metrics = validator(nnx.state(nnx.merge(graphdef, train_state["params"]).tower))
        writer.write(step, val_metrics)
        bar.write(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(val_metrics.items())
                                               if "pair_auc" in k and not k.endswith(("_low", "_high"))))
      stopping = stop.requested  # read once: a signal landing between the save and the check must not skip it
      checkpoint.save(manager, step, train_state, train_iter.get_state(), meta,
                      metrics=_finite(val_metrics) if eval_now else None,
                      force=stopping or step == config.total_steps)
      if stopping:
        bar.write(f"SIGTERM: saved step {step}; stopping.")
        break
  finally:
    bar.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
    stop.restore()

  if step == config.total_steps and config.export and is_main:
    export(config, graphdef, train_state["params"], tokenizer, workdir, val_metrics, step)
  return val_metrics


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
  settings = hf_io.TowerSettings(pooling=config.pooling, normalize=config.normalize, embed_dim=config.embed_dim,
                                 max_length=config.data.max_length)
  out = hf_io.export_model(tower, tokenizer, settings, workdir / "export", metadata={
      "step": step, "validation": val_metrics, "config": json.loads(config.to_json_best_effort())})
  link = workdir / "export_st"
  if not link.is_symlink():
    link.symlink_to("export", target_is_directory=True)
  return out
