"""Serving fixtures: the Debian fixture corpus as posts, embedded once per session with the shared model, and the
service config (configs/serve.py:tiny) pointed at a temporary directory."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
def debian_records(fixture_data_config):
  from postembed_jax.data import debian
  return [r for split in debian.SPLITS for r in debian.load_records(split, config=fixture_data_config)]


@pytest.fixture
def store(tmp_path, request):
  """An empty store bound to a model of the test module's DIM dimensions."""
  from postembed_jax.serving.store import PostStore
  s = PostStore(tmp_path / "posts.sqlite3")
  s.bind_model("m", request.module.DIM)
  yield s
  s.close()


@pytest.fixture(scope="session")
def debian_posts(debian_records):
  """(texts, tags): the fixture's distinct descriptions (419 real posts) and their debtags."""
  from postembed_jax.serving.members import debian_posts
  return debian_posts(debian_records)


@pytest.fixture(scope="session")
def post_vectors(debian_posts, default_embedder):
  return default_embedder.embed(debian_posts[0])
