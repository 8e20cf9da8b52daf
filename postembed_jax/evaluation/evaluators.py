"""Evaluators by name: each scores any text embedder on the fixed evaluation data of the tasks it applies to.

``EVALUATORS`` maps a name (what configs list) to ``fn(embedder, *, split, data_config, settings) -> {key: value}``
with flat keys ``"<task>/<metric>"``. ``evaluate`` runs several of them with one embedding cache, so a text shared by
two evaluators is embedded once; the trainer calls it mid-run on the validation split, ``launch/evaluate.py`` on the
test split, where every figure also gets a bootstrap 95% interval (``<key>/ci95_low``, ``<key>/ci95_high``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from postembed_jax.data import pipeline
from postembed_jax.evaluation import examples, metrics, zero_shot
from postembed_jax.evaluation.bootstrap import bootstrap_ci


class TextEmbedder(Protocol):
  """What an evaluator needs: our Embedder, the baselines, or anything with these three members."""

  name: str
  dim: int

  def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How much data each evaluator reads and whether test figures get intervals."""

  max_examples: int | None = 500  # per task and split; None reads all
  probe_train_examples: int = 2000  # training posts the k-NN / linear probes are fitted on
  retrieval_ks: tuple[int, ...] = (1, 10)
  knn_k: int = 10
  bootstrap_resamples: int = 1000
  confidence_intervals: bool | None = None  # None: on the test split only
  seed: int = 0

  def wants_ci(self, split: str) -> bool:
    return split == "test" if self.confidence_intervals is None else self.confidence_intervals

  @classmethod
  def from_config(cls, config: Mapping) -> "EvalSettings":
    """Fields of ``config`` (e.g. a ConfigDict's ``evaluation`` block) that name a setting; others are ignored."""
    values = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    if "retrieval_ks" in values:
      ks = values["retrieval_ks"]
      values["retrieval_ks"] = tuple(int(k) for k in (ks.split(",") if isinstance(ks, str) else ks))
    return cls(**values)


class CachedEmbedder:
  """Embeds each distinct text once per evaluation run, whatever evaluator asks for it."""

  def __init__(self, embedder: TextEmbedder):
    self.embedder = embedder
    self.name, self.dim = embedder.name, embedder.dim
    self._cache: dict[str, np.ndarray] = {}

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
    if missing:
      self._cache.update(zip(missing, np.asarray(self.embedder.embed(missing), np.float32)))
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    return np.stack([self._cache[t] for t in texts])


def _point_and_interval(out: dict[str, float], key: str, statistic: Callable[..., float], *arrays: np.ndarray,
                        settings: EvalSettings, ci: bool, strata: np.ndarray | None = None,
                        bayesian: bool = False) -> None:
  out[key] = statistic(*arrays)
  if ci:
    out[f"{key}/ci95_low"], out[f"{key}/ci95_high"] = bootstrap_ci(
        statistic, *arrays, n_resamples=settings.bootstrap_resamples, seed=settings.seed, strata=strata,
        bayesian=bayesian)


# ---------------------------------------------------------------------------------------------------------------
# Scoring of one task's examples (pure: examples in, metrics out).
# ---------------------------------------------------------------------------------------------------------------

def score_pairs(embedder: TextEmbedder, pairs: examples.Pairs, *, settings: EvalSettings = EvalSettings(),
                ci: bool = False) -> dict[str, float]:
  """Pair AUC of the cosine similarity of the two sides (the paper's metric)."""
  if len(np.unique(pairs.labels)) < 2:
    raise ValueError("pair AUC needs positive and negative pairs; got one class only.")
  similarity = metrics.cosine_similarity_rows(embedder.embed(pairs.left), embedder.embed(pairs.right))
  out: dict[str, float] = {}
  _point_and_interval(out, "pair_auc", metrics.pair_auc, pairs.labels, similarity, settings=settings, ci=ci,
                      strata=pairs.labels)
  return out


def score_retrieval(embedder: TextEmbedder, pairs: examples.Pairs, *, settings: EvalSettings = EvalSettings(),
                    ci: bool = False) -> dict[str, float]:
  """Each distinct left text of a positive pair queries all distinct right texts (negatives' rights included)."""
  query_texts = list(dict.fromkeys(l for l, y in zip(pairs.left, pairs.labels) if y > 0))
  doc_texts = list(dict.fromkeys(pairs.right))
  query_index = {t: i for i, t in enumerate(query_texts)}
  doc_index = {t: i for i, t in enumerate(doc_texts)}
  relevance = np.zeros((len(query_texts), len(doc_texts)), np.int32)
  for left, right, label in zip(pairs.left, pairs.right, pairs.labels):
    if label > 0:
      relevance[query_index[left], doc_index[right]] = 1
  scores = metrics.cosine_similarity_matrix(embedder.embed(query_texts), embedder.embed(doc_texts))
  per_query = {f"recall@{k}": metrics.recall_at_k(relevance, scores, k) for k in settings.retrieval_ks}
  per_query["mrr"] = metrics.reciprocal_rank(relevance, scores)
  per_query["ndcg@10"] = metrics.ndcg_at_k(relevance, scores, 10)
  out: dict[str, float] = {}
  for key, values in per_query.items():
    _point_and_interval(out, key, lambda v: float(np.mean(v)), values, settings=settings, ci=ci)
  return out


