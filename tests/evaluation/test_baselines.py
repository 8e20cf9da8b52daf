import numpy as np
import pytest

from postembed_jax.evaluation.baselines import (
  PcaEmbedder,
  RandomProjectionEmbedder,
  TfidfEmbedder,
  TruncatedEmbedder,
  parse_dim_name,
  parse_pca_name,
)

CORPUS = [
  "an image viewer for the desktop",
  "a viewer of raster image files",
  "python bindings for the library",
  "library for python programs",
  "a text editor for programmers",
  "the editor of text files",
] * 2


def test_tfidf_shares_vocabulary_similarity():
  tfidf = TfidfEmbedder(CORPUS)
  vectors = tfidf.embed(["image viewer", "python library", "image viewer"])
  assert vectors.shape == (3, tfidf.dim) and vectors.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
  assert vectors[0] @ vectors[2] > 0.99 and vectors[0] @ vectors[1] < 0.01


def test_random_projection_has_requested_width_and_roughly_keeps_cosines():
  projection = RandomProjectionEmbedder(CORPUS, dim=256, seed=0)
  texts = ["an image viewer", "raster image viewer", "python library"]
  tfidf, projected = projection.tfidf.embed(texts), projection.embed(texts)
  assert projected.shape == (3, 256) and projection.dim == 256
  np.testing.assert_allclose(projected @ projected.T, tfidf @ tfidf.T, atol=0.2)  # Johnson-Lindenstrauss
  np.testing.assert_array_equal(projected, RandomProjectionEmbedder(CORPUS, dim=256, seed=0).embed(texts))


class _FixedEmbedder:
  """Rows of a fixed random matrix per text, so the PCA reduction can be checked against scikit-learn."""

  name, dim = "fixed", 12

  def __init__(self, texts):
    rng = np.random.default_rng(0)
    scales = np.linspace(3.0, 0.1, self.dim)  # distinct variances: well-defined components
    self.table = {t: rng.normal(size=self.dim) * scales for t in texts}

  def embed(self, texts):
    return np.stack([self.table[t] for t in texts]).astype(np.float32)


def test_pca_baseline_equals_sklearn_pca_then_normalisation():
  from sklearn.decomposition import PCA

  texts = [f"post {i}" for i in range(80)]
  base = _FixedEmbedder(texts)
  reduced = PcaEmbedder(base, texts[:60], dim=4)
  expected = PCA(n_components=4, svd_solver="full").fit(base.embed(texts[:60])).transform(base.embed(texts[60:]))
  expected /= np.linalg.norm(expected, axis=1, keepdims=True)
  got = reduced.embed(texts[60:])
  assert got.shape == (20, 4) and reduced.name == "pca4:fixed"
  np.testing.assert_allclose(got, expected, atol=1e-5)
  assert parse_pca_name("pca50:all-MiniLM-L6-v2") == (50, "all-MiniLM-L6-v2") and parse_pca_name("tfidf") is None


def test_pca_needs_more_vectors_than_dimensions():
  texts = [f"post {i}" for i in range(5)]
  with pytest.raises(ValueError, match="PCA to 8 dimensions needs more than 8 vectors"):
    PcaEmbedder(_FixedEmbedder(texts), texts, dim=8)


def test_truncated_embedder_keeps_the_renormalised_prefix():
  texts = [f"post {i}" for i in range(5)]
  base = _FixedEmbedder(texts)
  truncated = TruncatedEmbedder(base, dim=4)
  got = truncated.embed(texts)
  prefix = base.embed(texts)[:, :4]
  assert got.shape == (5, 4) and got.dtype == np.float32 and truncated.dim == 4 and truncated.name == "dim4:fixed"
  np.testing.assert_allclose(got, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), rtol=1e-5)
  assert TruncatedEmbedder(base, dim=12).embed(texts[:1]).shape == (1, 12)  # the full width is allowed
  assert parse_dim_name("dim32:workdirs/mtl") == (32, "workdirs/mtl")
  assert parse_dim_name("dim50:all-MiniLM-L6-v2") == (50, "all-MiniLM-L6-v2")
  assert parse_dim_name("pca50:all-MiniLM-L6-v2") is None and parse_dim_name("dimx:model") is None
  with pytest.raises(ValueError, match="dim16:fixed: cannot keep the first 16 of fixed's 12 dimensions"):
    TruncatedEmbedder(base, dim=16)
