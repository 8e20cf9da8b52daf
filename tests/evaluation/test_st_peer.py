"""The sentence-transformers peer: trained once on the fixture's pairs, saved, reused, scored like any model."""

import sys
from pathlib import Path

import numpy as np

from postembed_jax.evaluation import st_peer, suite

REPO = Path(__file__).resolve().parents[2]


def _config(fixture_data_config, output_dir):
  sys.path.insert(0, str(REPO))
  from configs import evaluate as evaluate_config

  config = evaluate_config.get_config("quick")
  config.data = fixture_data_config
  config.output_dir = str(output_dir)
  config.peer.update(tasks="search,storyline", steps=3, batch_size=4, warmup_steps=1, max_length=32, embed_dim=8)
  return config


def test_peer_trains_once_then_is_reused(fixture_data_config, tiny_model_dir, tmp_path):
  config = _config(fixture_data_config, tmp_path)
  name = f"st_mtl:{tiny_model_dir}"
  assert st_peer.parse_peer_name(name) == str(tiny_model_dir) and st_peer.parse_peer_name("tfidf") is None
  embedder = suite.load_embedder(name, config)
  vectors = embedder.embed(["a package for images", "an editor"])
  assert embedder.dim == 8 and vectors.shape == (2, 8)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
  saved = list((tmp_path / "peers").iterdir())
  assert len(saved) == 1 and (saved[0] / "peer.json").exists()
  # The same recipe loads the saved model (no training: identical vectors); another recipe gets its own directory.
  again = suite.load_embedder(name, config)
  np.testing.assert_allclose(again.embed(["a package for images", "an editor"]), vectors, atol=1e-6)
  assert len(list((tmp_path / "peers").iterdir())) == 1
  config.peer.lr = 3e-4
  assert st_peer.recipe_key(str(tiny_model_dir), config.peer) != saved[0].name
