import numpy as np

from postembed_jax.evaluation.baselines import RandomProjectionEmbedder, TfidfEmbedder

CORPUS = ["an image viewer for the desktop", "a viewer of raster image files", "python bindings for the library",
          "library for python programs", "a text editor for programmers", "the editor of text files"] * 2


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
