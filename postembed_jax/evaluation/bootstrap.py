"""Bootstrap confidence intervals for any metric of per-example arrays.

Resampling is over examples (pairs, queries, posts), optionally within strata: AUC resamples positives and negatives
separately so every replicate still has both classes and the interval never comes from a degenerate sample.

Mean average precision over many labels is the exception: a resample loses a rare label's only positive about a
third of the time, the label drops out of the mean, and since rare labels are the hard ones the replicates come out
biased upwards (on the real debtags the whole percentile interval lay above the estimate). For such statistics
``bayesian=True`` draws Dirichlet row weights instead (Rubin's Bayesian bootstrap): every example and every label
stays present, and only the examples' weights vary.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap_ci(
  statistic: Callable[..., float],
  *arrays: np.ndarray,
  n_resamples: int = 1000,
  confidence: float = 0.95,
  seed: int = 0,
  strata: np.ndarray | None = None,
  bayesian: bool = False,
) -> tuple[float, float]:
  """(low, high) percentile interval of ``statistic(*arrays)`` over resamples of the rows of ``arrays``; with
  ``bayesian``, of ``statistic(*arrays, weights=w)`` over Dirichlet(1, ..., 1) weights scaled to sum to n."""
  n = len(arrays[0])
  if any(len(a) != n for a in arrays):
    raise ValueError(f"bootstrap_ci: arrays differ in length: {[len(a) for a in arrays]}.")
  rng = np.random.default_rng(seed)
  groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
  replicates = np.empty(n_resamples)
  for b in range(n_resamples):
    if bayesian:
      replicates[b] = statistic(*arrays, weights=rng.dirichlet(np.ones(n)) * n)
    else:
      idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
      replicates[b] = statistic(*(a[idx] for a in arrays))
  alpha = (1.0 - confidence) / 2
  low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
  return float(low), float(high)
