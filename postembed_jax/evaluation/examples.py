"""The fixed evaluation examples of each task, read through the data package (``pipeline.make_eval_examples``).

Every model is scored on exactly the same pairs and posts: negatives are sampled with a fixed seed (not the training
seed) and a capped split is a fixed random subset, so numbers from different runs and models are comparable.
Results are cached per (task, split, data config, cap) because mid-training validation asks again and again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import ml_collections
import numpy as np

from postembed_jax.data import debian, pipeline, tasks

EVAL_SEED = 0
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
class Labelled:
  texts: list[str]
  labels: list  # class id per post, or a list of label ids per post when multilabel
  label_names: list[str]
  multilabel: bool

  @property
  def scorable(self) -> bool:
    return len(self.texts) > 0


def _as_list(value) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


def task_kind(name: str) -> str:
  """"pair" or "classification"."""
  return tasks.get_task(name).kind


def configured_tasks(data_config, *, kind: str) -> list[str]:
  """The data config's ``tasks`` of the given kind; all trainable tasks of that kind when it names none (so a
  model trained on pair tasks alone is still probed on the classification tasks)."""
  named = [n for n in _as_list(data_config.get("tasks") or "") if task_kind(n) == kind]
  return named or [n for n, t in tasks.TASKS.items() if not t.zero_shot and t.kind == kind]


def held_out_tasks() -> list[str]:
  """Zero-shot tasks: the data package's held-out pair and label tasks."""
  return [n for n, t in tasks.TASKS.items() if t.zero_shot]


def _config_key(data_config) -> str:
  as_dict = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
  return json.dumps(as_dict, sort_keys=True, default=str)


def _subset(n: int, limit: int | None) -> np.ndarray:
  if limit is None or n <= limit:
    return np.arange(n)
  return np.sort(np.random.default_rng(EVAL_SEED).choice(n, size=limit, replace=False))


def _data_config(config_key: str):
  return ml_collections.ConfigDict(json.loads(config_key))


@functools.lru_cache(maxsize=64)
def _eval_set(name: str, split: str, config_key: str, limit: int | None) -> pipeline.EvalSet:
  eval_set = pipeline.make_eval_examples(name, split, _data_config(config_key), seed=EVAL_SEED)
  eval_set.examples = [eval_set.examples[i] for i in _subset(len(eval_set.examples), limit)]
  return eval_set


def pairs(name: str, split: str, data_config, *, limit: int | None = None) -> Pairs:
  """The data package's fixed evaluation pairs of a pair task; a fixed random subset of ``limit`` rows."""
  rows = _eval_set(name, split, _config_key(data_config), limit).examples
  return Pairs([r["left"] for r in rows], [r["right"] for r in rows],
               np.array([int(r["label"] > 0) for r in rows], np.int32))


def labelled(name: str, split: str, data_config, *, limit: int | None = None) -> Labelled:
  """Posts with label ids of a classification task (label space from the train split); a fixed random subset."""
  eval_set = _eval_set(name, split, _config_key(data_config), limit)
  key = "labels" if eval_set.multi_label else "label"
  return Labelled([r["text"] for r in eval_set.examples], [r[key] for r in eval_set.examples],
                  eval_set.label_names, eval_set.multi_label)


def corpus_texts(split: str, data_config, *, limit: int | None = None) -> list[str]:
  """Distinct English descriptions of a split: what the TF-IDF baselines are fitted on."""
  texts = sorted({r["description"] for r in debian.load_records(split, config=data_config)})
  return [texts[i] for i in _subset(len(texts), limit)]
