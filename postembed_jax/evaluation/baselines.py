"""Cheap embedding baselines with the Embedder interface (``embed(texts)``, ``dim``, ``name``).

TF-IDF is the lexical baseline any learned embedding must beat; the random projection squeezes the same TF-IDF
vectors into as many dimensions as our fine-tuned model has (Johnson-Lindenstrauss), so a small learned embedding is
compared with a small unlearned one. ``pca<dim>:<model>`` is a frozen model reduced to ``dim`` dimensions by PCA: a
50-d embedding must beat the base model at equal width, not only at its full width. All are fitted on training
texts only. ``dim<d>:<model>`` keeps a model's first ``d`` dimensions (renormalised): the widths of one Matryoshka
export.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize
from sklearn.random_projection import GaussianRandomProjection

from postembed_jax.models.pca import fit_pca
from postembed_jax.serving import vectors


class TfidfEmbedder:
  """L2-normalised TF-IDF vectors (sublinear term frequency, unigrams and bigrams) as dense float32 rows."""

  def __init__(self, corpus: Sequence[str], *, max_features: int = 4096, name: str = "tfidf"):
    self.vectorizer = TfidfVectorizer(
      sublinear_tf=True, ngram_range=(1, 2), max_features=max_features, min_df=2, dtype=np.float32
    ).fit(corpus)
    self.dim = len(self.vectorizer.vocabulary_)
    self.name = name

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    return self.vectorizer.transform(list(texts)).toarray()


class RandomProjectionEmbedder:
  """TF-IDF vectors times a fixed Gaussian random matrix, L2-normalised: a ``dim``-wide embedding with no learning."""

  def __init__(
    self,
    corpus: Sequence[str],
    *,
    dim: int = 50,
    seed: int = 0,
    max_features: int = 4096,
    name: str = "random_projection",
  ):
    self.tfidf = TfidfEmbedder(corpus, max_features=max_features)
    self.projection = GaussianRandomProjection(n_components=dim, random_state=seed).fit(
      np.zeros((1, self.tfidf.dim), np.float32)
    )
    self.dim = dim
    self.name = name

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    return normalize(self.projection.transform(self.tfidf.embed(texts))).astype(np.float32)


class PcaEmbedder:
  """A frozen embedder's vectors projected onto the top ``dim`` principal components of its embeddings of
  ``corpus``, L2-normalised (cosine is what every evaluator compares)."""

  def __init__(self, base, corpus: Sequence[str], *, dim: int = 50, name: str | None = None):
    self.base = base
    self.projection = fit_pca(base.embed(list(corpus)), dim)
    self.dim = dim
    self.name = name or f"pca{dim}:{base.name}"

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    return normalize(self.projection(self.base.embed(texts))).astype(np.float32)


PCA_NAME = re.compile(r"^pca(\d+):(.+)$")


def parse_pca_name(name: str) -> tuple[int, str] | None:
  """``"pca50:all-MiniLM-L6-v2"`` -> ``(50, "all-MiniLM-L6-v2")``; None for any other name."""
  match = PCA_NAME.match(name)
  return (int(match.group(1)), match.group(2)) if match else None


class TruncatedEmbedder:
  """Another embedder's first ``dim`` dimensions, L2-renormalised: a Matryoshka export
  (``config.matryoshka_dims``) evaluated at a smaller width from the same vectors, with nothing fitted."""

  def __init__(self, base, *, dim: int, name: str | None = None):
    self.name = name or f"dim{dim}:{base.name}"
    if not 0 < dim <= base.dim:
      raise ValueError(f"{self.name}: cannot keep the first {dim} of {base.name}'s {base.dim} dimensions.")
    self.base = base
    self.dim = dim

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    return vectors.truncate(self.base.embed(texts), self.dim)


DIM_NAME = re.compile(r"^dim(\d+):(.+)$")


def parse_dim_name(name: str) -> tuple[int, str] | None:
  """``"dim32:workdirs/mtl"`` -> ``(32, "workdirs/mtl")``; None for any other name."""
  match = DIM_NAME.match(name)
  return (int(match.group(1)), match.group(2)) if match else None


# name -> constructor(training_texts, config) for `launch/evaluate.py --config.models=tfidf,...`.
BASELINES: dict[str, Callable] = {
  "tfidf": lambda corpus, config: TfidfEmbedder(corpus, max_features=config.tfidf_max_features),
  "random_projection": lambda corpus, config: RandomProjectionEmbedder(
    corpus, dim=config.random_projection_dim, seed=config.seed, max_features=config.tfidf_max_features
  ),
}
