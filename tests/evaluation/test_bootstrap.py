import numpy as np
import pytest

from postembed_jax.evaluation import metrics
from postembed_jax.evaluation.bootstrap import bootstrap_ci


def _noisy_pairs(n, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, size=n)
  return labels, labels + rng.normal(scale=1.0, size=n)


def test_interval_contains_point_estimate_and_shrinks_with_n():
  widths = []
  for n in (100, 1600):
    labels, scores = _noisy_pairs(n)
    point = metrics.pair_auc(labels, scores)
    low, high = bootstrap_ci(metrics.pair_auc, labels, scores, n_resamples=300, strata=labels)
    assert low < point < high
    widths.append(high - low)
  assert widths[1] < widths[0] / 2.5  # width ~ 1/sqrt(n): 4x shrinkage expected, allow sampling noise


def test_mean_interval_matches_normal_theory():
  values = np.random.default_rng(1).normal(size=2000)
  low, high = bootstrap_ci(np.mean, values, n_resamples=1000)
  half_width = 1.96 * values.std() / np.sqrt(len(values))
  assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)


def test_stratified_resamples_keep_both_classes():
  labels = np.array([1] + [0] * 30)  # unstratified resamples would often lose the only positive
  scores = np.linspace(0, 1, 31)
  low, high = bootstrap_ci(metrics.pair_auc, labels, scores, n_resamples=200, strata=labels)
  assert 0.0 <= low <= high <= 1.0


def test_deterministic_for_a_seed_and_rejects_ragged_arrays():
  labels, scores = _noisy_pairs(200)
  first = bootstrap_ci(metrics.pair_auc, labels, scores, n_resamples=50, seed=3, strata=labels)
  assert first == bootstrap_ci(metrics.pair_auc, labels, scores, n_resamples=50, seed=3, strata=labels)
  with pytest.raises(ValueError, match="differ in length"):
    bootstrap_ci(metrics.pair_auc, labels, scores[:-1])


def test_bayesian_bootstrap_keeps_map_with_rare_labels_unbiased():
  # 100 rare labels with one positive each and no signal (low AP), 100 common ones with a strong signal (high AP).
  # Row resampling drops a rare label's only positive from ~37% of replicates, so replicates average over easier
  # labels and the whole interval lies above the estimate; Dirichlet weights keep every row and every label.
  rng = np.random.default_rng(0)
  truth = np.zeros((400, 200), int)
  for j in range(200):
    truth[rng.choice(400, size=1 if j < 100 else 20, replace=False), j] = 1
  scores = rng.random((400, 200)) + np.where(np.arange(200) < 100, 0.0, 1.0) * truth
  point = metrics.mean_average_precision(truth, scores)
  low, high = bootstrap_ci(metrics.mean_average_precision, truth, scores, n_resamples=100, bayesian=True)
  assert low < point < high
  resampled_low, _ = bootstrap_ci(metrics.mean_average_precision, truth, scores, n_resamples=100)
  assert resampled_low > point + 0.05
