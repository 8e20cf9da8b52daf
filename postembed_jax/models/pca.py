"""PCA of a model's embeddings, as a linear map: the fair 50-d baseline for a 50-d embedding (the frozen base model
reduced by PCA), and the starting point of our projection, so that step 0 of training is that same reduction.

Both uses need the same affine map ``x -> (x - mean) @ components.T``; as a Dense layer that is
``kernel = components.T`` and ``bias = -mean @ components.T``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.decomposition import PCA


@dataclasses.dataclass(frozen=True)
class LinearMap:
  """An affine map ``x @ kernel + bias`` of ``kernel.shape[0]`` inputs to ``kernel.shape[1]`` outputs."""

  kernel: np.ndarray  # [in, out]
  bias: np.ndarray  # [out]

  def __call__(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32) @ self.kernel + self.bias


def fit_pca(vectors: np.ndarray, dim: int, *, seed: int = 0) -> LinearMap:
  """The map onto the top ``dim`` principal components of ``vectors`` [N, D] (needs N > dim and D >= dim)."""
  vectors = np.asarray(vectors, np.float64)
  n, width = vectors.shape
  if dim > width or dim >= n:
    raise ValueError(
      f"PCA to {dim} dimensions needs more than {dim} vectors of at least {dim} dimensions; got {n} vectors of {width}."
    )
  pca = PCA(n_components=dim, svd_solver="full", random_state=seed).fit(vectors)
  kernel = pca.components_.T.astype(np.float32)
  return LinearMap(kernel=kernel, bias=(-pca.mean_ @ pca.components_.T).astype(np.float32))
