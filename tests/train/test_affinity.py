import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from postembed_jax.train.affinity import lookahead_affinity, read_affinity

# Task t's loss is the squared distance of the parameters to its batch's target: closed-form affinity.
TARGETS = (np.array([1.0, 0.0]), np.array([2.0, 0.0]), np.array([-1.0, 0.0]))


def _loss(params, batch):
  return jnp.sum((params["w"] - batch) ** 2)


def _expected(theta, lr):
  before = [np.sum((theta - c) ** 2) for c in TARGETS]
  out = np.zeros((3, 3))
  for i, ci in enumerate(TARGETS):
    stepped = theta - lr * 2 * (theta - ci)
    for j, cj in enumerate(TARGETS):
      out[i, j] = 1 - np.sum((stepped - cj) ** 2) / before[j]
  return out


def test_matches_closed_form_under_jit():
  params = {"w": jnp.zeros(2)}
  fn = jax.jit(functools.partial(lookahead_affinity, (_loss,) * 3))
  got = np.asarray(fn(params, tuple(jnp.asarray(t) for t in TARGETS), 0.1))
  np.testing.assert_allclose(got, _expected(np.zeros(2), 0.1), rtol=1e-5)
  # Tasks pulling the same way help each other; opposite ones hurt.
  assert got[0, 1] > 0 and got[1, 0] > 0 and got[0, 2] < 0 and got[2, 1] < 0


def test_given_gradients_are_used_instead_of_recomputed():
  params = {"w": jnp.zeros(2)}
  batches = tuple(jnp.asarray(t) for t in TARGETS)
  zero = [{"w": jnp.zeros(2)}] * 3
  np.testing.assert_allclose(lookahead_affinity((_loss,) * 3, params, batches, 0.1, grads=zero), 0.0)
  with pytest.raises(ValueError, match="one of each per task"):
    lookahead_affinity((_loss,) * 3, params, batches[:2], 0.1)


def test_read_affinity_averages_logged_matrices(tmp_path):
  lines = [
    {"step": 1, "train/loss": 0.5},
    {"step": 10, "affinity": [[0.0, 0.2], [0.4, 0.0]], "affinity_labels": ["a", "b"]},
    {"step": 20, "affinity": [[0.0, 0.4], [0.0, 0.0]], "affinity_labels": ["a", "b"]},
  ]
  (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
  labels, matrix, steps = read_affinity(tmp_path)
  assert labels == ["a", "b"] and steps == 2
  np.testing.assert_allclose(matrix, [[0.0, 0.3], [0.2, 0.0]])
  assert read_affinity(tmp_path / "missing") is None
