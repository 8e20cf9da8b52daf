"""Every task in every step (data.task_mixing='all_tasks_per_step'): one update on the weighted sum of the task
losses equals the update from the per-task gradients summed, in both layouts; on 8 devices each task's rows sit
on their own pair of devices; the loop trains, checkpoints and resumes such runs exactly."""

import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import FIXTURE, REPO, check_ok, step_losses

from postembed_jax.train import config as train_config
from postembed_jax.train import setup
from postembed_jax.train import step as step_lib


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory):
  """The tiny BERT without dropout, so a step is a deterministic function of its batch."""
  path = tmp_path_factory.mktemp("tiny_bert_no_dropout")
  shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
  hf = json.loads((path / "config.json").read_text())
  hf.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  (path / "config.json").write_text(json.dumps(hf))
  return path


def _config(model_dir, data_config, tasks):
  config = train_config.training_config(tasks)
  config.model, config.embed_dim = str(model_dir), 16
  config.data = data_config.copy_and_resolve_references()
  config.data.update(
    tasks=tasks, batch_size=8, max_length=32, bucket_lengths=(16, 32), task_mixing="all_tasks_per_step"
  )
  config.optim.warmup_steps = 0
  return config


def manual_update(trainer, batches):
  """The reference: each task's gradient on its own, summed, then one optimizer update (also sent to the 8-device
  subprocess below, as source)."""
  weights = trainer.task_weights or trainer.set_task_weights(batches)
  params, total = trainer.state["params"], None
  for b in batches.values():
    device_batch = trainer.device_batch(b)
    loss = lambda p, device_batch=device_batch, b=b: step_lib.model_loss(
      trainer.graphdef,
      p,
      device_batch,
      key=step_lib.step_key(b),
      pair_tasks=trainer.pair_tasks,
      loss_weights=weights,
      rngs=None,
    )[0]
    grads = jax.grad(loss)(params)
    total = grads if total is None else jax.tree.map(jnp.add, total, grads)
  updates, _ = trainer.tx.update(total, trainer.state["opt_state"], params)
  return jax.device_get(optax.apply_updates(params, updates))


def max_difference(a, b):
  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def test_concatenated_objective_has_the_gradient_of_the_task_gradients_summed(no_dropout_model, fixture_data_config):
  trainer = setup.build(_config(no_dropout_model, fixture_data_config, "interest,search,storyline"))
  batches = next(trainer.train_iter)["batches"]
  weights = {"interest": 0.5, "search": 2.0, "storyline": 1.0}
  params = trainer.state["params"]
  concat = step_lib.global_batch(step_lib.concat_pair_batches(batches, trainer.pair_tasks), trainer.batch_sharding)
  all_loss = lambda p: step_lib.model_loss(
    trainer.graphdef, p, concat, key=step_lib.ALL, pair_tasks=trainer.pair_tasks, loss_weights=weights, rngs=None
  )[0]
  together = jax.grad(all_loss)(params)
  apart = None
  for b in batches.values():
    device_batch = trainer.device_batch(b)
    one = lambda p, device_batch=device_batch: step_lib.model_loss(
      trainer.graphdef,
      p,
      device_batch,
      key=step_lib.PAIRS,
      pair_tasks=trainer.pair_tasks,
      loss_weights=weights,
      rngs=None,
    )[0]
    grads = jax.grad(one)(params)
    apart = grads if apart is None else jax.tree.map(jnp.add, apart, grads)
  scale = max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(apart))
  assert scale > 0 and max_difference(together, apart) < 1e-5 * scale
  # Padding to the longest task is masked out: the task losses are those of the unpadded batches.
  _, (task_loss, _) = step_lib.model_loss(
    trainer.graphdef, params, concat, key=step_lib.ALL, pair_tasks=trainer.pair_tasks, loss_weights=weights, rngs=None
  )
  for i, b in enumerate(batches.values()):
    alone = step_lib.model_loss(
      trainer.graphdef,
      params,
      trainer.device_batch(b),
      key=step_lib.PAIRS,
      pair_tasks=trainer.pair_tasks,
      loss_weights={},
      rngs=None,
    )[1][0]
    np.testing.assert_allclose(task_loss[i], alone, rtol=1e-5)


