"""The Debian package corpus: fetch and verify index files (fetch), parse them (parse), join and split them into
records (corpus), write them as the TFDS dataset ``debian_packages`` (builder), and read it back (load).

Callers use the names re-exported here: ``from postembed_jax.data import debian; debian.load_records(...)``.
"""

from postembed_jax.data.debian.builder import DebianPackages, DebianPackagesConfig
from postembed_jax.data.debian.corpus import (
  DEFAULT_LANGUAGES,
  RECORD_KEYS,
  assign_splits,
  build_records,
  corpus_statistics,
  format_statistics,
  read_corpus,
  records_digest,
)
from postembed_jax.data.debian.fetch import (
  DEFAULT_CACHE_DIR,
  DEFAULT_RELEASE,
  IndexSource,
  NotADebianArchiveError,
  ReleaseInfo,
  apt_mirror,
  available_languages,
  is_debian_suite,
  parse_release,
)
from postembed_jax.data.debian.load import (
  DEFAULT_DATA_DIR,
  dataset_metadata,
  decode_example,
  download_config,
  load_records,
  make_builder,
  prepare,
)
from postembed_jax.data.debian.parse import (
  iter_paragraphs,
  parse_packages,
  parse_tags,
  parse_translation,
  relation_names,
  split_description,
)
from postembed_jax.data.splits import SPLIT_BUCKETS, SPLITS

__all__ = [
  "DEFAULT_CACHE_DIR",
  "DEFAULT_DATA_DIR",
  "DEFAULT_LANGUAGES",
  "DEFAULT_RELEASE",
  "RECORD_KEYS",
  "SPLITS",
  "SPLIT_BUCKETS",
  "DebianPackages",
  "DebianPackagesConfig",
  "IndexSource",
  "NotADebianArchiveError",
  "ReleaseInfo",
  "apt_mirror",
  "assign_splits",
  "available_languages",
  "is_debian_suite",
  "build_records",
  "corpus_statistics",
  "dataset_metadata",
  "decode_example",
  "download_config",
  "format_statistics",
  "iter_paragraphs",
  "load_records",
  "make_builder",
  "parse_packages",
  "parse_release",
  "parse_tags",
  "parse_translation",
  "prepare",
  "read_corpus",
  "records_digest",
  "relation_names",
  "split_description",
]
