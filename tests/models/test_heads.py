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
  ones = jnp.ones((6, 12), jnp.int32)  # ignored by the stand-in tower
  batch = {
    "left_ids": jnp.asarray(left),
    "left_mask": ones,
    "right_ids": jnp.asarray(right),
    "right_mask": ones,
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


def _tiny_tower(layout: str):
  from flax import nnx

  from postembed_jax.models.encoder import EncoderConfig, PostEncoder

  cfg = EncoderConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=40,
    layout=layout,
    pad_token_id=1 if layout == "roberta" else 0,
  )
  return PostEncoder(cfg, embed_dim=8, rngs=nnx.Rngs(0))


def _pair_batch(rng, rows: int, left_length: int, right_length: int) -> dict:
  """Rows of random real lengths (at least one token), padded to each side's length; two tasks."""
  batch = {}
  for side, length in (("left", left_length), ("right", right_length)):
    real = rng.integers(1, length + 1, rows)
    mask = (np.arange(length)[None] < real[:, None]).astype(np.int32)
    batch[f"{side}_ids"] = jnp.asarray(rng.integers(2, 50, (rows, length)) * mask, jnp.int32)
    batch[f"{side}_mask"] = jnp.asarray(mask)
  batch["label"] = jnp.asarray(rng.integers(0, 2, rows), jnp.float32)
  batch["task_id"] = jnp.asarray(np.arange(rows) % 2, jnp.int32)
  return batch


@pytest.mark.parametrize(
  "layout,lengths", [("bert", (7, 13)), ("roberta", (13, 7)), ("bert", (9, 9))], ids=["bert", "roberta", "same_length"]
)
def test_one_tower_call_gives_the_loss_and_gradients_of_two(layout, lengths):
  """Both sides stacked in one call (the shorter padded) against a call per side, without dropout: the same
  per-row losses and the same gradients, up to float rounding."""
  import jax
  from flax import nnx

  tower = _tiny_tower(layout)
  pair_heads = {"a": heads.CosineBCEHead(), "b": heads.InfoNCEHead()}
  graphdef, params = nnx.split((tower, pair_heads))
  batch = _pair_batch(np.random.default_rng(1), 6, *lengths)

  def loss(params, calls, dropout_key=None):
    tower, pair_heads = nnx.merge(graphdef, params)
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    per_row = heads.pair_loss(tower, pair_heads, ["a", "b"], batch, rngs=rngs, tower_calls=calls, widths=(4, 8))
    return jnp.mean(per_row[0]), per_row

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (one, rows_one), grads_one = value_and_grad(params, "one")
  (two, rows_two), grads_two = value_and_grad(params, "two")
  for a, b in zip(rows_one, rows_two):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(one, two, rtol=1e-6)
  flat_one, flat_two = jax.tree.leaves(grads_one), jax.tree.leaves(grads_two)
  assert len(flat_one) == len(flat_two) > 10
  for a, b in zip(flat_one, flat_two):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert max(float(jnp.max(jnp.abs(g))) for g in flat_one) > 1e-3  # the gradients compared are not all zero
  # With dropout the two draw different masks: one call still trains (finite loss and gradients).
  (dropped, _), grads = value_and_grad(params, "one", jax.random.key(0))
  assert np.isfinite(dropped) and all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert not np.isclose(dropped, one)  # dropout was on


@pytest.mark.parametrize("layout", ["bert", "roberta"])
def test_packed_pairs_give_the_loss_and_gradients_of_unpacked(layout):
  """Both sides' texts packed into shared rows (tokenize.pack_pair_batch) against a call per side, without
  dropout: the same per-row losses and gradients up to float rounding, on fewer rows than texts."""
  import jax
  from flax import nnx

  from postembed_jax.data import tokenize

  tower = _tiny_tower(layout)
  pair_heads = {"a": heads.CosineBCEHead(), "b": heads.InfoNCEHead()}
  graphdef, params = nnx.split((tower, pair_heads))
  unpacked = {k: np.asarray(v) for k, v in _pair_batch(np.random.default_rng(2), 8, 16, 24).items()}
  packed = tokenize.pack_pair_batch(unpacked, row_multiple=2)
  assert packed["packed_ids"].shape[0] < 16

  def loss(params, batch):
    tower, pair_heads = nnx.merge(graphdef, params)
    per_row = heads.pair_loss(tower, pair_heads, ["a", "b"], batch, rngs=None, tower_calls="two")
    return jnp.mean(per_row[0]), per_row

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (want, rows_want), grads_want = value_and_grad(params, unpacked)
  (got, rows_got), grads_got = value_and_grad(params, packed)
  for a, b in zip(rows_got, rows_want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_got), jax.tree.leaves(grads_want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_got)) > 1e-3


def test_when_both_sides_take_one_tower_call():
  assert heads.one_tower_call((4, 8), (4, 8)) and heads.one_tower_call((4, 8), (4, 16), "one")
  assert not heads.one_tower_call((4, 8), (4, 16))  # auto on a CPU: padding would cost its share of compute
  assert not heads.one_tower_call((4, 8), (3, 8), "one")  # rows differ
  assert not heads.one_tower_call((4, 8), (4, 8), "two")
  with pytest.raises(ValueError, match=r"config.pair_tower_calls='three'; choose one of \['auto', 'one', 'two'\]"):
    heads.one_tower_call((4, 8), (4, 8), "three")