def test_sequential_layout_applies_the_summed_task_gradients(no_dropout_model, fixture_data_config):
  # One device and three tasks, one of them a classification task: the sequential layout.
  trainer = setup.build(_config(no_dropout_model, fixture_data_config, "interest,search,section"))
  assert trainer.layout == "sequential"
  for _ in range(2):  # the second step goes through the compiled functions of the first
    batches = next(trainer.train_iter)["batches"]
    expected = manual_update(trainer, batches)
    metrics = trainer.train_step({"task": "all", "batches": batches})
    assert max_difference(jax.device_get(trainer.state["params"]), expected) < 1e-6
  assert set(metrics) >= {"loss", "grad_norm", "interest/loss", "search/loss", "section/loss", "section/accuracy"}
  assert metrics["loss"] == pytest.approx(sum(metrics[f"{t}/loss"] for t in ("interest", "search", "section")))
  assert int(trainer.state["step"]) == 2


def test_initial_loss_weighting_divides_by_the_first_losses(no_dropout_model, fixture_data_config):
  config = _config(no_dropout_model, fixture_data_config, "interest,search")
  config.task_weighting = "initial_loss"
  trainer = setup.build(config)
  batches = next(trainer.train_iter)["batches"]
  metrics = trainer.train_step({"task": "all", "batches": batches})
  for t in ("interest", "search"):  # weight x loss at step 0 is 1 for every task
    assert trainer.task_weights[t] * metrics[f"{t}/loss"] == pytest.approx(1.0, rel=1e-4)
  config.task_weighting = "loudest"
  with pytest.raises(ValueError, match=r"config.task_weighting='loudest'; choose one of \['equal', 'sampling'"):
    setup.build(config).set_task_weights(batches)


def test_devices_layout_on_eight_devices(no_dropout_model, tfds_dir):
  """4 pair tasks on 8 devices: task k's rows on devices 2k and 2k+1, and the update of the summed gradients."""
  script = (
    inspect.getsource(manual_update)
    + inspect.getsource(max_difference)
    + textwrap.dedent(f"""
      from postembed_jax.train import config as train_config, setup, step as step_lib
      config = train_config.training_config("interest,search,storyline,translation")
      config.model, config.embed_dim = "{no_dropout_model}", 16
      config.data.update(index_dir="{FIXTURE}", data_dir="{tfds_dir}", batch_size=8, max_length=32,
                         bucket_lengths=(16, 32), task_mixing="all_tasks_per_step")
      config.optim.warmup_steps = 0
      trainer = setup.build(config)
      assert trainer.layout == "devices", trainer.layout
      batches = next(trainer.train_iter)["batches"]
      concat = step_lib.global_batch(step_lib.concat_pair_batches(batches, trainer.pair_tasks), trainer.batch_sharding)
      placed = sorted((shard.device.id, sorted(set(np.asarray(shard.data).tolist())))
                      for shard in concat["task_id"].addressable_shards)
      assert [tasks for _, tasks in placed] == [[k // 2] for k in range(8)], placed
      expected = manual_update(trainer, batches)
      trainer.train_step({{"task": "all", "batches": batches}})
      difference = max_difference(jax.device_get(trainer.state["params"]), expected)
      assert difference < 1e-5, difference
      print("OK", len(jax.devices()), difference)
  """)
  )
  prelude = "import jax, jax.numpy as jnp, numpy as np, optax\n"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, "-c", prelude + script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK 8" in result.stdout


def test_all_tasks_run_resumes_exactly(train_cmd, tmp_path):
  """Through the launcher: a copy of a finished run, cut back to its step-10 checkpoint, trains steps 11-12 again
  with the losses of the uninterrupted run."""
  overrides = (
    "--config.data.tasks=search,storyline",
    "--config.data.bucket_lengths=(32,)",
    "--config.data.task_mixing=all_tasks_per_step",
    "--config.total_steps=12",
    "--config.checkpoint.async_save=False",
  )
  whole = tmp_path / "whole"
  check_ok(train_cmd(whole, *overrides))
  expected = step_losses(whole)
  record = next(json.loads(l) for l in (whole / "metrics.jsonl").read_text().splitlines() if "train/loss" in l)
  assert {"train/search/loss", "train/storyline/loss"} <= set(record)
  cut = tmp_path / "cut"
  shutil.copytree(whole, cut, symlinks=True)
  shutil.rmtree(cut / "checkpoints" / "12")
  kept = [l for l in (cut / "metrics.jsonl").read_text().splitlines() if json.loads(l)["step"] <= 10]
  (cut / "metrics.jsonl").write_text("\n".join(kept) + "\n")
  result = check_ok(train_cmd(cut, *overrides))
  assert "Starting at step 10" in result.stdout
  resumed = step_losses(cut)
  assert sorted(resumed) == list(range(1, 13))
  np.testing.assert_allclose([resumed[s] for s in (11, 12)], [expected[s] for s in (11, 12)], rtol=1e-6)
