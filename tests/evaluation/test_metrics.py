import numpy as np
import pytest

from postembed_jax.evaluation import metrics


def test_cosine_rows_handles_zero_vectors():
  left = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
  right = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
  np.testing.assert_allclose(metrics.cosine_similarity_rows(left, right), [1.0, 0.0, -1.0])


def test_pair_auc_perfect_reversed_and_tied():
  labels = np.array([1, 0, 1, 0])
  assert metrics.pair_auc(labels, np.array([0.9, 0.1, 0.8, 0.2])) == 1.0
  assert metrics.pair_auc(labels, np.array([0.1, 0.9, 0.2, 0.8])) == 0.0
  assert metrics.pair_auc(labels, np.zeros(4)) == 0.5


def test_hand_built_retrieval_case():
  # Query 0: relevant docs 0 and 2; ranking 2, 1, 0 -> ranks 1 and 3.
  # Query 1: relevant doc 1; ranking 0, 2, 1 -> rank 3.
  relevance = np.array([[1, 0, 1], [0, 1, 0]])
  scores = np.array([[0.1, 0.5, 0.9], [0.9, 0.1, 0.5]])
  assert [r.tolist() for r in metrics.relevant_ranks(relevance, scores)] == [[3, 1], [3]]
  np.testing.assert_allclose(metrics.recall_at_k(relevance, scores, 1), [0.5, 0.0])
  np.testing.assert_allclose(metrics.recall_at_k(relevance, scores, 3), [1.0, 1.0])
  np.testing.assert_allclose(metrics.reciprocal_rank(relevance, scores), [1.0, 1 / 3])
  # nDCG@10 of query 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3).
  np.testing.assert_allclose(
    metrics.ndcg_at_k(relevance, scores, 10), [1.5 / (1 + 1 / np.log2(3)), (1 / np.log2(4)) / 1.0]
  )


def test_ties_count_against_the_model():
  relevance = np.array([[0, 1, 0]])
  tied = np.zeros((1, 3))
  assert metrics.relevant_ranks(relevance, tied)[0].tolist() == [3]
  assert metrics.recall_at_k(relevance, tied, 2)[0] == 0.0
  assert metrics.reciprocal_rank(relevance, tied)[0] == 1 / 3


def test_classification_metrics():
  y = np.array([0, 0, 1, 2])
  assert metrics.accuracy(y, np.array([0, 0, 1, 1])) == 0.75
  # Per-class F1: class 0 = 1, class 1 = 2/3, class 2 = 0.
  assert metrics.macro_f1(y, np.array([0, 0, 1, 1])) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_map_skips_labels_without_positives():
  truth = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
  perfect = truth.astype(float) + 0.01 * np.arange(3)
  assert metrics.mean_average_precision(truth, perfect) == 1.0  # column 2 has no positive and is ignored
  with pytest.raises(ValueError, match="at least one positive"):
    metrics.mean_average_precision(np.zeros((2, 2)), np.zeros((2, 2)))


def test_average_precision_per_label_equals_scikit_learn_with_ties():
  from sklearn.metrics import average_precision_score

  rng = np.random.default_rng(0)
  truth = (rng.random((300, 40)) < 0.1).astype(int)
  scores = np.round(rng.random((300, 40)) + 0.3 * truth, 1)  # rounding makes many ties
  expected = [average_precision_score(truth[:, j], scores[:, j]) for j in range(40) if truth[:, j].any()]
  got = metrics.average_precision_per_label(truth, scores)
  np.testing.assert_allclose(got[truth.any(axis=0)], expected, rtol=1e-12)
  assert metrics.mean_average_precision(truth, scores) == pytest.approx(np.mean(expected))


def test_weighted_average_precision_equals_scikit_learn_sample_weight():
  from sklearn.metrics import average_precision_score

  rng = np.random.default_rng(1)
  truth = (rng.random((200, 10)) < 0.2).astype(int)
  scores = np.round(rng.random((200, 10)) + 0.3 * truth, 1)
  weights = rng.dirichlet(np.ones(200)) * 200
  got = metrics.average_precision_per_label(truth, scores, weights)
  expected = [average_precision_score(truth[:, j], scores[:, j], sample_weight=weights) for j in range(10)]
  np.testing.assert_allclose(got, expected, rtol=1e-10)
