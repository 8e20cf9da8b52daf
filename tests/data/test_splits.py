"""Split assignment by hash, shared by the corpus and user files."""

import collections

import pytest

from postembed_jax.data import splits


def test_split_of_is_fixed_and_near_80_10_10():
  keys = [f"source-{i}" for i in range(3000)]
  assert [splits.split_of(k) for k in keys] == [splits.split_of(k) for k in keys]
  counts = collections.Counter(splits.split_of(k) for k in keys)
  assert set(counts) == set(splits.SPLITS)
  assert abs(counts["train"] / 3000 - 0.8) < 0.03 and abs(counts["test"] / 3000 - 0.1) < 0.02


def test_unknown_split_names_the_valid_ones():
  splits.check_split("validation")
  with pytest.raises(ValueError, match=r"valid splits: \['train', 'validation', 'test'\]"):
    splits.check_split("dev")
