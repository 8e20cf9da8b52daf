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
from postembed_jax.data import debian, tasks
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


def task_kind(name: str) -> str:
  """ "pair" or "classification"."""
  return tasks.get_task(name).kind


def configured_tasks(data_config, *, kind: str) -> list[str]:
  """The data config's ``tasks`` of the given kind; all trainable tasks of that kind when it names none (so a
  model trained on pair tasks alone is still probed on the classification tasks)."""
  named = [n for n in as_list(data_config.get("tasks")) if task_kind(n) == kind]
  return named or [n for n in tasks.TRAINABLE_TASKS if tasks.TASKS[n].kind == kind]


def held_out_tasks() -> list[str]:
  """Zero-shot tasks: the data package's held-out pair and label tasks."""
  return [n for n, t in tasks.TASKS.items() if t.zero_shot]


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
  """Distinct English descriptions of a split: what the TF-IDF baselines are fitted on."""
  texts = sorted({r["description"] for r in debian.load_records(split, config=data_config)})
  return [texts[i] for i in _subset(len(texts), limit)]
