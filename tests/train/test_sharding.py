"""Logical-axis rules -> PartitionSpecs, and parameters created sharded on an 8-device CPU mesh."""

import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest
from conftest import REPO
from jax.sharding import PartitionSpec as P

from postembed_jax.train import sharding


class _FakeMesh:
  """Only .shape is consulted by logical_to_spec; a real 8-device mesh is tested in a subprocess below."""

  def __init__(self, **shape):
    self.shape = shape


def test_mesh_shape_fills_the_rest():
  config = ml_collections.ConfigDict({"data": -1, "fsdp": 2, "tensor": 2})
  assert sharding.mesh_shape(config, 8) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="cannot cover 6 devices"):
    sharding.mesh_shape(ml_collections.ConfigDict({"data": -1, "fsdp": 4, "tensor": 1}), 6)
  with pytest.raises(ValueError, match="At most one mesh axis may be -1"):
    sharding.mesh_shape(ml_collections.ConfigDict({"data": -1, "fsdp": -1, "tensor": 1}), 8)


def test_logical_to_spec():
  mesh = _FakeMesh(data=2, fsdp=2, tensor=2)
  rules = sharding.DEFAULT_RULES
  assert sharding.logical_to_spec(("embed", "mlp"), (384, 1536), mesh, rules) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("vocab", "embed"), (30522, 384), mesh, rules) == P("tensor", "fsdp")
  # 30521 does not split in two: that dimension stays replicated rather than failing.
  assert sharding.logical_to_spec(("vocab", "embed"), (30521, 384), mesh, rules) == P(None, "fsdp")
  # An axis of size 1 shards nothing.
  assert sharding.logical_to_spec(("embed", "mlp"), (384, 1536), _FakeMesh(data=8, fsdp=1, tensor=1), rules) == P(
    None, None
  )
  # One mesh axis is used at most once per parameter.
  assert sharding.logical_to_spec(("heads", "mlp"), (384, 1536), mesh, rules) == P("tensor", None)
  with pytest.raises(ValueError, match="Logical axis 'experts' has no sharding rule"):
    sharding.logical_to_spec(("experts",), (8,), mesh, rules)


def test_parameters_are_created_sharded_on_eight_devices(tiny_model_dir):
  """No device holds a whole matrix that the rules shard; optimizer moments follow their parameters."""
  script = textwrap.dedent(f"""
      import jax, numpy as np
      from flax import nnx
      from jax.sharding import PartitionSpec as P
      from postembed_jax.models import hf_io
      from postembed_jax.models.encoder import EncoderConfig
      from postembed_jax.train import config as train_config, sharding, state
      config = train_config.training_config("search")
      config.embed_dim = 16
      config.mesh.fsdp, config.mesh.tensor = 2, 2
      model_dir = hf_io.resolve_model_dir("{tiny_model_dir}")
      cfg = EncoderConfig.from_hf_config(hf_io.read_hf_config(model_dir))
      infos = state.task_infos(config, {{}}, ["search"])
      mesh = sharding.make_mesh(config.mesh)
      graphdef, params, shardings = state.create_params(config, model_dir, cfg, infos, mesh, config.sharding_rules)
      kernel = params["tower"]["encoder"]["layers"][0]["intermediate"]["kernel"][...]
      assert kernel.sharding.spec == P("fsdp", "tensor"), kernel.sharding.spec
      assert {{s.data.shape for s in kernel.addressable_shards}} == {{(16, 32)}}  # of (32, 64)
      words = params["tower"]["encoder"]["embeddings"]["word"]["embedding"][...]
      assert words.sharding.spec == P("tensor", "fsdp") and words.addressable_shards[0].data.shape == (15261, 16)
      # Pretrained values arrived intact through device_put of the shards.
      arrays = hf_io.tower_arrays(model_dir, cfg, None)
      np.testing.assert_array_equal(np.asarray(words), arrays[("encoder", "embeddings", "word", "embedding")])
      tx = state.make_optimizer(config, params)
      opt = jax.eval_shape(tx.init, params)
      mu = opt[1][0].mu["tower"]["encoder"]["layers"][0]["intermediate"]["kernel"]
      assert sharding.tree_shardings(mu, mesh, config.sharding_rules).spec == P("fsdp", "tensor")
      print("OK", dict(mesh.shape))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK {'data': 2, 'fsdp': 2, 'tensor': 2}" in result.stdout
