"""Member embeddings: a member's interests as Ward clusters of the posts they engaged with, and feed retrieval that
asks the index once per interest and merges the answers.

The mean of everything a member engaged with lies between their interests, near none of them; one centroid per
Ward cluster keeps each interest reachable. Each interest gets a share of the feed proportional to how much of the
member's engagement it holds. One cluster is exactly the mean embedding, so the baseline is ``max_clusters=1``.

How well this recovers a member's engagement is measured in postembed_jax.evaluation.members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from postembed_jax.serving.index import PostIndex


@dataclasses.dataclass(frozen=True)
class Interests:
  centroids: np.ndarray  # [clusters, dim], unit length
  sizes: np.ndarray  # engaged posts per cluster, largest first
  labels: np.ndarray  # cluster of each engaged post


@dataclasses.dataclass(frozen=True)
class Hit:
  key: int
  score: float  # cosine similarity to the centroid of ``cluster``
  cluster: int


def interest_clusters(vectors: np.ndarray, *, max_clusters: int = 5) -> Interests:
  """Ward clustering of a member's engaged post embeddings into at most ``max_clusters`` interests."""
  vectors = np.asarray(vectors, np.float32)
  if not len(vectors):
    raise ValueError("A member needs at least one engaged post with an embedding.")
  n_clusters = max(1, min(max_clusters, len(vectors)))
  labels = (
    np.zeros(len(vectors), int)
    if n_clusters == 1
    else AgglomerativeClustering(n_clusters=n_clusters, linkage="ward").fit_predict(vectors)
  )
  sizes = np.bincount(labels, minlength=n_clusters)
  order = np.argsort(-sizes, kind="stable")
  centroids = np.stack([vectors[labels == c].mean(0) for c in order])
  centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
  relabel = np.empty(n_clusters, int)
  relabel[order] = np.arange(n_clusters)
  return Interests(centroids=centroids, sizes=sizes[order], labels=relabel[labels])


def feed_shares(sizes: Sequence[int], k: int) -> np.ndarray:
  """Splits ``k`` slots in proportion to cluster sizes (largest remainder, ties to the larger cluster)."""
  sizes = np.asarray(sizes, float)
  exact = k * sizes / sizes.sum()
  shares = np.floor(exact).astype(int)
  for c in np.argsort(-(exact - shares), kind="stable")[: k - shares.sum()]:
    shares[c] += 1
  return shares


def retrieve(index: PostIndex, interests: Interests, k: int, *, exclude: Sequence[int] = ()) -> list[Hit]:
  """Up to ``k`` posts for a member, best first: each interest fills its share with its nearest posts not yet
  taken; slots an interest cannot fill go to the best remaining candidates of any interest."""
  exclude = {int(x) for x in exclude}
  per_cluster = [
    [(int(key), float(score)) for key, score in zip(*hits) if int(key) not in exclude]
    for hits in index.search(interests.centroids, k + len(exclude))
  ]
  chosen: dict[int, Hit] = {}
  for cluster, (candidates, share) in enumerate(zip(per_cluster, feed_shares(interests.sizes, k))):
    fresh = [(key, score) for key, score in candidates if key not in chosen][:share]
    chosen.update((key, Hit(key, score, cluster)) for key, score in fresh)
  leftovers = sorted(
    ((score, key, cluster) for cluster, candidates in enumerate(per_cluster) for key, score in candidates), reverse=True
  )
  for score, key, cluster in leftovers:
    if len(chosen) >= k:
      break
    chosen.setdefault(key, Hit(key, score, cluster))
  return sorted(chosen.values(), key=lambda h: -h.score)
