"""The Debian package corpus as the TFDS dataset ``debian_packages`` (array_record, no TensorFlow).

Why Debian: every package has a human-written long description (a "post"), a Section (topic), debtags (hashtags),
a source package (a "story" grouping related binaries), dependency relations and translations -- real, public,
multilingual labels that anyone can rebuild from a mirror. Index files are verified against the InRelease hashes.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow_datasets as tfds
from etils import epath

from postembed_jax.data.debian.corpus import (
  DEFAULT_LANGUAGES,
  assign_splits,
  corpus_statistics,
  format_statistics,
  read_corpus,
  records_digest,
)
from postembed_jax.data.debian.fetch import DEFAULT_RELEASE, IndexSource
from postembed_jax.data.splits import SPLITS


class DebianPackagesConfig(tfds.core.BuilderConfig):
  """One release/component/architecture/language set; the name says which."""

  def __init__(
    self,
    *,
    release: str = DEFAULT_RELEASE,
    component: str = "main",
    arch: str = "amd64",
    languages: Iterable[str] = DEFAULT_LANGUAGES,
    local_digest: str | None = None,
  ):
    self.release, self.component, self.arch = release, component, arch
    self.languages = tuple(sorted(languages))
    name = "-".join([release, component, arch, ".".join(self.languages) or "en"])
    if local_digest:  # User-supplied index files get their own dataset dir.
      name += f"-local{local_digest[:10]}"
    super().__init__(name=name, description=f"Debian {release}/{component} {arch}")


_TEXTS = tfds.features.Sequence(tfds.features.Text())


class DebianPackages(tfds.core.GeneratorBasedBuilder):
  """TFDS builder `debian_packages`; its description is the module docstring."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Packages + Translation-* of one Debian release."}
  BUILDER_CONFIGS = [DebianPackagesConfig()]
  # Fixed path: TFDS's own lookup imports `importlib_resources`, which is not
  # a dependency; there is no checksums.tsv (InRelease hashes are used).
  code_path = epath.Path(__file__)

  def __init__(
    self,
    *,
    mirror: str | None = None,
    cache_dir: str | None = None,
    index_dir: str | None = None,
    progress: bool = False,
    **kwargs,
  ):
    self._mirror, self._cache_dir, self._index_dir = mirror, cache_dir, index_dir
    self._progress = progress
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "name": tfds.features.Text(),
          "source": tfds.features.Text(),
          "section": tfds.features.Text(),
          "tags": _TEXTS,
          "synopsis": tfds.features.Text(),
          "description": tfds.features.Text(),
          "translations": tfds.features.Sequence({"lang": tfds.features.Text(), "text": tfds.features.Text()}),
          "depends": _TEXTS,
          "recommends": _TEXTS,
          "suggests": _TEXTS,
        }
      ),
      homepage="https://www.debian.org/distrib/packages",
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Index files are fetched with urllib and verified here.
    cfg = self.builder_config
    src = IndexSource(
      cfg.release, mirror=self._mirror, cache_dir=self._cache_dir, index_dir=self._index_dir, progress=self._progress
    )
    records, dropped = read_corpus(src, cfg.component, cfg.arch, cfg.languages)
    split_of = assign_splits(records)
    splits = {s: [r for r in records if split_of[r["name"]] == s] for s in SPLITS}
    stats = corpus_statistics(splits)
    self.info.metadata.update(
      {
        "release": dict(src.info.fields, release=cfg.release),
        "inrelease_sha256": src.info.digest,
        "source": src.index_dir or src.mirror,
        "files": {p: {"sha256": h, "size": n} for p, (h, n) in sorted(src.used.items())},
        "languages": list(cfg.languages),
        "dropped": dict(sorted(dropped.items())),
        "statistics": stats,
        # array_record bytes differ between identical builds; compare these instead.
        "content_sha256": {s: records_digest(recs) for s, recs in splits.items()},
      }
    )
    print(format_statistics(self.info.metadata))
    return {s: self._generate_examples(recs) for s, recs in splits.items()}

  def _generate_examples(self, records):
    for rec in records:
      ex = dict(rec)
      ex["translations"] = [{"lang": l, "text": t} for l, t in sorted(rec["translations"].items())]
      yield rec["name"], ex
