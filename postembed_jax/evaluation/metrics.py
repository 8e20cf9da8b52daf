"""Metric functions on plain arrays, so every evaluator and the bootstrap share one definition of each number.

Scores come from scikit-learn wherever it has the metric. Retrieval metrics are per query (arrays of length Q), so
a confidence interval can resample queries; scikit-learn's ranking metrics average over queries, so the per-query
recall@k and reciprocal rank are read off the rank of the relevant documents (their textbook definitions). Average
precision is scikit-learn's definition vectorised over labels (for the bootstrap's sake) and tested against it.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm


def cosine_similarity_rows(left: np.ndarray, right: np.ndarray) -> np.ndarray:
  """Cosine similarity of row i of ``left`` with row i of ``right`` (0 for a zero vector)."""
  num = np.sum(left * right, axis=1)
  den = np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1)
  return np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)


def cosine_similarity_matrix(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
  """[Q, D] cosine similarities."""
  return skm.pairwise.cosine_similarity(queries, docs)


def pair_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """ROC AUC of a pair score against binary labels: the paper's per-task metric."""
  return float(skm.roc_auc_score(labels, scores))


def triplet_accuracy(margins: np.ndarray) -> float:
  """Share of triplets whose positive is closer than their negative (margin > 0); a tie counts half."""
  margins = np.asarray(margins)
  return float(np.mean((margins > 0) + 0.5 * (margins == 0)))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  return float(skm.accuracy_score(y_true, y_pred))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Macro-averaged F1 over the labels present in ``y_true`` or ``y_pred`` (class or indicator arrays)."""
  return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))


def average_precision_per_label(
  y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
  """Per column of [N, L] arrays, scikit-learn's average precision (step-wise, tied scores one threshold, optional
  row weights as its ``sample_weight``), computed for all columns at once: the bootstrap of mAP over hundreds of
  debtags calls this a thousand times, where ``average_precision_score`` column by column took minutes. Equality
  with scikit-learn is tested. nan where a column has no positive."""
  order = np.argsort(-scores, axis=0, kind="stable")
  sorted_scores = np.take_along_axis(scores, order, axis=0)
  row_weights = np.ones(len(scores)) if weights is None else np.asarray(weights, np.float64)
  sorted_weights = row_weights[order]
  hits = np.take_along_axis(np.asarray(y_true) > 0, order, axis=0) * sorted_weights
  true_positives = np.cumsum(hits, axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = true_positives / np.cumsum(sorted_weights, axis=0)
  threshold_end = np.ones(sorted_scores.shape, bool)  # last row of each group of tied scores
  threshold_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
  at_thresholds = np.where(threshold_end, true_positives, 0.0)
  previous = np.zeros_like(true_positives)
  previous[1:] = np.maximum.accumulate(at_thresholds, axis=0)[:-1]
  gained = np.where(threshold_end & (true_positives > previous), (true_positives - previous) * precision, 0.0)
  with np.errstate(invalid="ignore", divide="ignore"):
    return gained.sum(axis=0) / true_positives[-1]


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
  """mAP over labels (columns of a [N, L] indicator matrix) that have at least one positive."""
  has_positive = np.asarray(y_true).any(axis=0)
  if not has_positive.any():
    raise ValueError("mean_average_precision needs at least one positive label.")
  return float(np.mean(average_precision_per_label(y_true[:, has_positive], scores[:, has_positive], weights)))


def relevant_ranks(relevance: np.ndarray, scores: np.ndarray) -> list[np.ndarray]:
  """Per query, the 1-based ranks of its relevant documents under ``scores``. A tie counts against the model
  (rank = number of documents scoring at least as high), so a collapsed embedding cannot score by luck."""
  ranks = rankdata(-scores, method="max", axis=1)
  return [ranks[q][relevance[q] > 0] for q in range(relevance.shape[0])]


def recall_at_k(relevance: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
  """Per query: the fraction of its relevant documents ranked in the top ``k``."""
  return np.array([np.mean(r <= k) for r in relevant_ranks(relevance, scores)])


def reciprocal_rank(relevance: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """Per query: 1 / rank of its best-ranked relevant document (MRR is the mean)."""
  return np.array([1.0 / r.min() for r in relevant_ranks(relevance, scores)])


def ndcg_at_k(relevance: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
  """Per query: scikit-learn's nDCG@k (tied documents share their gains, its default)."""
  return np.array([skm.ndcg_score(relevance[q : q + 1], scores[q : q + 1], k=k) for q in range(relevance.shape[0])])
