"""Mesh and logical-axis rules: the only place where logical parameter axes meet physical devices.

The config declares the mesh (``mesh.data``, ``mesh.fsdp``, ``mesh.tensor``; one may be -1 = "the rest") and a
rule table from logical axis names (what the model annotates) to mesh axes. The same code then runs on 1 CPU
device, 8 fake CPU devices, a GPU or a TPU slice: only the config changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every data-parallel axis

# The default config.sharding_rules (postembed_jax.train.config.training_config; a config or a sweep overrides
# them): FSDP shards the model width, tensor parallelism shards heads / MLP / vocabulary.
DEFAULT_RULES = (
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("proj", None),
  ("classes", None),
  ("norm", None),
)


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  """Resolves a -1 entry so that the mesh covers every device; fails clearly when sizes do not multiply up."""
  shape = {axis: int(mesh_config[axis]) for axis in MESH_AXES}
  unknown = [a for a, s in shape.items() if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {unknown}.")
  known = math.prod(s for s in shape.values() if s != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(f"Mesh {shape} cannot cover {num_devices} devices.")
    shape[unknown[0]] = num_devices // known
  if math.prod(shape.values()) != num_devices:
    raise ValueError(f"Mesh {shape} has {math.prod(shape.values())} slots but there are {num_devices} devices.")
  return shape


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(np.asarray(devices).reshape(tuple(shape.values())), MESH_AXES)


def logical_to_spec(
  logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Sequence[tuple[str, Any]]
) -> P:
  """Maps one parameter's logical axes to a PartitionSpec.

  A dimension stays replicated when its rule maps to no axis, when the mesh axes are trivial (size 1), when the
  dimension does not divide evenly, or when an earlier dimension already took that mesh axis.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, size in zip(logical_axes, shape):
    if name is not None and name not in table:
      raise ValueError(f"Logical axis {name!r} has no sharding rule; rules cover {sorted(table)}.")
    target = table.get(name) if name is not None else None
    axes = tuple(a for a in ((target,) if isinstance(target, str) else (target or ())) if mesh.shape[a] > 1)
    devices = math.prod(mesh.shape[a] for a in axes)
    if not axes or used & set(axes) or size % devices:
      spec.append(None)
      continue
    used |= set(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh, rules) -> Any:
  """NamedSharding for every leaf of a (possibly abstract) tree of parameters or optimizer state.

  Variables place themselves by their ``out_sharding`` metadata; optax moments built by mapping over the
  parameters are Variables too and so follow their parameter. Everything else (step counters) is replicated.
  """

  def one(leaf):
    if isinstance(leaf, nnx.Variable):
      axes = leaf.get_metadata().get("out_sharding") or (None,) * len(leaf.shape)
      return NamedSharding(mesh, logical_to_spec(axes, leaf.shape, mesh, rules))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split: the product of the data-parallel axes."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
