"""Shared fixtures: the default pretrained model is loaded once per session (loading + compiling dominates)."""

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def parity_texts() -> list[str]:
  """64 real texts: Debian descriptions (long ones hit truncation), translations, one-word, empty, emoji."""
  return json.loads((FIXTURES / "parity_texts.json").read_text())


@pytest.fixture(scope="session")
def default_embedder():
  from postembed_jax.serving.embedder import Embedder
  return Embedder.from_pretrained("all-MiniLM-L6-v2", max_length=128)
