import jax.numpy as jnp
import numpy as np
import pytest

from postembed_jax.models import heads


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_infonce_keeps_negatives_inside_each_task():
  rng = np.random.default_rng(0)
  left, right = _unit(rng.normal(size=(6, 8))), _unit(rng.normal(size=(6, 8)))
  label = np.ones(6, np.float32)
  head = heads.InfoNCEHead()
  task = np.array([0, 0, 0, 1, 1, 1])
  both, _, _ = head(jnp.asarray(left), jnp.asarray(right), label, task[:, None] == task[None, :])
  alone, _, _ = head(jnp.asarray(left[:3]), jnp.asarray(right[:3]), label[:3])
  np.testing.assert_allclose(both[:3], alone, rtol=1e-5)
  mixed, _, _ = head(jnp.asarray(left), jnp.asarray(right), label)  # no mask: the other task's rows are negatives
  assert np.all(np.asarray(mixed[:3]) > np.asarray(alone))


def test_bce_head_scores_rows_on_their_own():
  head = heads.CosineBCEHead()
  left = jnp.asarray([[1.0, 0.0], [1.0, 0.0]])
  right = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]])
  loss, weight, correct = head(left, right, jnp.asarray([1.0, 0.0]))
  # logit = 10 * cos - 5: +5 for the positive, -15 for the negative; both right.
  np.testing.assert_allclose(loss, [np.log1p(np.exp(-5.0)), np.log1p(np.exp(-15.0))], rtol=1e-5)
  assert weight.tolist() == [1.0, 1.0] and correct.tolist() == [1.0, 1.0]


class _Tower:
  """Stands in for the tower: a batch's "ids" are already its unit embeddings."""

  def __call__(self, ids, mask, **kw):
    return ids


def test_matryoshka_pair_loss_is_the_mean_of_the_losses_at_each_renormalised_prefix():
  rng = np.random.default_rng(0)
  left, right = _unit(rng.normal(size=(6, 12))), _unit(rng.normal(size=(6, 12)))
  batch = {
    "left_ids": jnp.asarray(left),
    "left_mask": None,
    "right_ids": jnp.asarray(right),
    "right_mask": None,
    "label": jnp.asarray([1, 0, 1, 1, 0, 1], jnp.float32),
    "task_id": jnp.asarray([0, 0, 0, 1, 1, 1]),
  }
  pair_heads = {"a": heads.CosineBCEHead(), "b": heads.InfoNCEHead()}
  widths = heads.matryoshka_widths("8,3", 12)
  assert widths == (3, 8, 12)
  loss, weight, correct = heads.pair_loss(_Tower(), pair_heads, ["a", "b"], batch, rngs=None, widths=widths)
  expected = []
  for d in widths:
    l, r = _unit(left[:, :d]), _unit(right[:, :d])
    bce = pair_heads["a"](jnp.asarray(l[:3]), jnp.asarray(r[:3]), batch["label"][:3])[0]
    nce = pair_heads["b"](jnp.asarray(l[3:]), jnp.asarray(r[3:]), batch["label"][3:])[0]  # negatives: own task
    expected.append(np.concatenate([bce, nce]))
  np.testing.assert_allclose(loss, np.mean(expected, axis=0), rtol=1e-5)
  full = heads.pair_loss(_Tower(), pair_heads, ["a", "b"], batch, rngs=None)
  np.testing.assert_allclose(weight, full[1])
  np.testing.assert_allclose(correct, full[2])  # accuracy is the full width's
  np.testing.assert_allclose(full[0], expected[-1], rtol=1e-5)  # off: the full width alone
  assert not np.allclose(expected[0], expected[-1])  # the prefixes do change the loss


def test_matryoshka_widths_are_checked():
  assert heads.matryoshka_widths("", 50) is None and heads.matryoshka_widths(" 32, 32 ,50", 50) == (32, 50)
  with pytest.raises(ValueError, match="width 64 is wider than the embedding \\(50\\)"):
    heads.matryoshka_widths("32,64", 50)
  with pytest.raises(ValueError, match="width 0 is not positive"):
    heads.matryoshka_widths("0,8", 50)
  with pytest.raises(ValueError, match="'x' is not an integer width"):
    heads.matryoshka_widths("8,x", 50)
