"""User data: JSONL or Parquet files behind the same task interface as Debian.

Two schemas, one per file:
  pairs            {"left": str, "right": str, "label": 0/1 (bool, int or float)}
  labelled posts   {"text": str, "labels": str | int | list[str | int]}
A list in any row makes the task multi-label. Files are validated when the task
is created, so a wrong schema, an empty text or an unknown label type stops a
run at start-up with an error naming the file, the line (row) and the field.

Splits: a path containing "{split}" names one file per split; otherwise rows are
assigned to train/validation/test by a hash of their left/text field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import os
from collections.abc import Sequence
from typing import Any

from postembed_jax.data.lists import as_list
from postembed_jax.data.splits import SPLITS, check_split, split_of
from postembed_jax.data.tasks import labelled_posts

PAIR_FIELDS = ("left", "right", "label")
POST_FIELDS = ("text", "labels")


class DataError(ValueError):
  """A user data file is invalid; the message says file, line and field."""

  def __init__(self, path: str, line: int | None, field: str | None, problem: str):
    where = f"{path}:{line}" if line is not None else path
    what = f" field '{field}':" if field else ""
    super().__init__(f"{where}:{what} {problem}")


def read_rows(path: str) -> list[tuple[int, Any]]:
  """(line or row number, raw row) for a .jsonl/.json or .parquet file."""
  if not os.path.exists(path):
    raise DataError(path, None, None, "file not found")
  if path.endswith(".parquet"):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top

    try:
      rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for bad files.
      raise DataError(path, None, None, f"not a readable Parquet file ({e})") from e
    return [(i + 1, row) for i, row in enumerate(rows)]
  if not path.endswith((".jsonl", ".json")):
    raise DataError(path, None, None, "unknown file type; use .jsonl or .parquet")
  out = []
  with open(path, "rb") as f:
    for n, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataError(path, n, None, f"not valid UTF-8 ({e.reason})") from e
      if not line.strip():
        continue
      try:
        out.append((n, json.loads(line)))
      except json.JSONDecodeError as e:
        raise DataError(path, n, None, f"not valid JSON ({e.msg})") from e
  return out


def _check_text(path, n, row, field):
  value = row[field]
  if not isinstance(value, str):
    raise DataError(path, n, field, f"expected a string, got {type(value).__name__}")
  if not value.strip():
    raise DataError(path, n, field, "empty text")
  return value


def _label_atom(path, n, value):
  if isinstance(value, bool) or not isinstance(value, (str, numbers.Integral)):
    raise DataError(path, n, "labels", f"unknown label type {type(value).__name__}; use str, int or a list of them")
  if isinstance(value, str) and not value.strip():
    raise DataError(path, n, "labels", "empty label")
  return value


def validate(path: str, rows: list[tuple[int, Any]]) -> tuple[str, bool, list[dict]]:
  """Checks every row; returns (kind, multi_label, clean rows)."""
  if not rows:
    raise DataError(path, None, None, "no rows")
  clean, kind, atom_types = [], None, set()
  multi = False
  for n, row in rows:
    if not isinstance(row, dict):
      raise DataError(path, n, None, f"expected an object, got {type(row).__name__}")
    keys = set(row)
    row_kind = "pair" if "left" in keys or "right" in keys else "classification" if "text" in keys else None
    if row_kind is None:
      raise DataError(
        path, n, None, f"wrong schema: fields {sorted(keys)}; expected {list(PAIR_FIELDS)} or {list(POST_FIELDS)}"
      )
    kind = kind or row_kind
    if row_kind != kind:
      raise DataError(path, n, None, f"wrong schema: a {row_kind} row in a file of {kind} rows")
    fields = PAIR_FIELDS if kind == "pair" else POST_FIELDS
    for f in fields:
      if f not in row or row[f] is None:
        raise DataError(path, n, f, "missing field")
    extra = keys - set(fields)
    if extra:
      raise DataError(path, n, sorted(extra)[0], f"unexpected field; expected {list(fields)}")
    if kind == "pair":
      label = row["label"]
      if isinstance(label, bool):
        label = float(label)
      elif not isinstance(label, numbers.Real):
        raise DataError(path, n, "label", f"unknown label type {type(label).__name__}; use 0/1 or true/false")
      if float(label) not in (0.0, 1.0):
        raise DataError(path, n, "label", f"label must be 0 or 1, got {label}")
      clean.append(
        {"left": _check_text(path, n, row, "left"), "right": _check_text(path, n, row, "right"), "label": float(label)}
      )
    else:
      text = _check_text(path, n, row, "text")
      labels = row["labels"]
      if isinstance(labels, (list, tuple)):
        multi = True
        if not labels:
          raise DataError(path, n, "labels", "empty label list")
        atoms = [_label_atom(path, n, a) for a in labels]
      else:
        atoms = [_label_atom(path, n, labels)]
      atom_types.update(type(a) is str for a in atoms)
      if len(atom_types) > 1:
        raise DataError(path, n, "labels", "mixes string and integer labels")
      clean.append({"text": text, "labels": [str(a) for a in atoms]})
  return kind, multi, clean


@functools.lru_cache(maxsize=64)
def _load(path: str) -> tuple[str, bool, tuple[dict, ...]]:
  kind, multi, rows = validate(path, read_rows(path))
  return kind, multi, tuple(rows)


@dataclasses.dataclass(frozen=True)
class FileTask:
  """A task read from user files; same methods as the Debian tasks."""

  name: str
  path: str
  kind: str
  multi_label: bool
  description: str = "user data"
  zero_shot: bool = False

  def _paths(self) -> dict[str, str]:
    if "{split}" in self.path:
      return {s: self.path.format(split=s) for s in SPLITS if os.path.exists(self.path.format(split=s))}
    return {s: self.path for s in SPLITS}

  def records(self, split: str) -> list[dict[str, Any]]:
    """Validated rows of one split."""
    check_split(split)
    paths = self._paths()
    if split not in paths:
      raise ValueError(
        f"Task {self.name!r} has no {split} file ({self.path.format(split=split)}); found: {sorted(paths)}"
      )
    rows = list(_load(paths[split])[2])
    if "{split}" in self.path:
      return rows
    key = "left" if self.kind == "pair" else "text"
    return [r for r in rows if split_of(r[key]) == split]

  # Pair-task interface. Files carry their own labels: used as given.
  def pairs(
    self, records, *, seed: int = 0, neg_ratio: float = 1.0, hard_negatives: bool = False
  ) -> list[dict[str, Any]]:
    del seed, neg_ratio, hard_negatives
    return [dict(r) for r in records]

  def retrieval(self, records) -> tuple[list[str], list[str], list[list[int]]]:
    """(queries, documents, relevant) of a pair file's split, as ``PairTask.retrieval``: every left text with a
    positive row queries the split's whole pool of right texts (those of its negative rows included), and
    ``relevant[q]`` lists the rights it is labelled 1 with. A file names no other relations, so any other
    document counts as not relevant."""
    if self.kind != "pair":
      raise ValueError(f"Task {self.name!r} is a labelled-post file; only pair files have queries to retrieve with.")
    docs = sorted({r["right"] for r in records})
    index = {d: i for i, d in enumerate(docs)}
    relevant: dict[str, set[int]] = {}
    for r in records:
      if r["label"] > 0 and r["right"] != r["left"]:
        relevant.setdefault(r["left"], set()).add(index[r["right"]])
    queries = sorted(relevant)
    return queries, docs, [sorted(relevant[q]) for q in queries]

  # Classification interface.
  def label_names(self, train_records) -> list[str]:
    return sorted({l for r in train_records for l in r["labels"]})

  def examples(self, records, label_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    names = self.label_names(records) if label_names is None else label_names
    return labelled_posts(((r["text"], r["labels"]) for r in records), names, multi_label=self.multi_label)


def file_task(name: str, path: str) -> FileTask:
  """Validates the file(s) now and returns the task."""
  path = os.path.expanduser(path)
  probe = [path.format(split=s) for s in SPLITS] if "{split}" in path else [path]
  found = [p for p in probe if os.path.exists(p)]
  if not found:
    raise DataError(path, None, None, "file not found")
  kinds = {_load(p)[:2] for p in found}
  kind = {k for k, _ in kinds}
  if len(kind) > 1:
    raise DataError(path, None, None, f"split files mix schemas: {sorted(kind)}")
  return FileTask(name=name, path=path, kind=kind.pop(), multi_label=any(m for _, m in kinds))


def parse_files(files) -> dict[str, FileTask]:
  """Config value -> tasks: a dict name->path, or "name=path" strings (list or comma string)."""
  if not files:
    return {}
  if hasattr(files, "items"):
    entries = list(files.items())
  else:
    entries = []
    for item in as_list(files):
      name, sep, path = item.strip().partition("=")
      if not sep or not name or not path:
        raise ValueError(f'files entry {item!r} must look like "name=path"')
      entries.append((name.strip(), path.strip()))
  return {name: file_task(name, path) for name, path in entries}
