"""The simulated-member evaluation on the Debian fixture posts, with real embeddings."""

import numpy as np
import pytest

from postembed_jax.evaluation import members


def test_simulated_members_engage_with_their_tags(debian_posts):
  texts, tags = debian_posts
  sims = members.simulate_members(tags, 30, seed=3)
  assert len(sims) == 30
  for m in sims:
    assert 2 <= len(m.tags) <= 4
    assert not set(m.engaged) & set(m.held_out) and len(m.held_out) >= 1 and len(m.engaged) >= 1
    assert all(tags[i] & set(m.tags) for i in np.concatenate([m.engaged, m.held_out]))
  again = members.simulate_members(tags, 30, seed=3)
  assert all(a.tags == b.tags and np.array_equal(a.held_out, b.held_out) for a, b in zip(sims, again))
  with pytest.raises(ValueError, match="debtags have between"):
    members.simulate_members(tags[:10], 5)


def test_evaluation_on_real_embeddings(debian_posts, post_vectors):
  texts, tags = debian_posts
  sims = members.simulate_members(tags, 40, seed=0)
  report = members.evaluate_members(post_vectors, tags, sims, ks=(10, 50), cluster_counts=(1, 3))
  for metric in ("recall", "interest_precision"):
    for c in ("max_clusters=1", "max_clusters=3"):
      for k in ("@10", "@50"):
        assert 0.0 <= report[metric][c][k]["mean"] <= 1.0
    row = report[metric]["max_clusters=3"]["@50"]
    assert row["vs_mean"] == pytest.approx(row["mean"] - report[metric]["max_clusters=1"]["@50"]["mean"])
  # Real embeddings carry the interest: far above the tag base rate, and recall grows with k.
  base_rate = np.mean([np.mean([bool(t & set(m.tags)) for t in tags]) for m in sims])
  assert report["interest_precision"]["max_clusters=3"]["@10"]["mean"] > 2 * base_rate
  assert report["recall"]["max_clusters=3"]["@50"]["mean"] > report["recall"]["max_clusters=3"]["@10"]["mean"]
