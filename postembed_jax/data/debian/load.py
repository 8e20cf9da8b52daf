"""The built corpus for trainers and evaluators: the builder a data config names, built on first use, and its
records and metadata."""

from __future__ import annotations

import functools
import os
from typing import Any

import tensorflow_datasets as tfds

from postembed_jax.data.debian.builder import DebianPackages, DebianPackagesConfig
from postembed_jax.data.debian.corpus import DEFAULT_LANGUAGES
from postembed_jax.data.debian.fetch import DEFAULT_RELEASE, IndexSource
from postembed_jax.data.lists import as_list
from postembed_jax.data.splits import check_split

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "postembed_jax", "tensorflow_datasets")


def make_builder(config=None, *, data_dir: str | None = None, progress: bool = False) -> DebianPackages:
  """Builder for the corpus a data config names (fixture or full mirror).

  Reads config fields release, component, arch, corpus_languages, mirror,
  cache_dir, index_dir and data_dir (all optional).
  """
  get = lambda k, d=None: config.get(k, d) if config is not None and config.get(k) is not None else d
  return _make_builder(
    get("release", DEFAULT_RELEASE),
    get("component", "main"),
    get("arch", "amd64"),
    tuple(as_list(get("corpus_languages", DEFAULT_LANGUAGES))),
    os.path.expanduser(data_dir or get("data_dir") or DEFAULT_DATA_DIR),
    get("mirror"),
    get("cache_dir"),
    get("index_dir"),
    progress,
  )


@functools.lru_cache(maxsize=32)
def _make_builder(
  release, component, arch, languages, data_dir, mirror, cache_dir, index_dir, progress
) -> DebianPackages:
  digest = None
  if index_dir:
    digest = IndexSource(release, index_dir=index_dir).info.digest
  bcfg = DebianPackagesConfig(release=release, component=component, arch=arch, languages=languages, local_digest=digest)
  if any(c.name == bcfg.name for c in DebianPackages.BUILDER_CONFIGS):
    bcfg = bcfg.name  # TFDS refuses a custom config named like a registered one.
  return DebianPackages(
    config=bcfg, data_dir=data_dir, mirror=mirror, cache_dir=cache_dir, index_dir=index_dir, progress=progress
  )


def prepare(config=None, *, data_dir: str | None = None, progress: bool = False) -> DebianPackages:
  """Builds the dataset if it is not on disk yet; returns the ready builder."""
  builder = make_builder(config, data_dir=data_dir, progress=progress)
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=download_config())
  return builder


def download_config(force: bool = False) -> tfds.download.DownloadConfig:
  """Never asks GCS for a prebuilt copy; `force` regenerates an existing build."""
  mode = (
    tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if force else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  return tfds.download.DownloadConfig(try_download_gcs=False, download_mode=mode)


def load_records(split: str, *, data_dir: str | None = None, config=None) -> list[dict[str, Any]]:
  """Package records of one split, sorted by name (built on first use).

  Each record has keys name, source, section, tags, synopsis, description
  (English long description), translations (lang -> text), depends,
  recommends, suggests.
  """
  check_split(split)
  builder = prepare(config, data_dir=data_dir)
  return list(_load_split(builder.data_dir, builder.builder_config.name, split))


@functools.lru_cache(maxsize=16)
def _load_split(dataset_dir: str, config_name: str, split: str) -> tuple[dict[str, Any], ...]:
  del config_name  # Part of the cache key only; dataset_dir already names it.
  builder = tfds.builder_from_directory(dataset_dir)
  source = builder.as_data_source(split=split)
  raw = source.__getitems__(range(len(source))) if len(source) else []
  return tuple(sorted((decode_example(ex) for ex in raw), key=lambda r: r["name"]))


def decode_example(ex: dict[str, Any]) -> dict[str, Any]:
  """TFDS example (bytes) -> plain record (str)."""
  s = lambda b: b.decode("utf-8") if isinstance(b, bytes) else str(b)
  rec = {k: s(ex[k]) for k in ("name", "source", "section", "synopsis", "description")}
  for k in ("tags", "depends", "recommends", "suggests"):
    rec[k] = [s(x) for x in ex[k]]
  tr = ex["translations"]
  rec["translations"] = {s(l): s(t) for l, t in zip(tr["lang"], tr["text"])}
  return rec


def dataset_metadata(config=None, *, data_dir: str | None = None) -> dict[str, Any]:
  """Release, hashes, statistics and dropped counts of the (built) dataset."""
  return dict(prepare(config, data_dir=data_dir).info.metadata)
