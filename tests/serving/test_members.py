import numpy as np
import pytest

from postembed_jax.serving import members
from postembed_jax.serving.index import PostIndex


def _blobs(centres, per_cluster, seed=0, noise=0.05):
  """Unit vectors scattered tightly around unit ``centres``."""
  rng = np.random.default_rng(seed)
  v = np.concatenate([c + noise * rng.normal(size=(n, len(c))) for c, n in zip(centres, per_cluster)])
  return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_ward_clusters_find_the_interests_largest_first():
  centres = np.eye(8)[:3]
  vectors = _blobs(centres, [3, 7, 5])
  interests = members.interest_clusters(vectors, max_clusters=3)
  assert interests.sizes.tolist() == [7, 5, 3]
  np.testing.assert_array_equal(interests.labels, [2] * 3 + [0] * 7 + [1] * 5)
  np.testing.assert_allclose(np.linalg.norm(interests.centroids, axis=1), 1.0, atol=1e-6)
  assert np.argmax(interests.centroids @ centres.T, axis=1).tolist() == [1, 2, 0]


def test_one_cluster_is_the_mean_embedding_and_clusters_never_exceed_posts():
  vectors = _blobs(np.eye(4)[:2], [2, 2])
  mean = members.interest_clusters(vectors, max_clusters=1)
  expected = vectors.mean(0) / np.linalg.norm(vectors.mean(0))
  np.testing.assert_allclose(mean.centroids[0], expected, atol=1e-6)
  assert len(members.interest_clusters(vectors[:2], max_clusters=5).sizes) == 2
  with pytest.raises(ValueError, match="at least one engaged post"):
    members.interest_clusters(vectors[:0])


@pytest.mark.parametrize(
  "sizes,k,shares", [([7, 5, 3], 10, [5, 3, 2]), ([1, 1], 3, [2, 1]), ([9, 1], 5, [5, 0]), ([3], 4, [4])]
)
def test_feed_shares_are_proportional_and_sum_to_k(sizes, k, shares):
  assert members.feed_shares(sizes, k).tolist() == shares


def test_retrieve_gives_each_interest_its_share_and_skips_engaged_posts():
  centres = np.eye(8)[:2]
  corpus = _blobs(centres, [30, 30], seed=1)
  index = PostIndex(8)
  index.add(np.arange(60), corpus)
  engaged = [0, 1, 2, 30]  # three posts of interest A, one of B
  interests = members.interest_clusters(corpus[engaged], max_clusters=2)
  hits = members.retrieve(index, interests, 8, exclude=engaged)
  assert len(hits) == 8 and not {h.key for h in hits} & set(engaged)
  assert sum(h.key < 30 for h in hits) == 6 and sum(h.key >= 30 for h in hits) == 2  # shares 3:1
  assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
  mean_hits = members.retrieve(index, members.interest_clusters(corpus[engaged], max_clusters=1), 8, exclude=engaged)
  assert len(mean_hits) == 8


def test_retrieve_fills_slots_an_interest_cannot_fill():
  corpus = _blobs(np.eye(4)[:2], [3, 10])
  index = PostIndex(4)
  index.add(np.arange(13), corpus)
  interests = members.interest_clusters(corpus[[0, 3]], max_clusters=2)
  hits = members.retrieve(index, interests, 11, exclude=[0, 3])
  assert sorted(h.key for h in hits) == sorted(set(range(13)) - {0, 3})
