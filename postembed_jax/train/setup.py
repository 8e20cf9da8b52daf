"""A training config in, a ``Trainer`` out: mesh, sharding rules, model, data, sharded train state, optimizer and the
jitted steps, built in one place. The loop, the benchmarks and the notebooks all build it here, so what they time
or show is what training runs.

``build`` always starts from the pretrained ``config.model`` with fresh heads at step 0; where a run really starts
from (a checkpoint to resume, a tower to warm-start from) is the loop's decision, which replaces ``Trainer.state``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from postembed_jax import compilation_cache, cpu_devices
from postembed_jax.data import config as data_config_lib
from postembed_jax.data import examples as data_examples
from postembed_jax.data import mixture, tokenize
from postembed_jax.evaluation import examples as eval_examples
from postembed_jax.models import heads as heads_lib
from postembed_jax.models import hf_io
from postembed_jax.models.dtypes import dtype_of
from postembed_jax.models.embedder import Embedder
from postembed_jax.models.encoder import EncoderConfig
from postembed_jax.models.pca import fit_pca
from postembed_jax.train import mfu, sharding, step_metrics
from postembed_jax.train import state as state_lib
from postembed_jax.train import step as step_lib


def start_jax(config) -> None:
  """What must precede JAX's first computation: the host's CPU device count (``config.cpu_devices``), then, with
  several processes, joining the others (``config.distributed``). Safe to call again."""
  cpu_devices.use(config.get("cpu_devices", 0))
  distributed_config = config.distributed
  if distributed_config.num_processes > 1 and not jax.distributed.is_initialized():
    if not distributed_config.coordinator_address:
      raise ValueError("config.distributed.num_processes > 1 needs config.distributed.coordinator_address.")
    jax.distributed.initialize(
      coordinator_address=distributed_config.coordinator_address,
      num_processes=distributed_config.num_processes,
      process_id=distributed_config.process_id,
    )


@dataclasses.dataclass
class Trainer:
  """A model ready to train. Every step donates ``state`` and replaces it, so read it from here each time rather
  than keeping a reference; a restore assigns ``state`` (with the same shardings)."""

  config: Any
  mesh: Mesh
  rules: tuple[tuple[str, Any], ...]
  model_dir: Path | None  # None: a random encoder (build_random)
  tokenizer: Any  # None without data
  encoder_config: EncoderConfig
  train_iter: mixture.TrainIterator | None  # None without data
  infos: dict[str, state_lib.TaskInfo]
  graphdef: Any
  state: dict[str, Any]  # {"params", "opt_state", "step"}: what checkpoints save
  state_shardings: dict[str, Any]
  tx: optax.GradientTransformation
  batch_sharding: NamedSharding
  task_names: list[str]
  pair_tasks: list[str]  # the order of a pair batch's task_id
  loss_weights: dict[str, float]
  workdir: Path | None = None  # named in errors only
  # all_tasks_per_step: "devices" or "sequential" (see train/step.py), and the weight of each task's mean loss.
  layout: str = "sequential"
  task_weights: dict[str, float] | None = None  # None until the first all-tasks step (initial_loss needs it)
  matryoshka_widths: tuple[int, ...] | None = None  # the pair losses' widths (config.matryoshka_dims); None: off
  _steps: dict[str, Callable] = dataclasses.field(default_factory=dict, repr=False)

  @property
  def param_shardings(self):
    return self.state_shardings["params"]

  @property
  def tower_calls(self) -> str:
    """One tower call on both sides of a pair batch, or two (``config.pair_tower_calls``, heads.PAIR_TOWER_CALLS)."""
    return self.config.get("pair_tower_calls", "auto")

  def step_for(self, batch: dict[str, Any]) -> Callable:
    """The jitted step for a host batch, made once per step key (one for every pair task, one per classification
    task, since their heads differ); jit compiles it once per batch shape."""
    return self._compiled_step(step_lib.step_key(batch), self.loss_weights)

  def _compiled_step(self, key: str, loss_weights: dict[str, float]) -> Callable:
    if key not in self._steps:
      self._steps[key] = step_lib.make_train_step(
        self.graphdef,
        self.tx,
        key=key,
        pair_tasks=self.pair_tasks,
        loss_weights=loss_weights,
        seed=self.config.seed,
        state_shardings=self.state_shardings,
        batch_sharding=self.batch_sharding,
        widths=self.matryoshka_widths,
        tower_calls=self.tower_calls,
      )
    return self._steps[key]

  def device_batch(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
    """This host's rows of a batch -> the global arrays the step takes (pair batches get their task ids, and with
    ``config.pack_pairs`` their texts packed into rows, a multiple of 8 and of the data axis)."""
    batch = step_lib.with_task_ids(batch, self.pair_tasks)
    if self.config.get("pack_pairs", False) and "left_ids" in batch:
      rows = math.lcm(8, sharding.data_parallel_size(self.mesh))
      batch = tokenize.pack_pair_batch(batch, row_multiple=rows)
    return step_lib.global_batch(batch, self.batch_sharding)

  def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
    """A host batch with what can be done before its step: its global device arrays (``"device"``; per task for
    the sequential all-tasks layout) and its model FLOPs (``"flops"``, ``train/mfu.py``). The loop runs this in
    its prefetch thread on a single process; with several, on the main thread, as padding the hosts' batches to a
    common length is a collective that must keep its place among the steps'."""
    cfg, calls = self.encoder_config, self.tower_calls
    if batch["task"] != mixture.ALL_TASKS:
      device = self.device_batch(batch)
      return dict(batch, device=device, flops=mfu.batch_flops(cfg, device, calls))
    if self.layout == "devices":
      concat = step_lib.concat_pair_batches(batch["batches"], self.pair_tasks)
      device = step_lib.global_batch(concat, self.batch_sharding)
      return dict(batch, device=device, flops=mfu.batch_flops(cfg, device, calls))
    device = {name: self.device_batch(b) for name, b in batch["batches"].items()}
    return dict(batch, device=device, flops=sum(mfu.batch_flops(cfg, d, calls) for d in device.values()))

  def dispatch(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
    """One optimizer step on a host batch (``prepare``d or not), without waiting for it: its metrics stay on the
    device (``train/step_metrics.py`` reads them). An all-tasks batch (``task == "all"``) makes one update on
    every task; its metrics add ``<task>/loss`` and ``<task>/accuracy``."""
    if "device" not in batch:
      batch = self.prepare(batch)
    if batch["task"] == mixture.ALL_TASKS:
      return self._all_tasks_step(batch["batches"], batch["device"])
    self.state, metrics = self.step_for(batch)(self.state, batch["device"])
    return metrics

  def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
    """``dispatch``, then its metrics read to the host (so it waits for the step). A non-finite loss or gradient
    norm raises FloatingPointError naming the step and the task."""
    metrics = self.dispatch(batch)
    step = int(jax.device_get(self.state["step"]))
    return step_metrics.read([(step, batch["task"], metrics)], self.workdir)[0]

  def set_task_weights(self, first_batches: dict[str, dict] | None = None) -> dict[str, float]:
    """The weight of each task's mean loss in an all-tasks step, from ``config.task_weighting``: ``equal``
    (``config.loss_weights``), ``sampling`` (times T x the task's probability under ``data.sampling``, e.g.
    temperature-scaled sizes) or ``initial_loss`` (divided by the task's loss at the start, measured without
    dropout on ``first_batches``, so every task starts at weight 1 whatever its loss's scale)."""
    weighting = self.config.get("task_weighting", "equal")
    names = self.task_names
    if weighting == "equal":
      weights = {t: self.loss_weights[t] for t in names}
    elif weighting == "sampling":
      p = self.train_iter.probabilities
      weights = {t: self.loss_weights[t] * len(names) * p[t] for t in names}
    elif weighting == "initial_loss":
      if first_batches is None:
        raise ValueError("task_weighting='initial_loss' needs the first batch of every task.")
      weights = {}
      for t, b in first_batches.items():
        key = step_lib.step_key(b)
        loss = step_lib.model_loss(
          self.graphdef,
          self.state["params"],
          self.device_batch(b),
          key=key,
          pair_tasks=self.pair_tasks,
          loss_weights={},
          rngs=None,
          widths=self.matryoshka_widths,
          tower_calls=self.tower_calls,
        )[1][0]
        weights[t] = self.loss_weights[t] / max(float(loss), 1e-6)
    else:
      raise ValueError(f"config.task_weighting={weighting!r}; choose one of {list(TASK_WEIGHTINGS)}.")
    self.task_weights = weights
    return weights

  def _all_tasks_step(self, batches: dict[str, dict], device) -> dict[str, jax.Array]:
    if self.task_weights is None:
      self.set_task_weights(batches)
    names = tuple(batches)
    weights = np.asarray([self.task_weights[t] for t in names], np.float32)
    if self.layout == "devices":
      step_fn = self._compiled_step(step_lib.ALL, self.task_weights)
      self.state, out = step_fn(self.state, device)
      order = tuple(self.pair_tasks.index(t) for t in names)
      return step_lib.all_tasks_metrics(out["loss"], out["accuracy"], out["grad_norm"], weights, names, order)
    total, losses, accuracy = None, [], []
    step = self.state["step"]
    for name, b in batches.items():
      key = ("grad", step_lib.step_key(b))
      if key not in self._steps:
        self._steps[key] = step_lib.make_grad_fn(
          self.graphdef,
          key=key[1],
          pair_tasks=self.pair_tasks,
          loss_weights=self.task_weights,
          seed=self.config.seed,
          param_shardings=self.param_shardings,
          batch_sharding=self.batch_sharding,
          widths=self.matryoshka_widths,
          tower_calls=self.tower_calls,
        )
      grads, (loss, acc) = self._steps[key](self.state["params"], step, self.task_names.index(name), device[name])
      total = grads if total is None else step_lib.add_grads(total, grads)
      losses.append(loss)
      accuracy.append(acc)
    if "apply" not in self._steps:
      self._steps["apply"] = step_lib.make_apply_fn(self.tx, state_shardings=self.state_shardings)
    self.state, grad_norm = self._steps["apply"](self.state, total)
    order = tuple(range(len(names)))
    return step_lib.all_tasks_metrics(losses, accuracy, grad_norm, weights, names, order)


TASK_WEIGHTINGS = ("equal", "sampling", "initial_loss")


def build(config, workdir: str | Path | None = None, *, fit_projection: bool = True) -> Trainer:
  """The trainer of ``config``: the pretrained ``config.model`` with fresh heads, its tokenizer, the training
  iterator of ``config.data`` (this process's rows), at step 0. Sets the CPU device count and joins the other
  processes first (``start_jax``), and turns on the persistent compilation cache. Writes nothing.
  ``fit_projection=False`` skips fitting a ``projection_init="pca"`` start, for a caller that replaces the tower
  (a resume or a warm start)."""
  start_jax(config)
  compilation_cache.enable(config.compilation_cache_dir)
  dtype_of(config.dtype)  # before anything slow
  model_dir = hf_io.resolve_model_dir(config.model)
  encoder_config = EncoderConfig.from_hf_config(hf_io.read_hf_config(model_dir))
  widths = matryoshka_widths(config, encoder_config)  # before the data: a bad width fails at once
  projection_init = check_projection_init(config, encoder_config)
  tokenizer = hf_io.load_tokenizer(model_dir)
  train_iter = mixture.make_train_iterator(
    config.data, tokenizer, seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count()
  )
  infos = state_lib.task_infos(config, train_iter.label_names, train_iter.task_names)
  projection = pca_projection(config, model_dir) if projection_init == "pca" and fit_projection else None
  return _trainer(
    config,
    encoder_config,
    infos,
    model_dir=model_dir,
    tokenizer=tokenizer,
    train_iter=train_iter,
    workdir=workdir,
    matryoshka_widths=widths,
    tower_arrays=projection,
  )


def build_random(config, encoder_config: EncoderConfig) -> Trainer:
  """A trainer of a randomly initialised encoder of shape ``encoder_config`` for the pair tasks of
  ``config.data.tasks``, without tokenizer or data (``train_iter`` is None): for timing the step itself on
  synthetic batches. Parameters are initialised on the default device, then placed."""
  compilation_cache.enable(config.compilation_cache_dir)
  dtype_of(config.dtype)
  if check_projection_init(config, encoder_config) != "random":
    raise ValueError(
      "config.projection_init='pca' needs a pretrained model and training posts; build_random has neither."
    )
  tasks = data_config_lib.resolve_tasks(config.data)
  not_pairs = [name for name, task in tasks.items() if task.kind != "pair"]
  if not_pairs:
    raise ValueError(f"build_random trains pair tasks only; config.data.tasks has {not_pairs}.")
  infos = state_lib.task_infos(config, {}, list(tasks))
  return _trainer(
    config,
    encoder_config,
    infos,
    model_dir=None,
    tokenizer=None,
    train_iter=None,
    workdir=None,
    matryoshka_widths=matryoshka_widths(config, encoder_config),
    jit_init=False,
  )


def matryoshka_widths(config, encoder_config: EncoderConfig) -> tuple[int, ...] | None:
  """The Matryoshka widths of ``config.matryoshka_dims`` (None: off); the full width is the projection's, or the
  encoder's without one."""
  return heads_lib.matryoshka_widths(config.get("matryoshka_dims", ""), config.embed_dim or encoder_config.hidden_size)


PROJECTION_INITS = ("random", "pca")


def check_projection_init(config, encoder_config: EncoderConfig) -> str:
  """``config.projection_init``, checked before anything slow: a PCA start needs a projection no wider than the
  encoder."""
  init = config.get("projection_init", "random")
  if init not in PROJECTION_INITS:
    raise ValueError(f"config.projection_init={init!r}; choose one of {list(PROJECTION_INITS)}.")
  if init == "pca":
    width = encoder_config.hidden_size
    if not config.embed_dim:
      raise ValueError(
        f"config.projection_init='pca' needs a projection, but config.embed_dim={config.embed_dim!r} "
        f"keeps the encoder's {width} dimensions; set embed_dim or projection_init='random'."
      )
    if config.embed_dim > width:
      raise ValueError(
        f"config.projection_init='pca' reduces the encoder's {width}-d pooled output, but "
        f"config.embed_dim={config.embed_dim} is wider; use embed_dim <= {width} or "
        f"projection_init='random'."
      )
  return init


def projection_fit_texts(config) -> list[str]:
  """The training posts the PCA start is fitted on: at most ``config.projection_init_texts`` distinct English
  descriptions of the Debian train split (the texts a ``pca<dim>:`` baseline fits on), or, for user files, the
  texts of the configured tasks' training examples; a fixed subset either way, so every process fits the same."""
  limit = int(config.projection_init_texts)
  if config.data.source != "files":
    return eval_examples.corpus_texts("train", config.data, limit=limit)
  texts = set()
  for task in data_config_lib.resolve_tasks(config.data).values():
    for example in data_examples.task_examples(task, "train", config.data, seed=config.seed):
      texts.update(example[k] for k in ("left", "right", "text") if k in example)
  texts = sorted(texts)
  if len(texts) <= limit:
    return texts
  return [texts[i] for i in np.sort(np.random.default_rng(0).choice(len(texts), size=limit, replace=False))]


def pca_projection(config, model_dir: Path) -> dict[tuple[str, str], np.ndarray]:
  """The projection's kernel and bias as the PCA of the pretrained tower's pooled outputs (unprojected,
  unnormalised) of ``projection_fit_texts``, embedded by the inference path so tokenisation and padding are those
  of evaluation: the step-0 tower is then the base model reduced to ``embed_dim``."""
  texts = projection_fit_texts(config)
  if len(texts) <= config.embed_dim:
    raise ValueError(
      f"config.projection_init='pca' to {config.embed_dim} dimensions needs more than "
      f"{config.embed_dim} training posts; found {len(texts)} "
      f"(config.projection_init_texts={config.projection_init_texts})."
    )
  tower, tokenizer, _ = hf_io.load_pretrained(model_dir, embed_dim=None, pooling=config.pooling, normalize=False)
  embedder = Embedder(tower, tokenizer, max_length=config.data.max_length, batch_size=config.eval.batch_size)
  pca = fit_pca(embedder.embed(texts), config.embed_dim)
  return {("projection", "kernel"): pca.kernel, ("projection", "bias"): pca.bias}


def check_pack_pairs(config, layout: str) -> None:
  """``config.pack_pairs`` packs single-task (or mixed) pair batches on one process; the devices layout keeps each
  task's rows on its own devices, which packing would mix, and hosts would have to agree on the packed shape."""
  if not config.get("pack_pairs", False):
    return
  if config.data.get("task_mixing") == "all_tasks_per_step" and layout == "devices":
    raise ValueError(
      "config.pack_pairs=True with the devices layout (a data axis that is a multiple of the task count): "
      "set config.pack_pairs=False, or use a mesh whose data axis is not a multiple of the tasks."
    )
  if jax.process_count() > 1:
    raise ValueError(f"config.pack_pairs=True runs on one process; this run has {jax.process_count()}.")


def _trainer(config, encoder_config, infos, *, workdir, tower_arrays=None, jit_init=True, **parts) -> Trainer:
  """The sharded model and optimizer state on the config's mesh, and the Trainer around them."""
  heads_lib.check_tower_calls(config.get("pair_tower_calls", "auto"))
  mesh = sharding.make_mesh(config.mesh)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  graphdef, params, param_shardings = state_lib.create_params(
    config, parts["model_dir"], encoder_config, infos, mesh, rules, jit_init=jit_init, tower_arrays=tower_arrays
  )
  tx, train_state, state_shardings = state_lib.init_train_state(config, params, param_shardings, mesh, rules)
  task_names = list(infos)
  all_pairs = all(infos[t].num_classes is None for t in task_names)
  layout = step_lib.choose_layout(len(task_names), sharding.data_parallel_size(mesh), all_pairs)
  check_pack_pairs(config, layout)
  return Trainer(
    layout=layout,
    config=config,
    mesh=mesh,
    rules=rules,
    infos=infos,
    graphdef=graphdef,
    state=train_state,
    state_shardings=state_shardings,
    tx=tx,
    batch_sharding=sharding.batch_sharding(mesh),
    task_names=task_names,
    pair_tasks=[t for t in task_names if infos[t].num_classes is None],
    loss_weights={t: float(config.loss_weights.get(t, 1.0)) for t in task_names},
    workdir=Path(workdir) if workdir is not None else None,
    encoder_config=encoder_config,
    **parts,
  )
