"""The trainable model (shared tower + per-task heads), its optimizer, and their sharded creation.

Parameters and optimizer state are created directly in their final sharding: random parts by a jitted
initialiser with ``out_shardings``, pretrained tensors by ``device_put`` from host memory to their shards, so no
device ever holds a full unsharded copy on the way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from postembed_jax.data import config as data_config_lib
from postembed_jax.models import heads as heads_lib
from postembed_jax.models import hf_io
from postembed_jax.models.dtypes import dtype_of
from postembed_jax.models.encoder import ENCODER_OPTIONS, EncoderConfig, PostEncoder
from postembed_jax.train import sharding


class TrainModel(nnx.Module):
  """One tower shared by every task (the siamese twin), one small head per task."""

  def __init__(self, tower: PostEncoder, heads: dict[str, nnx.Module]):
    self.tower = tower
    self.heads = nnx.Dict(heads)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """What the model needs to know of a task: its loss family and, for label tasks, the number of classes."""

  loss: str
  num_classes: int | None = None


def task_infos(config, label_names: dict[str, list[str]], task_names: list[str]) -> dict[str, TaskInfo]:
  """Each task's loss (``config.task_losses``; a task it does not name, such as a user file's, gets bce, sigmoid
  for a multi-label task or softmax) and class count; a loss that does not fit the task's labels fails here."""
  infos = {}
  for name in task_names:
    num_classes = len(label_names[name]) if name in label_names else None
    multi = (
      num_classes is not None and data_config_lib.resolve_tasks(config.data, [name], training=False)[name].multi_label
    )
    default = "bce" if num_classes is None else "sigmoid" if multi else "softmax"
    loss = config.task_losses.get(name, default)
    valid = heads_lib.PAIR_LOSSES if num_classes is None else ("sigmoid",) if multi else ("softmax",)
    if loss not in valid:
      kind = "pair" if num_classes is None else "multi-label" if multi else "single-label"
      raise ValueError(f"config.task_losses.{name}={loss!r} does not fit a {kind} task; choose one of {valid}.")
    infos[name] = TaskInfo(loss, num_classes)
  return infos


def build_model(config, cfg: EncoderConfig, infos: dict[str, TaskInfo], seed: int) -> TrainModel:
  """A randomly initialised TrainModel (pretrained weights are placed afterwards, see ``create_params``), computed
  as the config's ``ENCODER_OPTIONS`` say."""
  cfg = dataclasses.replace(cfg, **{k: config[k] for k in ENCODER_OPTIONS if k in config})
  rngs = nnx.Rngs(seed)
  tower = PostEncoder(
    cfg,
    embed_dim=config.embed_dim,
    pooling=config.pooling,
    normalize=config.normalize,
    dtype=dtype_of(config.dtype),
    rngs=rngs,
  )
  heads = {
    name: heads_lib.make_head(info.loss, embed_dim=tower.output_dim, num_classes=info.num_classes, rngs=rngs)
    for name, info in infos.items()
  }
  return TrainModel(tower, heads)


def make_optimizer(config, params: nnx.State) -> optax.GradientTransformation:
  """AdamW with warm-up then decay and global-norm clipping; per-parameter step multipliers give the fresh
  projection and heads ``head_lr`` and, with ``layer_decay`` < 1, layer l of L the rate lr * decay^(L - l).
  (Scaling AdamW's update by f is AdamW at learning rate f * lr, weight decay included.)"""
  o = config.optim
  num_layers = len(params["tower"]["encoder"]["layers"])

  def multiplier(path, _) -> float:
    keys = [getattr(k, "key", None) for k in path]
    if keys[:2] != ["tower", "encoder"]:
      return o.head_lr / o.lr  # projection and heads
    layer = keys[3] + 1 if keys[2] == "layers" else 0  # embeddings count as layer 0
    return o.layer_decay ** (num_layers - layer)

  decay_steps = max(config.total_steps - o.warmup_steps, 1)
  decay = {
    "cosine": optax.cosine_decay_schedule(o.lr, decay_steps),
    "linear": optax.linear_schedule(o.lr, 0.0, decay_steps),
    "constant": optax.constant_schedule(o.lr),
  }
  if o.schedule not in decay:
    raise ValueError(f"config.optim.schedule={o.schedule!r}; choose one of {sorted(decay)}.")
  schedule = optax.join_schedules(
    [optax.linear_schedule(0.0, o.lr, o.warmup_steps), decay[o.schedule]], [o.warmup_steps]
  )
  multipliers = jax.tree_util.tree_map_with_path(multiplier, params)
  scale_per_parameter = optax.stateless(lambda updates, _: jax.tree.map(lambda u, m: u * m, updates, multipliers))
  return optax.chain(
    optax.clip_by_global_norm(o.clip_norm), optax.adamw(schedule, weight_decay=o.weight_decay), scale_per_parameter
  )


def create_params(
  config, model_dir, cfg: EncoderConfig, infos, mesh, rules, *, jit_init: bool = True, tower_arrays: dict | None = None
):
  """(graphdef, sharded params): random init sharded by jit, then the pretrained tower of ``model_dir`` put shard
  by shard; ``model_dir=None`` keeps the random tower. ``tower_arrays`` ({tower parameter path: array}, e.g. a
  PCA projection) are placed the same way after it and win over it. ``jit_init=False`` initialises op by op on the
  default device and then places the arrays: for one device, where compiling a large initialiser as one program
  costs more than it saves."""
  abstract = nnx.eval_shape(lambda: build_model(config, cfg, infos, config.seed))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  shardings = sharding.tree_shardings(abstract_params, mesh, rules)

  def init():
    return nnx.split(build_model(config, cfg, infos, config.seed), nnx.Param)[1]

  params = jax.jit(init, out_shardings=shardings)() if jit_init else jax.device_put(init(), shardings)
  arrays = {} if model_dir is None else hf_io.tower_arrays(model_dir, cfg, config.embed_dim)
  arrays.update(tower_arrays or {})
  flat_params = dict(nnx.to_flat_state(params))
  flat_shardings = dict(nnx.to_flat_state(shardings))
  for path, value in arrays.items():
    full = ("tower",) + path
    value, shape = np.asarray(value, np.float32), flat_params[full].get_value().shape
    if value.shape != shape:
      raise ValueError(
        f"tower.{'.'.join(map(str, path))}: an array of shape {value.shape} for a parameter of shape {shape}."
      )
    flat_params[full].set_value(jax.device_put(value, flat_shardings[full]))
  return graphdef, params, shardings


def init_train_state(config, params: nnx.State, param_shardings, mesh, rules):
  """(optimizer, train state, its shardings): optimizer state created sharded like the parameters it follows,
  step 0 replicated. The shape of what checkpoints save and restore."""
  tx = make_optimizer(config, params)
  opt_shardings = sharding.tree_shardings(jax.eval_shape(tx.init, params), mesh, rules)
  shardings = {"params": param_shardings, "opt_state": opt_shardings, "step": sharding.replicated(mesh)}
  train_state = {
    "params": params,
    "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params),
    "step": jax.device_put(jnp.zeros((), jnp.int32), sharding.replicated(mesh)),
  }
  return tx, train_state, shardings