def score_labels(embedder: TextEmbedder, train: examples.Labelled, test: examples.Labelled, *,
                 probes: Sequence[str] = zero_shot.PROBES, settings: EvalSettings = EvalSettings(),
                 ci: bool = False) -> dict[str, float]:
  """Probes fitted on ``train`` embeddings, scored on ``test``: keys ``<probe>_<metric>``: accuracy (multi-class),
  macro-F1 of the predictions and mAP of the label scores."""
  train_x, test_x = embedder.embed(train.texts), embedder.embed(test.texts)
  num_labels = len(test.label_names)
  truth = zero_shot.label_matrix(test.labels if test.multilabel else [[y] for y in test.labels], num_labels)
  out: dict[str, float] = {}
  for probe in probes:
    fitted = zero_shot.fit_probe(probe, train_x, train.labels, num_labels=num_labels, multilabel=test.multilabel,
                                 knn_k=settings.knn_k)
    predicted = fitted.predict(test_x)
    if test.multilabel:
      _point_and_interval(out, f"{probe}_macro_f1", metrics.macro_f1, truth, predicted, settings=settings, ci=ci)
    else:
      test_y = np.asarray(test.labels)
      _point_and_interval(out, f"{probe}_accuracy", metrics.accuracy, test_y, predicted, settings=settings, ci=ci)
      _point_and_interval(out, f"{probe}_macro_f1", metrics.macro_f1, test_y, predicted, settings=settings, ci=ci)
    _point_and_interval(out, f"{probe}_map", metrics.mean_average_precision, truth, fitted.scores(test_x),
                        settings=settings, ci=ci, bayesian=True)
  return out


# ---------------------------------------------------------------------------------------------------------------
# The registry: each entry reads its tasks' fixed examples and prefixes keys with the task name.
# ---------------------------------------------------------------------------------------------------------------

EvaluatorFn = Callable[..., dict[str, float]]
EVALUATORS: dict[str, EvaluatorFn] = {}


def register(name: str) -> Callable[[EvaluatorFn], EvaluatorFn]:
  def add(fn: EvaluatorFn) -> EvaluatorFn:
    if name in EVALUATORS:
      raise ValueError(f"Evaluator {name!r} is registered twice.")
    EVALUATORS[name] = fn
    return fn
  return add


def _prefixed(task: str, scores: Mapping[str, float]) -> dict[str, float]:
  return {f"{task}/{k}": v for k, v in scores.items()}


def _score_pair_tasks(score, embedder, *, split, data_config, settings: EvalSettings, only=None) -> dict:
  out = {}
  for task in examples.configured_tasks(data_config, kind="pair"):
    if only is None or task in only:
      pairs = examples.pairs(task, split, data_config, limit=settings.max_examples)
      if pairs.scorable:
        out |= _prefixed(task, score(embedder, pairs, settings=settings, ci=settings.wants_ci(split)))
  return out


@register("pair_auc")
def pair_auc_evaluator(embedder, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  """Pair AUC on every trained pair task."""
  return _score_pair_tasks(score_pairs, embedder, split=split, data_config=data_config, settings=settings)


@register("retrieval")
def retrieval_evaluator(embedder, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  """recall@k, MRR and nDCG@10 on the trained retrieval tasks (search, storyline, translation)."""
  return _score_pair_tasks(score_retrieval, embedder, split=split, data_config=data_config, settings=settings,
                           only=examples.RETRIEVAL_TASKS)


@register("classification")
def classification_evaluator(embedder, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  """Linear probe on the label tasks (section: multi-class, debtags: multi-label), fitted on training posts."""
  out = {}
  for task in examples.configured_tasks(data_config, kind="classification"):
    train = examples.labelled(task, "train", data_config, limit=settings.probe_train_examples)
    test = examples.labelled(task, split, data_config, limit=settings.max_examples)
    if train.scorable and test.scorable:
      out |= _prefixed(task, score_labels(embedder, train, test, probes=("linear",), settings=settings,
                                        ci=settings.wants_ci(split)))
  return out


@register("zero_shot")
def zero_shot_evaluator(embedder, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  """Held-out tasks never trained on: k-NN and linear probes for label tasks; cosine pair AUC (and retrieval
  metrics where the task is a retrieval one) for pair tasks."""
  out = {}
  ci = settings.wants_ci(split)
  for task in examples.held_out_tasks():
    if examples.task_kind(task) == "pair":
      pairs = examples.pairs(task, split, data_config, limit=settings.max_examples)
      if pairs.scorable:
        out |= _prefixed(task, score_pairs(embedder, pairs, settings=settings, ci=ci))
        if task in examples.RETRIEVAL_TASKS:
          out |= _prefixed(task, score_retrieval(embedder, pairs, settings=settings, ci=ci))
    else:
      train = examples.labelled(task, "train", data_config, limit=settings.probe_train_examples)
      test = examples.labelled(task, split, data_config, limit=settings.max_examples)
      if train.scorable and test.scorable:
        out |= _prefixed(task, score_labels(embedder, train, test, settings=settings, ci=ci))
  return out


def check_names(names: Sequence[str]) -> list[str]:
  """``names`` as a list (a comma string is split), failing on an unknown one with the valid names."""
  names = [n.strip() for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f"Unknown evaluator(s) {unknown}; valid evaluators: {sorted(EVALUATORS)}.")
  return names


def evaluate(embedder: TextEmbedder, names: Sequence[str] | str, *, split: str, data_config,
             settings: EvalSettings | None = None) -> dict[str, float]:
  """Runs the named evaluators on ``split`` and merges their flat ``{"<task>/<metric>": value}`` results.

  ``data_config`` is the data package's config (``pipeline.default_data_config()`` fields): where the corpus is,
  and ``tasks``, the pair and classification tasks to score (held-out tasks are always the zero-shot ones)."""
  names = check_names(names)
  data_config = pipeline.default_data_config() if data_config is None else data_config
  settings = settings or EvalSettings()
  cached = CachedEmbedder(embedder)
  out: dict[str, float] = {}
  for name in names:
    out |= EVALUATORS[name](cached, split=split, data_config=data_config, settings=settings)
  return out
