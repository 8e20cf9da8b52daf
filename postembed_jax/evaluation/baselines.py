"""Cheap embedding baselines with the Embedder interface (``embed(texts)``, ``dim``, ``name``).

TF-IDF is the lexical baseline any learned embedding must beat; the random projection squeezes the same TF-IDF
vectors into as many dimensions as our fine-tuned model has (Johnson-Lindenstrauss), so a small learned embedding is
compared with a small unlearned one. Both are fitted on training texts only.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize
from sklearn.random_projection import GaussianRandomProjection


class TfidfEmbedder:
  """L2-normalised TF-IDF vectors (sublinear term frequency, unigrams and bigrams) as dense float32 rows."""

  def __init__(self, corpus: Sequence[str], *, max_features: int = 4096, name: str = "tfidf"):
    self.vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), max_features=max_features,
                                      min_df=2, dtype=np.float32).fit(corpus)
    self.dim = len(self.vectorizer.vocabulary_)
    self.name = name

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    return self.vectorizer.transform(list(texts)).toarray()


class RandomProjectionEmbedder:
  """TF-IDF vectors times a fixed Gaussian random matrix, L2-normalised: a ``dim``-wide embedding with no learning."""

  def __init__(self, corpus: Sequence[str], *, dim: int = 50, seed: int = 0, max_features: int = 4096,
               name: str = "random_projection"):
    self.tfidf = TfidfEmbedder(corpus, max_features=max_features)
    self.projection = GaussianRandomProjection(n_components=dim, random_state=seed).fit(
        np.zeros((1, self.tfidf.dim), np.float32))
    self.dim = dim
    self.name = name

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    return normalize(self.projection.transform(self.tfidf.embed(texts))).astype(np.float32)


# name -> constructor(training_texts, config) for `launch/evaluate.py --config.models=tfidf,...`.
BASELINES: dict[str, Callable] = {
    "tfidf": lambda corpus, config: TfidfEmbedder(corpus, max_features=config.tfidf_max_features),
    "random_projection": lambda corpus, config: RandomProjectionEmbedder(
        corpus, dim=config.random_projection_dim, seed=config.seed, max_features=config.tfidf_max_features),
}
