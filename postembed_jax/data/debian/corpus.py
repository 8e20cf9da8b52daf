"""Parsed index files -> the corpus: package records joined with their descriptions, split without leakage,
with a content digest and the statistics a build reports."""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from postembed_jax.data.debian.fetch import IndexSource, available_languages
from postembed_jax.data.debian.parse import parse_packages, parse_translation
from postembed_jax.data.splits import split_of

DEFAULT_LANGUAGES = ("de", "es", "fr", "it", "ja", "pt_BR", "ru")
RECORD_KEYS = (
  "name",
  "source",
  "section",
  "tags",
  "synopsis",
  "description",
  "translations",
  "depends",
  "recommends",
  "suggests",
)


def read_corpus(
  src: IndexSource, component: str, arch: str, languages: Iterable[str]
) -> tuple[list[dict[str, Any]], collections.Counter]:
  """Reads, verifies and joins the Packages and Translation-* indexes."""
  dropped: collections.Counter = collections.Counter()
  packages = parse_packages(src.read(f"{component}/binary-{arch}/Packages"), dropped)
  translations = {}
  for lang in ("en", *languages):
    rel = f"{component}/i18n/Translation-{lang}"
    if not src.available(rel):
      raise ValueError(
        f"Language {lang!r} has no {rel} in {src.release}; available: {available_languages(src.info, component)}"
      )
    translations[lang] = parse_translation(src.read(rel), lang, dropped)
  return build_records(packages, translations, dropped), dropped


def build_records(
  packages: list[dict[str, Any]],
  translations: dict[str, dict[tuple[str, str], tuple[str, str]]],
  dropped: collections.Counter,
) -> list[dict[str, Any]]:
  """Joins packages with their English and translated long descriptions.

  A package without an English long description is dropped (that is what
  makes it a "post"); a translation whose long description is empty is
  skipped and counted.
  """
  english = translations["en"]
  records = []
  for pkg in packages:
    key = (pkg["name"], pkg["md5"])
    if key not in english:
      dropped["no_english_description"] += 1
      continue
    _, description = english[key]
    if not description.strip():
      dropped["empty_description"] += 1
      continue
    trans = {}
    for lang, table in translations.items():
      if lang == "en" or key not in table:
        continue
      if table[key][1].strip():
        trans[lang] = table[key][1]
      else:
        dropped[f"translation_{lang}_empty"] += 1
    rec = {k: v for k, v in pkg.items() if k != "md5"}
    rec.update(description=description, translations=trans)
    records.append(rec)
  return records


def assign_splits(records: list[dict[str, Any]]) -> dict[str, str]:
  """Maps package name -> split, keeping each source package and each
  identical English description inside one split (no leakage).

  Packages linked by a shared source or an identical description form one
  group (union-find); the group's smallest source name is hashed.
  """
  parent: dict[str, str] = {}

  def find(x):
    while parent.setdefault(x, x) != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  def union(a, b):
    ra, rb = find(a), find(b)
    if ra != rb:
      parent[max(ra, rb)] = min(ra, rb)

  by_text: dict[str, str] = {}
  for rec in records:
    src = "s:" + rec["source"]
    find(src)
    text = " ".join(rec["description"].split())
    if text in by_text:
      union(src, by_text[text])
    else:
      by_text[text] = src
  out = {}
  for rec in records:
    out[rec["name"]] = split_of(find("s:" + rec["source"]))
  return out


def records_digest(records: Iterable[dict[str, Any]]) -> str:
  """Order-independent content hash of records (as load_records returns them)."""
  canon = sorted(json.dumps({k: r[k] for k in RECORD_KEYS}, sort_keys=True, ensure_ascii=False) for r in records)
  return hashlib.sha256("\n".join(canon).encode("utf-8")).hexdigest()


def corpus_statistics(splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
  """Counts recorded in the dataset info and printed after a build."""
  all_recs = [r for recs in splits.values() for r in recs]
  tags = collections.Counter(t for r in all_recs for t in r["tags"])
  langs = collections.Counter(l for r in all_recs for l in r["translations"])
  return {
    "packages": len(all_recs),
    "packages_per_split": {s: len(r) for s, r in splits.items()},
    "sources_per_split": {s: len({x["source"] for x in r}) for s, r in splits.items()},
    "sections": len({r["section"] for r in all_recs}),
    "tagged_packages": sum(1 for r in all_recs if r["tags"]),
    "tags": len(tags),
    "facets": len({t.split("::", 1)[0] for t in tags}),
    "translations_per_language": dict(sorted(langs.items())),
    "median_description_words": _median([len(r["description"].split()) for r in all_recs]),
  }


def _median(xs: list[int]) -> float:
  xs = sorted(xs)
  return float(xs[len(xs) // 2]) if xs else 0.0


def format_statistics(metadata: dict[str, Any]) -> str:
  """Human-readable build summary (printed by the builder and build_data.py)."""
  st, rel = metadata["statistics"], metadata["release"]
  lines = [
    f"Debian {rel.get('release')} ({rel.get('Version', '?')}, {rel.get('Date', '?')}) "
    f"InRelease sha256 {metadata['inrelease_sha256'][:16]}...",
    f"packages: {st['packages']}  per split: {st['packages_per_split']}",
    f"sources per split: {st['sources_per_split']}",
    f"sections: {st['sections']}  tags: {st['tags']} in {st['facets']} facets  "
    f"tagged packages: {st['tagged_packages']}",
    f"translations: {st['translations_per_language']}",
    f"median description words: {st['median_description_words']}",
    f"dropped: {metadata['dropped'] or 'none'}",
  ]
  return "\n".join(lines)
