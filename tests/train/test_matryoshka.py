"""Matryoshka training (config.matryoshka_dims): the trainer's steps use the nested-width pair loss, and one export
serves every width through ``dim<d>:<model>`` names."""

import json
import shutil

import ml_collections
import numpy as np
import pytest

from postembed_jax.evaluation import suite
from postembed_jax.train import config as train_config
from postembed_jax.train import loop, setup
from postembed_jax.train import step as step_lib


@pytest.fixture(scope="module")
def no_dropout_model_dir(tiny_model_dir, tmp_path_factory):
  """The tiny model without dropout, so a train step's loss can be recomputed exactly outside it."""
  path = tmp_path_factory.mktemp("tiny_bert_no_dropout")
  for item in tiny_model_dir.iterdir():
    shutil.copy(item, path / item.name)
  hf = json.loads((path / "config.json").read_text())
  hf.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  (path / "config.json").write_text(json.dumps(hf))
  return path


def _config(model_dir, data_config, matryoshka_dims="4,8"):
  config = train_config.training_config("search,storyline")
  config.model = str(model_dir)
  config.embed_dim = 16
  config.matryoshka_dims = matryoshka_dims
  config.data = data_config.copy_and_resolve_references()
  config.data.tasks = "search,storyline"
  config.data.batch_size = 8
  config.data.max_length = 32
  config.data.bucket_lengths = (32,)
  config.optim.warmup_steps = 0
  config.optim.lr = 1e-3
  return config


def test_matryoshka_trains_and_one_export_serves_each_width(no_dropout_model_dir, fixture_data_config, tmp_path):
  config = _config(no_dropout_model_dir, fixture_data_config)
  trainer = setup.build(config)
  assert trainer.matryoshka_widths == (4, 8, 16)
  batch = next(trainer.train_iter)
  device_batch = trainer.device_batch(batch)
  loss_at = lambda widths: float(
    step_lib.model_loss(
      trainer.graphdef,
      trainer.state["params"],
      device_batch,
      key=step_lib.PAIRS,
      pair_tasks=trainer.pair_tasks,
      loss_weights={},
      rngs=None,
      widths=widths,
    )[1][0]
  )
  matryoshka, full_only = loss_at(trainer.matryoshka_widths), loss_at(None)
  assert matryoshka != pytest.approx(full_only, rel=1e-4)
  losses = [trainer.train_step(batch)["loss"]]  # the step's loss is taken before its update
  assert losses[0] == pytest.approx(matryoshka, rel=1e-4)  # so the step trains on the Matryoshka loss
  losses += [trainer.train_step(next(trainer.train_iter))["loss"] for _ in range(3)]
  assert np.all(np.isfinite(losses)), losses

  loop.export(config, trainer.graphdef, trainer.state["params"], trainer.tokenizer, tmp_path, {}, step=4, final=True)
  meta = json.loads((tmp_path / "export" / "postembed.json").read_text())
  assert meta["matryoshka_widths"] == [4, 8, 16] and meta["config"]["matryoshka_dims"] == "4,8"

  eval_config = ml_collections.ConfigDict({"max_length": 32, "batch_size": 8})  # what load_embedder reads
  texts = ["an image viewer for the desktop", "python bindings for the library", "a text editor"]
  full = suite.load_embedder(str(tmp_path), eval_config)  # the workdir: its export
  assert full.dim == 16
  full_vectors = full.embed(texts)
  for width in (4, 8):
    embedder = suite.load_embedder(f"dim{width}:{tmp_path}", eval_config)
    vectors = embedder.embed(texts)
    assert embedder.dim == width and embedder.name == f"dim{width}:{tmp_path}" and vectors.shape == (3, width)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    prefix = full_vectors[:, :width]
    np.testing.assert_allclose(vectors, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), atol=1e-5)
  with pytest.raises(ValueError, match="cannot keep the first 32 of .*'s 16 dimensions"):
    suite.load_embedder(f"dim32:{tmp_path}", eval_config)


def test_all_tasks_steps_weigh_and_train_on_the_matryoshka_loss(no_dropout_model_dir, fixture_data_config):
  """The sequential all-tasks layout (one gradient function per task) and initial_loss weighting use the widths."""
  config = _config(no_dropout_model_dir, fixture_data_config)
  config.data.task_mixing = "all_tasks_per_step"
  config.task_weighting = "initial_loss"
  trainer = setup.build(config)
  batches = next(trainer.train_iter)["batches"]
  expected = {
    t: float(
      step_lib.model_loss(
        trainer.graphdef,
        trainer.state["params"],
        trainer.device_batch(b),
        key=step_lib.PAIRS,
        pair_tasks=trainer.pair_tasks,
        loss_weights={},
        rngs=None,
        widths=(4, 8, 16),
      )[1][0]
    )
    for t, b in batches.items()
  }
  metrics = trainer.train_step({"task": "all", "batches": batches})
  for t in ("search", "storyline"):
    assert metrics[f"{t}/loss"] == pytest.approx(expected[t], rel=1e-4)
    assert trainer.task_weights[t] * expected[t] == pytest.approx(1.0, rel=1e-4)


def test_a_width_wider_than_the_embedding_stops_the_build(tiny_model_dir, fixture_data_config):
  with pytest.raises(ValueError, match=r"config.matryoshka_dims='8,32': width 32 is wider than the embedding \(16\)"):
    setup.build(_config(tiny_model_dir, fixture_data_config, "8,32"))
