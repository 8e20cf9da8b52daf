"""Shared fixtures, built once per session: the default pretrained model (loading + compiling dominates) and the
Debian fixture corpus as a data config (its TFDS dataset is built on first use, offline)."""

import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
DEBIAN_FIXTURE = FIXTURES / "debian"  # a small real subset of the bookworm indexes, with its Release file


def pytest_configure(config):
  """The malloc settings a launcher runs under (launching.run), set before any test's first JAX computation."""
  from postembed_jax import host_malloc

  host_malloc.keep_freed_memory()


@pytest.fixture(scope="session")
def fixture_data_config(tmp_path_factory):
  """The default data config reading DEBIAN_FIXTURE instead of a mirror, into a session-wide TFDS dir."""
  from postembed_jax.data import config as data_config_lib

  config = data_config_lib.default_data_config()
  config.index_dir = str(DEBIAN_FIXTURE)
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return config


@pytest.fixture(scope="session")
def parity_texts() -> list[str]:
  """64 real texts: Debian descriptions (long ones hit truncation), translations, one-word, empty, emoji."""
  return json.loads((FIXTURES / "parity_texts.json").read_text())


@pytest.fixture(scope="session")
def default_embedder():
  from postembed_jax.models.embedder import Embedder

  return Embedder.from_pretrained("all-MiniLM-L6-v2", max_length=128)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
  """A tiny random BERT (2 layers, width 32) with all-MiniLM-L6-v2's tokenizer: real loading code, fast runs."""
  import torch
  from transformers import BertConfig, BertModel

  from postembed_jax.models import hf_io

  path = tmp_path_factory.mktemp("tiny_bert")
  minilm = hf_io.resolve_model_dir("all-MiniLM-L6-v2")
  torch.manual_seed(0)
  BertModel(
    BertConfig(
      vocab_size=30522,
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=64,
      max_position_embeddings=128,
    )
  ).save_pretrained(path)
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(minilm / name, path / name)
  return path


@pytest.fixture(scope="session")
def debian_records(fixture_data_config):
  from postembed_jax.data import debian

  return [r for split in debian.SPLITS for r in debian.load_records(split, config=fixture_data_config)]


@pytest.fixture(scope="session")
def debian_posts(debian_records):
  """(texts, tags): the fixture's distinct descriptions (419 real posts) and their debtags."""
  from postembed_jax.evaluation.members import debian_posts

  return debian_posts(debian_records)


@pytest.fixture(scope="session")
def post_vectors(debian_posts, default_embedder):
  return default_embedder.embed(debian_posts[0])
