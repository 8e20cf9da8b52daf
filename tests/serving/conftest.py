"""Serving fixtures: the Debian fixture corpus as posts, embedded once per session with the shared model, and the
service config (configs/serve.py:tiny) pointed at a temporary directory."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DIR = REPO / "tests" / "fixtures" / "debian"


def load_serve_config(arg=None):
  spec = importlib.util.spec_from_file_location("serve_config", REPO / "configs" / "serve.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture
def serve_config(tmp_path):
  """configs/serve.py:tiny with its files in tmp_path, plus overrides."""

  def make(**overrides):
    config = load_serve_config("tiny")
    config.db_path = str(tmp_path / "posts.sqlite3")
    config.index_path = str(tmp_path / "posts.usearch")
    config.update(overrides)
    return config

  return make


@pytest.fixture(scope="session")
def debian_records(tmp_path_factory):
  from ml_collections import ConfigDict

  from postembed_jax.data import debian
  config = ConfigDict(dict(index_dir=str(FIXTURE_DIR)))
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return [r for split in debian.SPLITS for r in debian.load_records(split, data_dir=data_dir, config=config)]


@pytest.fixture(scope="session")
def debian_posts(debian_records):
  """(texts, tags): the fixture's distinct descriptions (419 real posts) and their debtags."""
  from postembed_jax.serving.members import debian_posts
  return debian_posts(debian_records)


@pytest.fixture(scope="session")
def post_vectors(debian_posts, default_embedder):
  return default_embedder.embed(debian_posts[0])
