"""The fixed evaluation examples of each task, read through the data package (``data.examples.make_eval_examples``).

Every model is scored on exactly the same pairs and posts, whatever it was trained with: the examples depend on the
corpus and task definitions of the data config (``CORPUS_FIELDS``) and on the evaluation's own settings
(``EVAL_SETTINGS``: one random negative per positive, or one hard negative, no cap), never on training settings such
as ``neg_ratio``, ``hard_negatives`` or ``max_examples_per_task``. Negatives are sampled with a fixed seed (not the
training seed) and a capped split is a fixed random subset. Results are cached per (task, split, corpus, cap)
because mid-training validation asks again and again.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import ml_collections
import numpy as np

from postembed_jax.data import config as data_config_lib
from postembed_jax.data import debian, sources, tasks
from postembed_jax.data import examples as data_examples
from postembed_jax.data.lists import as_list

EVAL_SEED = 0
# The data config fields that say what a task's examples are; every other field is a training setting.
CORPUS_FIELDS = (
  "source",
  "files",
  "data_dir",
  "cache_dir",
  "mirror",
  "index_dir",
  "release",
  "component",
  "arch",
  "corpus_languages",
  "languages",
  "heldout_languages",
  "heldout_facets",
  "search_query",
)
EVAL_SETTINGS = {"neg_ratio": 1.0, "hard_negatives": False, "max_examples_per_task": 0}
RETRIEVAL_TASKS = ("search", "storyline", "translation", "zs_translation", "relation")


@dataclasses.dataclass(frozen=True)
class Pairs:
  left: list[str]
  right: list[str]
  labels: np.ndarray  # 0/1

  @property
  def scorable(self) -> bool:
    """Both classes present (a small split may have no pairs of a rare task)."""
    return len(np.unique(self.labels)) == 2


@dataclasses.dataclass(frozen=True)
class Triplets:
  """(anchor, positive, negative) rows: the paper's offline metric asks whether the positive is the closer one."""

  anchor: list[str]
  positive: list[str]
  negative: list[str]

  @property
  def scorable(self) -> bool:
    return len(self.anchor) > 0


@dataclasses.dataclass(frozen=True)
class Retrieval:
  """Queries against a pool of documents; ``relevance[q, d]`` is 1 where document d answers query q."""

  queries: list[str]
  docs: list[str]
  relevance: np.ndarray  # [Q, D] int8

  @property
  def scorable(self) -> bool:
    return len(self.queries) > 0


@dataclasses.dataclass(frozen=True)
class Labelled:
  texts: list[str]
  labels: list  # class id per post, or a list of label ids per post when multilabel
  label_names: list[str]
  multilabel: bool

  @property
  def scorable(self) -> bool:
    return len(self.texts) > 0


def file_tasks(data_config) -> dict[str, sources.FileTask]:
  """The tasks of the data config's user files (``files``: "name=path,..."), validated; empty without files."""
  return sources.parse_files(data_config.get("files"))


def task_kind(name: str, data_config=None) -> str:
  """ "pair" or "classification": of a built-in task, or of a task the data config's user files define."""
  if data_config is None:
    return tasks.get_task(name).kind
  return data_config_lib.resolve_tasks(data_config, [name], training=False)[name].kind


def configured_tasks(data_config, *, kind: str) -> list[str]:
  """The data config's ``tasks`` of the given kind. When it names none of that kind, every task of that kind it
  could name (so a model trained on pair tasks alone is still probed on the label tasks): the trainable built-in
  ones, or with ``source="files"`` the user files' tasks, never the Debian corpus."""
  named = [n for n in as_list(data_config.get("tasks")) if task_kind(n, data_config) == kind]
  if named:
    return named
  if data_config.get("source") == "files":
    return [n for n, t in file_tasks(data_config).items() if t.kind == kind]
  return [n for n in tasks.TRAINABLE_TASKS if tasks.TASKS[n].kind == kind]


def held_out_tasks(data_config=None) -> list[str]:
  """Zero-shot tasks: the data package's held-out pair and label tasks; none with ``source="files"``, whose
  tasks are the user's files only."""
  if data_config is not None and data_config.get("source") == "files":
    return []
  return [n for n, t in tasks.TASKS.items() if t.zero_shot]


def is_retrieval_task(name: str, data_config) -> bool:
  """Whether a pair task is scored by retrieval: the built-in text-to-text tasks, and every pair file (its left
  texts query the pool of its right texts; see ``FileTask.retrieval``)."""
  return name in RETRIEVAL_TASKS or name in file_tasks(data_config)


def samples_negatives(name: str, data_config) -> bool:
  """Built-in pair tasks sample their negatives (random or hard); a pair file's negatives are its own rows, so a
  hard-negative evaluation of it would repeat the random one."""
  return name not in file_tasks(data_config)


