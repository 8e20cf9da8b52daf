"""The examples of a task and split, as the tasks define them: what training batches are cut from and, with a
fixed seed, the fixed examples every evaluation scores."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

from postembed_jax.data import config as config_lib
from postembed_jax.data import debian, sources
from postembed_jax.data.lists import as_list
from postembed_jax.data.splits import check_split


def _records(task, split: str, config) -> list[dict[str, Any]]:
  if isinstance(task, sources.FileTask):
    return task.records(split)
  return debian.load_records(split, config=config)


def label_names(task, config) -> list[str] | None:
  """Label names of a classification task (from the train split); None for pairs."""
  if task.kind != "classification":
    return None
  return task.label_names(_records(task, "train", config))


def task_examples(task, split: str, config, *, seed: int) -> list[dict[str, Any]]:
  """The examples of one task and split (pairs or labelled posts)."""
  check_split(split)
  records = _records(task, split, config)
  if task.kind == "pair":
    examples = task.pairs(
      records, seed=seed, neg_ratio=float(config.neg_ratio), hard_negatives=bool(config.hard_negatives)
    )
  else:
    examples = task.examples(records, label_names(task, config))
  cap = int(config.get("max_examples_per_task") or 0)
  share = task_fractions(config).get(task.name)
  if share is not None:
    kept = share if share > 1 else max(1, round(share * len(examples)))
    cap = min(cap or len(examples), int(kept))
  if cap and len(examples) > cap:
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode()), 7])
    examples = [examples[i] for i in sorted(rng.permutation(len(examples))[:cap])]
  return examples


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
  """A pair task's queries against its whole pool of documents, with each query's relevant documents."""

  task: str
  split: str
  queries: list[str]
  docs: list[str]
  relevant: list[list[int]]  # per query, indices into docs


def make_retrieval_examples(task_name: str, split: str, data_config=None) -> RetrievalSet:
  """Every query of a pair task's split against all of the split's candidate documents (see
  ``PairTask.retrieval`` and, for a pair file, ``FileTask.retrieval``)."""
  check_split(split)
  config = data_config or config_lib.default_data_config()
  task = config_lib.resolve_tasks(config, [task_name], training=False)[task_name]
  if task.kind != "pair":
    raise ValueError(f"Task {task_name!r} is a label task; only pair tasks have queries to retrieve with.")
  queries, docs, relevant = task.retrieval(_records(task, split, config))
  return RetrievalSet(task=task_name, split=split, queries=queries, docs=docs, relevant=relevant)


def task_fractions(config) -> dict[str, float]:
  """``config.task_fractions`` ("search=0.05,interest=128"): per task, the share (0 < x <= 1) or the number (an
  integer > 1) of its examples kept, for scarce-data regimes: a share of a large task can still be more pairs than a
  short run draws, and a count makes the task scarce at any budget."""
  out = {}
  for item in as_list(config.get("task_fractions")):
    name, sep, value = item.partition("=")
    try:
      share = float(value)
    except ValueError:
      share = -1.0
    if not sep or share <= 0 or (share > 1 and share != int(share)):
      raise ValueError(
        f'task_fractions entry {item!r} must look like "task=share" with 0 < share <= 1, or "task=count" with an '
        "integer count > 1"
      )
    out[name.strip()] = share
  return out


@dataclasses.dataclass
class EvalSet:
  """Fixed examples of one task and split, for evaluation."""

  task: str
  split: str
  kind: str  # 'pair' or 'classification'
  examples: list[dict[str, Any]]
  label_names: list[str] | None = None
  multi_label: bool = False


def make_eval_examples(task_name: str, split: str = "validation", data_config=None, *, seed: int = 0) -> EvalSet:
  """Deterministic evaluation examples (zero-shot tasks allowed)."""
  config = data_config or config_lib.default_data_config()
  task = config_lib.resolve_tasks(config, [task_name], training=False)[task_name]
  return EvalSet(
    task=task_name,
    split=split,
    kind=task.kind,
    examples=task_examples(task, split, config, seed=seed),
    label_names=label_names(task, config),
    multi_label=bool(getattr(task, "multi_label", False)),
  )
