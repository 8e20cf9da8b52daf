"""``projection_init="pca"``: the step-0 tower is the base model reduced by PCA (the ``pca<dim>:`` baseline of the
unnormalised base, fitted on the same training posts), placed in the parameters' shardings before the optimizer
state exists; a random projection is not that, and impossible settings fail before any data is read."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from postembed_jax.data import debian
from postembed_jax.evaluation.baselines import PcaEmbedder
from postembed_jax.models.embedder import Embedder
from postembed_jax.train import config as train_config
from postembed_jax.train import setup

EMBED_DIM = 8
MAX_LENGTH = 32


def _config(model_dir, data_config, projection_init, tasks="search,storyline"):
  config = train_config.training_config(tasks)
  config.model = str(model_dir)
  config.embed_dim = EMBED_DIM
  config.projection_init = projection_init
  config.projection_init_texts = 100_000  # more than the fixture's train split: every distinct post
  config.data = data_config.copy_and_resolve_references()
  config.data.tasks = tasks
  config.data.batch_size = 8
  config.data.max_length = MAX_LENGTH
  config.data.bucket_lengths = (32,)
  return config


def _tower_embedder(trainer):
  tower = nnx.merge(trainer.graphdef, trainer.state["params"]).tower
  return Embedder(tower, trainer.tokenizer, max_length=MAX_LENGTH, batch_size=trainer.config.eval.batch_size)


@pytest.fixture(scope="module")
def train_texts(fixture_data_config):
  return sorted({r["description"] for r in debian.load_records("train", config=fixture_data_config)})


@pytest.fixture(scope="module")
def validation_texts(fixture_data_config):
  return sorted({r["description"] for r in debian.load_records("validation", config=fixture_data_config)})[:40]


@pytest.fixture(scope="module")
def pca_baseline(tiny_model_dir, train_texts):
  base = Embedder.from_pretrained(str(tiny_model_dir), max_length=MAX_LENGTH, embed_dim=None, normalize=False)
  return PcaEmbedder(base, train_texts, dim=EMBED_DIM)


@pytest.fixture(scope="module")
def pca_trainer(tiny_model_dir, fixture_data_config):
  return setup.build(_config(tiny_model_dir, fixture_data_config, "pca"))


def test_pca_start_is_the_pca_baseline_of_the_base_model(pca_trainer, pca_baseline, validation_texts):
  got = _tower_embedder(pca_trainer).embed(validation_texts)
  np.testing.assert_allclose(got, pca_baseline.embed(validation_texts), atol=1e-4)
  projection = pca_trainer.state["params"]["tower"]["projection"]
  np.testing.assert_allclose(np.asarray(projection["kernel"][...]), pca_baseline.projection.kernel, atol=1e-5)
  np.testing.assert_allclose(np.asarray(projection["bias"][...]), pca_baseline.projection.bias, atol=1e-5)


def test_pca_projection_keeps_the_rules_shardings(pca_trainer):
  leaves = jax.tree.leaves(pca_trainer.state["params"])
  for leaf, target in zip(leaves, jax.tree.leaves(pca_trainer.param_shardings)):
    assert leaf.sharding.is_equivalent_to(target, leaf.ndim)


def test_pca_trainer_trains(pca_trainer):
  metrics = pca_trainer.train_step(next(pca_trainer.train_iter))
  assert np.isfinite(metrics["loss"]) and int(pca_trainer.state["step"]) == 1


def test_random_start_is_not_the_pca_baseline(tiny_model_dir, fixture_data_config, pca_baseline, validation_texts):
  trainer = setup.build(_config(tiny_model_dir, fixture_data_config, "random"))
  got = _tower_embedder(trainer).embed(validation_texts)
  assert np.abs(got - pca_baseline.embed(validation_texts)).max() > 0.1


def test_fit_texts_are_a_fixed_subset_of_training_posts(tiny_model_dir, fixture_data_config, train_texts):
  config = _config(tiny_model_dir, fixture_data_config, "pca")
  assert setup.projection_fit_texts(config) == train_texts
  config.projection_init_texts = 50
  subset = setup.projection_fit_texts(config)
  assert len(subset) == 50 and set(subset) <= set(train_texts) and subset == setup.projection_fit_texts(config)


def test_fit_texts_of_user_files_are_their_training_texts(tiny_model_dir, fixture_data_config, tmp_path):
  rows = [{"left": f"query {i}", "right": f"answer {i}", "label": i % 2} for i in range(200)]
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = _config(tiny_model_dir, fixture_data_config, "pca", tasks="mine")
  config.data.source, config.data.files = "files", f"mine={path}"
  texts = setup.projection_fit_texts(config)
  left = {r["left"] for r in rows}
  assert texts and set(texts) <= left | {r["right"] for r in rows}
  assert len(texts) < 400 and any(t in left for t in texts)  # the train split only, both sides


@pytest.mark.parametrize(
  "projection_init, embed_dim, message",
  [
    ("svd", EMBED_DIM, r"^config.projection_init='svd'; choose one of \['random', 'pca'\]\.$"),
    ("pca", 64, r"reduces the encoder's 32-d pooled output, but config.embed_dim=64 is wider"),
    ("pca", None, r"needs a projection, but config.embed_dim=None keeps the encoder's 32 dimensions"),
  ],
)
def test_impossible_settings_fail_clearly(tiny_model_dir, fixture_data_config, projection_init, embed_dim, message):
  config = _config(tiny_model_dir, fixture_data_config, projection_init)
  config.embed_dim = embed_dim
  with pytest.raises(ValueError, match=message):
    setup.build(config)
