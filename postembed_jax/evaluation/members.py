"""Simulated members on the Debian corpus: does retrieval by Ward interest clusters recover a member's held-out
engagement better than retrieval by their mean embedding?

A member engages with posts carrying a few debtags (their interests); part of that engagement is held out, and we
measure how much of it each retrieval (postembed_jax.serving.members) recovers.

  python launch/evaluate_members.py --config configs/members.py --config.model=all-MiniLM-L6-v2
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Sequence

import numpy as np
from ml_collections import ConfigDict

from postembed_jax.data import debian
from postembed_jax.data.tasks import usable_tag
from postembed_jax.models.embedder import Embedder
from postembed_jax.serving.index import PostIndex
from postembed_jax.serving.members import interest_clusters, retrieve


@dataclasses.dataclass(frozen=True)
class SimulatedMember:
  tags: tuple[str, ...]  # the member's interests
  engaged: np.ndarray  # post indices the member is known to have engaged with
  held_out: np.ndarray  # post indices they also engaged with, hidden from retrieval


def debian_posts(records: Sequence[dict]) -> tuple[list[str], list[set[str]]]:
  """Distinct English descriptions as posts, each with the union of its packages' meaningful debtags.

  Packages sharing a description are one post, so retrieving the twin of a held-out post is not a miss.
  """
  tags_of: dict[str, set[str]] = {}
  for r in records:
    tags_of.setdefault(r["description"], set()).update(t for t in r["tags"] if usable_tag(t))
  texts = sorted(tags_of)
  return texts, [tags_of[t] for t in texts]


def simulate_members(
  post_tags: Sequence[set[str]],
  n_members: int,
  *,
  seed: int = 0,
  interests: tuple[int, int] = (2, 4),
  engagements: tuple[int, int] = (12, 40),
  holdout: float = 0.3,
  min_tag_posts: int = 5,
  max_tag_share: float = 0.05,
) -> list[SimulatedMember]:
  """Members who each engage with posts of 2-4 debtags (Dirichlet-weighted), 30% of it held out.

  Interest tags are those on at least ``min_tag_posts`` posts and at most ``max_tag_share`` of all posts: tags
  like role::program describe half the corpus and no interest.
  """
  rng = np.random.default_rng(seed)
  by_tag = collections.defaultdict(list)
  for i, tags in enumerate(post_tags):
    for t in tags:
      by_tag[t].append(i)
  cap = max(min_tag_posts, max_tag_share * len(post_tags))
  eligible = sorted(t for t, posts in by_tag.items() if min_tag_posts <= len(posts) <= cap)
  if len(eligible) < interests[1]:
    raise ValueError(
      f"Only {len(eligible)} debtags have between {min_tag_posts} and {cap:.0f} posts; "
      f"members need {interests[1]} interests."
    )
  members = []
  for _ in range(n_members):
    tags = tuple(str(t) for t in rng.choice(eligible, rng.integers(interests[0], interests[1] + 1), replace=False))
    total = rng.integers(engagements[0], engagements[1] + 1)
    counts = np.maximum(1, np.round(total * rng.dirichlet(np.ones(len(tags))))).astype(int)
    engaged = set()
    for tag, count in zip(tags, counts):
      engaged.update(rng.choice(by_tag[tag], min(count, len(by_tag[tag])), replace=False).tolist())
    engaged = rng.permutation(sorted(engaged))
    n_held = max(1, math.ceil(holdout * len(engaged)))
    members.append(SimulatedMember(tags=tags, engaged=np.sort(engaged[n_held:]), held_out=np.sort(engaged[:n_held])))
  return members


def evaluate_members(
  vectors: np.ndarray,
  post_tags: Sequence[set[str]],
  members: Sequence[SimulatedMember],
  *,
  ks: Sequence[int] = (10, 50, 100),
  cluster_counts: Sequence[int] = (1, 2, 3, 5, 8),
  exact: bool = True,
) -> dict:
  """Mean recall@k of held-out engagement, and interest precision@k (share of retrieved posts carrying one of the
  member's tags), per ``max_clusters``; 1 is the mean-embedding baseline. Also each setting's paired difference
  to the baseline with its standard error over members."""
  index = PostIndex(vectors.shape[1], exact_below=len(vectors) + 1 if exact else 0)
  index.add(np.arange(len(vectors)), vectors)
  recall = {c: {k: [] for k in ks} for c in cluster_counts}
  precision = {c: {k: [] for k in ks} for c in cluster_counts}
  for member in members:
    held_out, wanted = set(member.held_out.tolist()), set(member.tags)
    for c in cluster_counts:
      interests = interest_clusters(vectors[member.engaged], max_clusters=c)
      for k in ks:
        keys = [h.key for h in retrieve(index, interests, k, exclude=member.engaged)]
        recall[c][k].append(len(held_out.intersection(keys)) / len(held_out))
        precision[c][k].append(np.mean([bool(post_tags[key] & wanted) for key in keys]) if keys else 0.0)

  def summary(values):
    base = {k: np.asarray(values[1][k]) for k in ks} if 1 in values else None
    out = {}
    for c in cluster_counts:
      for k in ks:
        v = np.asarray(values[c][k])
        row = dict(mean=float(v.mean()))
        if base is not None and c != 1:
          diff = v - base[k]
          row.update(vs_mean=float(diff.mean()), vs_mean_stderr=float(diff.std(ddof=1) / np.sqrt(len(diff))))
        out.setdefault(f"max_clusters={c}", {})[f"@{k}"] = row
    return out

  return dict(recall=summary(recall), interest_precision=summary(precision))


def run_member_evaluation(
  model: str,
  *,
  split: str = "test",
  n_members: int = 500,
  seed: int = 0,
  max_length: int | None = None,
  max_posts: int | None = None,
  data_dir: str | None = None,
  index_dir: str | None = None,
  embedder=None,
) -> dict:
  """Loads the Debian split, embeds its posts with ``model``, simulates members and evaluates (see module doc)."""
  start = time.time()
  records = debian.load_records(split, data_dir=data_dir, config=ConfigDict(dict(index_dir=index_dir)))
  texts, post_tags = debian_posts(records)
  if max_posts and len(texts) > max_posts:
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), max_posts, replace=False))
    texts, post_tags = [texts[i] for i in keep], [post_tags[i] for i in keep]
  embedder = embedder or Embedder.from_pretrained(model, max_length=max_length)
  vectors = embedder.embed(texts, progress=True)
  members = simulate_members(post_tags, n_members, seed=seed)
  report = evaluate_members(vectors, post_tags, members)
  report.update(
    model=model,
    split=split,
    posts=len(texts),
    members=n_members,
    seed=seed,
    max_length=embedder.max_length,
    engaged_per_member=float(np.mean([len(m.engaged) for m in members])),
    held_out_per_member=float(np.mean([len(m.held_out) for m in members])),
    seconds=round(time.time() - start, 1),
  )
  return report
