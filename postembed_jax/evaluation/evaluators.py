"""Evaluators by name: each scores any text embedder on the fixed evaluation data of the tasks it applies to.

``EVALUATORS`` maps a name (what configs list) to ``fn(embedder, *, split, data_config, settings) -> {key: value}``
with flat keys ``"<task>/<metric>"``. ``evaluate`` runs several of them with one embedding cache, so a text shared by
two evaluators is embedded once; the trainer calls it mid-run on the validation split, ``launch/evaluate.py`` on the
test split, where every figure also gets a bootstrap 95% interval (``<key>/ci95_low``, ``<key>/ci95_high``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from postembed_jax.data import config as data_config_lib
from postembed_jax.data.lists import as_list
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
  def from_config(cls, config: Mapping) -> EvalSettings:
    """Fields of ``config`` (e.g. a ConfigDict's ``evaluation`` block) that name a setting; others are ignored."""
    values = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    if "retrieval_ks" in values:
      ks = values["retrieval_ks"]
      values["retrieval_ks"] = tuple(int(k) for k in as_list(ks))
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


def _point_and_interval(
  out: dict[str, float],
  key: str,
  statistic: Callable[..., float],
  *arrays: np.ndarray,
  settings: EvalSettings,
  ci: bool,
  strata: np.ndarray | None = None,
  bayesian: bool = False,
) -> None:
  out[key] = statistic(*arrays)
  if ci:
    out[f"{key}/ci95_low"], out[f"{key}/ci95_high"] = bootstrap_ci(
      statistic, *arrays, n_resamples=settings.bootstrap_resamples, seed=settings.seed, strata=strata, bayesian=bayesian
    )


# ---------------------------------------------------------------------------------------------------------------
# Scoring of one task's examples (pure: examples in, metrics out).
# ---------------------------------------------------------------------------------------------------------------


def score_pairs(
  embedder: TextEmbedder, pairs: examples.Pairs, *, settings: EvalSettings = EvalSettings(), ci: bool = False
) -> dict[str, float]:
  """Pair AUC of the cosine similarity of the two sides (the paper's metric)."""
  if len(np.unique(pairs.labels)) < 2:
    raise ValueError("pair AUC needs positive and negative pairs; got one class only.")
  similarity = metrics.cosine_similarity_rows(embedder.embed(pairs.left), embedder.embed(pairs.right))
  out: dict[str, float] = {}
  _point_and_interval(
    out, "pair_auc", metrics.pair_auc, pairs.labels, similarity, settings=settings, ci=ci, strata=pairs.labels
  )
  return out


def score_triplets(
  embedder: TextEmbedder, triplets: examples.Triplets, *, settings: EvalSettings = EvalSettings(), ci: bool = False
) -> dict[str, float]:
  """Triplet accuracy (the paper's offline metric): how often the positive is closer to the anchor than the
  negative; a tie counts half, so an embedding that knows nothing scores 0.5."""
  anchor = embedder.embed(triplets.anchor)
  margin = metrics.cosine_similarity_rows(anchor, embedder.embed(triplets.positive)) - metrics.cosine_similarity_rows(
    anchor, embedder.embed(triplets.negative)
  )
  out: dict[str, float] = {}
  _point_and_interval(out, "triplet_accuracy", metrics.triplet_accuracy, margin, settings=settings, ci=ci)
  return out


def score_retrieval(
  embedder: TextEmbedder, retrieval: examples.Retrieval, *, settings: EvalSettings = EvalSettings(), ci: bool = False
) -> dict[str, float]:
  """recall@k, MRR and nDCG@10 of each query against the whole pool of documents. A document with the query's own
  text is never ranked (storyline's pool holds the query post itself)."""
  scores = metrics.cosine_similarity_matrix(embedder.embed(retrieval.queries), embedder.embed(retrieval.docs))
  doc_index = {t: i for i, t in enumerate(retrieval.docs)}
  for q, text in enumerate(retrieval.queries):
    if text in doc_index:
      scores[q, doc_index[text]] = -3.0  # below any cosine: ranked last
  per_query = {f"recall@{k}": metrics.recall_at_k(retrieval.relevance, scores, k) for k in settings.retrieval_ks}
  per_query["mrr"] = metrics.reciprocal_rank(retrieval.relevance, scores)
  per_query["ndcg@10"] = metrics.ndcg_at_k(retrieval.relevance, scores, 10)
  out: dict[str, float] = {}
  for key, values in per_query.items():
    _point_and_interval(out, key, lambda v: float(np.mean(v)), values, settings=settings, ci=ci)
  return out


def score_labels(
  embedder: TextEmbedder,
  train: examples.Labelled,
  test: examples.Labelled,
  *,
  probes: Sequence[str] = zero_shot.PROBES,
  settings: EvalSettings = EvalSettings(),
  ci: bool = False,
) -> dict[str, float]:
  """Probes fitted on ``train`` embeddings, scored on ``test``: keys ``<probe>_<metric>``: accuracy (multi-class),
  macro-F1 of the predictions and mAP of the label scores."""
  train_x, test_x = embedder.embed(train.texts), embedder.embed(test.texts)
  num_labels = len(test.label_names)
  truth = zero_shot.label_matrix(test.labels if test.multilabel else [[y] for y in test.labels], num_labels)
  out: dict[str, float] = {}
  for probe in probes:
    fitted = zero_shot.fit_probe(
      probe, train_x, train.labels, num_labels=num_labels, multilabel=test.multilabel, knn_k=settings.knn_k
    )
    predicted = fitted.predict(test_x)
    if test.multilabel:
      _point_and_interval(out, f"{probe}_macro_f1", metrics.macro_f1, truth, predicted, settings=settings, ci=ci)
    else:
      test_y = np.asarray(test.labels)
      _point_and_interval(out, f"{probe}_accuracy", metrics.accuracy, test_y, predicted, settings=settings, ci=ci)
      _point_and_interval(out, f"{probe}_macro_f1", metrics.macro_f1, test_y, predicted, settings=settings, ci=ci)
    _point_and_interval(
      out,
      f"{probe}_map",
      metrics.mean_average_precision,
      truth,
      fitted.scores(test_x),
      settings=settings,
      ci=ci,
      bayesian=True,
    )
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


def _prefixed(task: str, scores: Mapping[str, float], suffix: str = "") -> dict[str, float]:
  """``{"<task>/<metric><suffix>[/ci95_low|/ci95_high]": value}``."""
  out = {}
  for key, value in scores.items():
    metric, sep, bound = key.partition("/")
    out[f"{task}/{metric}{suffix}{sep}{bound}"] = value
  return out


def _score_pair_tasks(
  score,
  embedder,
  *,
  split,
  data_config,
  settings: EvalSettings,
  only=None,
  hard_negatives: bool = False,
  with_triplets: bool = False,
) -> dict:
  out = {}
  ci, suffix = settings.wants_ci(split), "_hard" if hard_negatives else ""
  for task in examples.configured_tasks(data_config, kind="pair"):
    if only is not None and task not in only:
      continue
    if hard_negatives and not examples.samples_negatives(task, data_config):
      continue  # a pair file's negatives are its own: nothing harder to sample
    pairs = examples.pairs(task, split, data_config, limit=settings.max_examples, hard_negatives=hard_negatives)
    if pairs.scorable:
      out |= _prefixed(task, score(embedder, pairs, settings=settings, ci=ci), suffix)
    if with_triplets:
      triplets = examples.triplets(task, split, data_config, limit=settings.max_examples, hard_negatives=hard_negatives)
      if triplets.scorable:
        out |= _prefixed(task, score_triplets(embedder, triplets, settings=settings, ci=ci), suffix)
  return out


@register("pair_auc")
def pair_auc_evaluator(embedder, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  """Pair AUC and triplet accuracy on every trained pair task, one random negative per positive."""
  return _score_pair_tasks(
    score_pairs, embedder, split=split, data_config=data_config, settings=settings, with_triplets=True
  )


@register("hard_negatives")
def hard_negatives_evaluator(embedder, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  """Pair AUC and triplet accuracy with one hard negative per positive (same facet, a related section, or a post
  of the same section): ``<task>/pair_auc_hard``, ``<task>/triplet_accuracy_hard``; random negatives leave little
  room on the text-to-text tasks. Pair files are skipped: their negatives are the file's own rows."""
  return _score_pair_tasks(
    score_pairs,
    embedder,
    split=split,
    data_config=data_config,
    settings=settings,
    hard_negatives=True,
    with_triplets=True,
  )


def _score_retrieval_tasks(embedder, tasks, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  out = {}
  for task in tasks:
    retrieval = examples.retrieval(task, split, data_config, limit=settings.max_examples)
    if retrieval.scorable:
      out |= _prefixed(task, score_retrieval(embedder, retrieval, settings=settings, ci=settings.wants_ci(split)))
  return out


@register("retrieval")
def retrieval_evaluator(embedder, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  """recall@k, MRR and nDCG@10 on the trained text-to-text tasks (search, storyline, translation): each query
  against every post of the split; and on every pair file: each left text against all right texts of its split."""
  pair_tasks = examples.configured_tasks(data_config, kind="pair")
  tasks = [t for t in pair_tasks if examples.is_retrieval_task(t, data_config)]
  return _score_retrieval_tasks(embedder, tasks, split=split, data_config=data_config, settings=settings)


@register("classification")
def classification_evaluator(embedder, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  """Linear probe on the label tasks (section: multi-class, debtags and labelled-post files with label lists:
  multi-label), fitted on training posts."""
  out = {}
  for task in examples.configured_tasks(data_config, kind="classification"):
    train = examples.labelled(task, "train", data_config, limit=settings.probe_train_examples)
    test = examples.labelled(task, split, data_config, limit=settings.max_examples)
    if train.scorable and test.scorable:
      out |= _prefixed(
        task, score_labels(embedder, train, test, probes=("linear",), settings=settings, ci=settings.wants_ci(split))
      )
  return out


@register("zero_shot")
def zero_shot_evaluator(embedder, *, split, data_config, settings: EvalSettings) -> dict[str, float]:
  """Held-out tasks never trained on: k-NN and linear probes for label tasks; cosine pair AUC (and retrieval
  metrics where the task is a retrieval one) for pair tasks."""
  out = {}
  ci = settings.wants_ci(split)
  for task in examples.held_out_tasks(data_config):
    if examples.task_kind(task, data_config) == "pair":
      pairs = examples.pairs(task, split, data_config, limit=settings.max_examples)
      if pairs.scorable:
        out |= _prefixed(task, score_pairs(embedder, pairs, settings=settings, ci=ci))
      if task in examples.RETRIEVAL_TASKS:
        out |= _score_retrieval_tasks(embedder, [task], split=split, data_config=data_config, settings=settings)
    else:
      train = examples.labelled(task, "train", data_config, limit=settings.probe_train_examples)
      test = examples.labelled(task, split, data_config, limit=settings.max_examples)
      if train.scorable and test.scorable:
        out |= _prefixed(task, score_labels(embedder, train, test, settings=settings, ci=ci))
  return out


def check_names(names: Sequence[str]) -> list[str]:
  """``names`` as a list (a comma string is split), failing on an unknown one with the valid names."""
  names = as_list(names)
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f"Unknown evaluator(s) {unknown}; valid evaluators: {sorted(EVALUATORS)}.")
  return names


def evaluate(
  embedder: TextEmbedder, names: Sequence[str] | str, *, split: str, data_config, settings: EvalSettings | None = None
) -> dict[str, float]:
  """Runs the named evaluators on ``split`` and merges their flat ``{"<task>/<metric>": value}`` results.

  ``data_config`` is the data package's config (``data.config.default_data_config()`` fields): where the corpus is,
  and ``tasks``, the pair and classification tasks to score (held-out tasks are always the zero-shot ones)."""
  names = check_names(names)
  data_config = data_config_lib.default_data_config() if data_config is None else data_config
  settings = settings or EvalSettings()
  cached = CachedEmbedder(embedder)
  out: dict[str, float] = {}
  for name in names:
    out |= EVALUATORS[name](cached, split=split, data_config=data_config, settings=settings)
  return out