def _config_key(data_config, *, hard_negatives: bool = False) -> str:
  """What evaluation examples depend on: the corpus and task fields that ``data_config`` sets, and the
  evaluation's own sampling settings (everything else stays at its default in ``_data_config``)."""
  key = {f: data_config.get(f) for f in CORPUS_FIELDS if data_config.get(f) is not None}
  key.update(EVAL_SETTINGS, hard_negatives=hard_negatives)
  return json.dumps(key, sort_keys=True, default=str)


def _subset(n: int, limit: int | None) -> np.ndarray:
  if limit is None or n <= limit:
    return np.arange(n)
  return np.sort(np.random.default_rng(EVAL_SEED).choice(n, size=limit, replace=False))


def _data_config(config_key: str) -> ml_collections.ConfigDict:
  config = data_config_lib.default_data_config()
  config.update(json.loads(config_key))
  return config


@functools.lru_cache(maxsize=64)
def _full_eval_set(name: str, split: str, config_key: str) -> data_examples.EvalSet:
  return data_examples.make_eval_examples(name, split, _data_config(config_key), seed=EVAL_SEED)


@functools.lru_cache(maxsize=64)
def _eval_set(name: str, split: str, config_key: str, limit: int | None) -> data_examples.EvalSet:
  full = _full_eval_set(name, split, config_key)
  return dataclasses.replace(full, examples=[full.examples[i] for i in _subset(len(full.examples), limit)])


def pairs(name: str, split: str, data_config, *, limit: int | None = None, hard_negatives: bool = False) -> Pairs:
  """The fixed evaluation pairs of a pair task (one random, or one hard, negative per positive); a fixed random
  subset of ``limit`` rows."""
  rows = _eval_set(name, split, _config_key(data_config, hard_negatives=hard_negatives), limit).examples
  return Pairs(
    [r["left"] for r in rows], [r["right"] for r in rows], np.array([int(r["label"] > 0) for r in rows], np.int32)
  )


def triplets(name: str, split: str, data_config, *, limit: int | None = None, hard_negatives: bool = False) -> Triplets:
  """Each negative pair of the fixed evaluation pairs with the positive it was sampled for (same left text, the
  pair before it), as an (anchor, positive, negative) triplet; a fixed random subset of ``limit`` triplets."""
  rows = _full_eval_set(name, split, _config_key(data_config, hard_negatives=hard_negatives)).examples
  found, positive = [], None
  for row in rows:
    if row["label"] > 0:
      positive = row
    elif positive is not None and positive["left"] == row["left"]:
      found.append((row["left"], positive["right"], row["right"]))
  found = [found[i] for i in _subset(len(found), limit)]
  return Triplets([a for a, _, _ in found], [p for _, p, _ in found], [n for _, _, n in found])


@functools.lru_cache(maxsize=16)
def _retrieval_set(name: str, split: str, config_key: str) -> data_examples.RetrievalSet:
  return data_examples.make_retrieval_examples(name, split, _data_config(config_key))


def retrieval(name: str, split: str, data_config, *, limit: int | None = None) -> Retrieval:
  """A fixed random subset of ``limit`` queries of a retrieval task, each against the split's whole pool of
  documents (every post, for the text-to-text tasks), not only the documents of the sampled pairs."""
  full = _retrieval_set(name, split, _config_key(data_config))
  keep = _subset(len(full.queries), limit)
  relevance = np.zeros((len(keep), len(full.docs)), np.int8)
  for row, q in enumerate(keep):
    relevance[row, full.relevant[q]] = 1
  return Retrieval([full.queries[q] for q in keep], list(full.docs), relevance)


def labelled(name: str, split: str, data_config, *, limit: int | None = None) -> Labelled:
  """Posts with label ids of a classification task (label space from the train split); a fixed random subset."""
  eval_set = _eval_set(name, split, _config_key(data_config), limit)
  key = "labels" if eval_set.multi_label else "label"
  return Labelled(
    [r["text"] for r in eval_set.examples],
    [r[key] for r in eval_set.examples],
    eval_set.label_names,
    eval_set.multi_label,
  )


def corpus_texts(split: str, data_config, *, limit: int | None = None) -> list[str]:
  """Distinct texts of a split, what the TF-IDF and PCA baselines are fitted on: the corpus's English
  descriptions, or with ``source="files"`` every text of the user files' split (both sides of the pairs, the
  labelled posts)."""
  if data_config.get("source") == "files":
    records = [r for task in file_tasks(data_config).values() for r in task.records(split)]
    texts = sorted({r[k] for r in records for k in ("left", "right", "text") if k in r})
  else:
    texts = sorted({r["description"] for r in debian.load_records(split, config=data_config)})
  return [texts[i] for i in _subset(len(texts), limit)]
