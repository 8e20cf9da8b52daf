"""The Debian fixture as a data config, built once per session into a temporary TFDS dir (no network)."""

import os

import pytest

from postembed_jax.data import pipeline

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "..", "fixtures", "debian")


@pytest.fixture(scope="session")
def fixture_data_config(tmp_path_factory):
  config = pipeline.default_data_config()
  config.index_dir = os.path.abspath(FIXTURE_DIR)
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  return config
