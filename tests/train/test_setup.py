"""The trainer that the loop, the benchmarks and the notebooks share: it trains, compiles each step once per batch
shape, and holds its state in the shardings the rules give, on one device in-process and on an 8-device mesh in a
subprocess (the device count is fixed at JAX start-up)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from postembed_jax.models.encoder import EncoderConfig
from postembed_jax.train import config as train_config
from postembed_jax.train import setup, sharding


def _config(model_dir, data_config, tasks="search,storyline"):
  config = train_config.training_config(tasks)
  config.model = str(model_dir)
  config.embed_dim = 16
  config.data = data_config.copy_and_resolve_references()
  config.data.tasks = tasks
  config.data.batch_size = 8
  config.data.max_length = 32
  config.data.bucket_lengths = (32,)  # one shape per batch; the tests pad to make others
  config.optim.warmup_steps = 0
  config.optim.lr = 1e-3
  return config


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, fixture_data_config):
  return setup.build(_config(tiny_model_dir, fixture_data_config))


def _padded(batch: dict, length: int) -> dict:
  out = dict(batch)
  for side in ("left", "right"):
    for field in ("ids", "mask"):
      array = batch[f"{side}_{field}"]
      out[f"{side}_{field}"] = np.pad(array, ((0, 0), (0, length - array.shape[1])))
  return out


def test_build_wires_the_config(trainer, tiny_model_dir):
  assert trainer.model_dir == tiny_model_dir and trainer.tokenizer is not None
  assert trainer.task_names == trainer.train_iter.task_names == ["search", "storyline"]
  assert trainer.pair_tasks == ["search", "storyline"]
  assert trainer.loss_weights == {"search": 1.0, "storyline": 1.0}
  assert trainer.encoder_config.hidden_size == 32 and trainer.encoder_config.num_layers == 2
  assert int(trainer.state["step"]) == 0


def test_train_step_lowers_the_loss_on_a_fixed_batch(trainer):
  batch = next(trainer.train_iter)
  start = int(trainer.state["step"])
  losses = [trainer.train_step(batch)["loss"] for _ in range(8)]
  assert int(trainer.state["step"]) == start + 8
  assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


def test_one_compiled_step_per_shape(trainer):
  short = next(trainer.train_iter)
  other_task = next(b for b in trainer.train_iter if b["task"] != short["task"])
  step = trainer.step_for(short)
  trainer.train_step(short)
  compiled = step._cache_size()
  trainer.train_step(short)
  trainer.train_step(other_task)  # every pair task shares one step, so the same executable
  assert trainer.step_for(other_task) is step and step._cache_size() == compiled
  trainer.train_step(_padded(short, 40))  # a new shape compiles once more
  trainer.train_step(_padded(other_task, 40))
  assert step._cache_size() == compiled + 1
  assert list(trainer._steps) == ["pairs"]


def test_state_carries_the_rules_shardings(trainer):
  """Every array of the state sits where ``state_shardings`` says, also after a step, and those shardings are what
  the config's rules give for each parameter's logical axes."""
  trainer.train_step(next(trainer.train_iter))
  leaves = jax.tree.leaves(trainer.state)
  expected = jax.tree.leaves(trainer.state_shardings)
  assert len(leaves) == len(expected)
  for leaf, target in zip(leaves, expected):
    assert leaf.sharding.is_equivalent_to(target, leaf.ndim)
  rules = sharding.tree_shardings(trainer.state["params"], trainer.mesh, trainer.config.sharding_rules)
  for got, want in zip(jax.tree.leaves(trainer.param_shardings), jax.tree.leaves(rules)):
    assert got == want


def test_non_finite_loss_names_the_step_task_and_checkpoints(trainer, tmp_path):
  batch = next(trainer.train_iter)
  batch["label"] = np.full_like(batch["label"], np.nan)  # same shapes: no new compile
  saved, trainer.workdir = jax.tree.map(jnp.copy, trainer.state), tmp_path
  try:
    step = int(trainer.state["step"]) + 1
    with pytest.raises(
      FloatingPointError,
      match=rf"Non-finite loss .*at step {step} on task '{batch['task']}' "
      rf".*The last good checkpoint is in {tmp_path}/checkpoints\.",
    ):
      trainer.train_step(batch)
  finally:
    trainer.state, trainer.workdir = saved, None


def test_packed_pairs_train_with_the_loss_of_unpacked(trainer):
  """``config.pack_pairs``: the device batch is packed into fewer rows (a multiple of 8), its loss without
  dropout is the unpacked one, and a step trains on it."""
  from postembed_jax.train import step as step_lib

  batch = next(trainer.train_iter)
  unpacked = trainer.device_batch(batch)
  trainer.config.pack_pairs = True
  try:
    packed = trainer.device_batch(batch)
    metrics = trainer.train_step(batch)
  finally:
    trainer.config.pack_pairs = False
  rows = packed["packed_ids"].shape[0]
  assert "left_ids" not in packed and rows % 8 == 0 and rows <= 2 * batch["left_ids"].shape[0]
  real = int(np.sum(batch["left_mask"]) + np.sum(batch["right_mask"]))
  assert int(np.sum(np.asarray(packed["packed_segments"]) > 0)) == real
  loss = lambda b: step_lib.model_loss(
    trainer.graphdef, trainer.state["params"], b, key="pairs", pair_tasks=trainer.pair_tasks, loss_weights={}, rngs=None
  )[1][0]
  np.testing.assert_allclose(float(loss(packed)), float(loss(unpacked)), rtol=1e-5)
  assert np.isfinite(metrics["loss"])


def test_pack_pairs_is_refused_where_tasks_own_devices():
  config = train_config.training_config("search,storyline")
  config.pack_pairs, config.data.task_mixing = True, "all_tasks_per_step"
  with pytest.raises(ValueError, match=r"config.pack_pairs=True with the devices layout"):
    setup.check_pack_pairs(config, "devices")
  setup.check_pack_pairs(config, "sequential")


def test_build_rejects_an_unknown_dtype(tiny_model_dir, fixture_data_config):
  config = _config(tiny_model_dir, fixture_data_config)
  config.dtype = "float16"
  with pytest.raises(ValueError, match=r"config.dtype='float16'; choose one of \['bfloat16', 'float32'\]"):
    setup.build(config)


def test_build_random_trains_a_shape_without_data():
  config = train_config.training_config("search")
  config.embed_dim = None
  shape = EncoderConfig(vocab_size=100, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
  trainer = setup.build_random(config, shape)
  assert trainer.train_iter is None and trainer.model_dir is None and trainer.task_names == ["search"]
  rng = np.random.default_rng(0)
  batch = {
    "task": "search",
    "left_ids": rng.integers(1, 100, (4, 8), dtype=np.int32),
    "right_ids": rng.integers(1, 100, (4, 8), dtype=np.int32),
    "left_mask": np.ones((4, 8), np.int32),
    "right_mask": np.ones((4, 8), np.int32),
    "label": np.array([1, 0, 1, 0], np.float32),
  }
  metrics = trainer.train_step(batch)
  assert np.isfinite(metrics["loss"]) and int(trainer.state["step"]) == 1
  with pytest.raises(ValueError, match="pair tasks only"):
    setup.build_random(train_config.training_config("section"), shape)


def test_trainer_on_eight_devices(tiny_model_dir, tfds_dir):
  """An (fsdp, tensor) mesh: matrices are split as the rules say, and stay split after a step."""
  script = textwrap.dedent(f"""
      import jax
      from jax.sharding import PartitionSpec as P
      from postembed_jax.train import config as train_config, setup
      config = train_config.training_config("search")
      config.model, config.embed_dim = "{tiny_model_dir}", 16
      config.data.index_dir, config.data.data_dir = "{REPO / "tests" / "fixtures" / "debian"}", "{tfds_dir}"
      config.data.batch_size, config.data.max_length, config.data.bucket_lengths = 8, 32, (32,)
      config.mesh.fsdp, config.mesh.tensor = 2, 2
      trainer = setup.build(config)
      layer = lambda tree: tree["tower"]["encoder"]["layers"][0]["intermediate"]["kernel"]
      kernel = lambda: layer(trainer.state["params"])[...]
      assert kernel().sharding.spec == layer(trainer.param_shardings).spec == P("fsdp", "tensor")
      trainer.train_step(next(trainer.train_iter))
      assert kernel().sharding.spec == P("fsdp", "tensor") and int(trainer.state["step"]) == 1
      print("OK", dict(trainer.mesh.shape))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK {'data': 2, 'fsdp': 2, 'tensor': 2}" in result.stdout
