"""The train / validation / test splits and the hash that assigns a key to one, for the corpus and user files."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")
# Percent of hash buckets (0..99) per split.
SPLIT_BUCKETS = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {list(SPLITS)}")


def split_of(key: str) -> str:
  """The split of a group key (a source package, a user row's text): sha256 bucket -> SPLIT_BUCKETS."""
  bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 100
  return next(s for s, r in SPLIT_BUCKETS.items() if bucket in r)
