"""The accelerator options of the encoder (docs/training.md, "Accelerator efficiency options"): each computes
what the default computes (fused attention, scanned layers, remat) or changes only what it says (dropout masks'
generator, tanh GELU)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from postembed_jax.models import encoder as encoder_lib
from postembed_jax.models.encoder import EncoderConfig, PostEncoder
from postembed_jax.train import config as config_lib
from postembed_jax.train import state as state_lib

TINY = EncoderConfig(
  vocab_size=120, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=96, max_position_embeddings=40
)


def _batch(rows=3, length=24, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, TINY.vocab_size, size=(rows, length))
  mask = np.ones_like(ids)
  mask[1, 15:] = 0
  mask[2, 6:] = 0
  return jnp.asarray(np.where(mask == 1, ids, 0)), jnp.asarray(mask)


def _model(dtype=jnp.float32, **options):
  return PostEncoder(dataclasses.replace(TINY, **options), embed_dim=8, dtype=dtype, rngs=nnx.Rngs(0))


def _with_params_of(model, reference):
  nnx.update(model, nnx.state(reference, nnx.Param))
  return model


@pytest.mark.parametrize("layout", ["bert", "roberta"])
def test_fused_xla_attention_matches_einsum_fp32(layout):
  options = dict(layout=layout, pad_token_id=1 if layout == "roberta" else 0)
  ids, mask = _batch()
  einsum, fused = _model(**options), _model(attention_impl="xla", **options)
  np.testing.assert_allclose(fused(ids, mask), einsum(ids, mask), atol=1e-5, rtol=0)
  seg = jnp.asarray([[1] * 10 + [2] * 9 + [0] * 5] * 3)
  np.testing.assert_allclose(
    fused.embed_segments(ids, seg, max_segments=2), einsum.embed_segments(ids, seg, max_segments=2), atol=1e-5
  )


def test_fused_xla_attention_bf16_error_is_within_todays():
  ids, mask = _batch()
  reference = np.asarray(_model()(ids, mask))
  errors = {
    impl: np.abs(np.asarray(_model(jnp.bfloat16, attention_impl=impl)(ids, mask)) - reference).max()
    for impl in ("einsum", "xla")
  }
  assert 0 < errors["xla"] <= 1.25 * errors["einsum"], errors  # xla keeps the logits in fp32


def test_auto_attention_is_xla_off_gpu_and_cudnn_needs_a_gpu():
  assert encoder_lib.resolve_attention("auto", jnp.bfloat16) == ("cudnn" if jax.default_backend() == "gpu" else "xla")
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="config.attention_impl='cudnn' needs a GPU"):
      encoder_lib.resolve_attention("cudnn", jnp.bfloat16)


def test_dropout_keeps_one_minus_rate_scaled_and_is_off_without_key():
  x = jnp.ones((400, 500))
  y = np.asarray(encoder_lib.dropout(x, 0.1, jax.random.key(0)))
  kept = y != 0
  assert abs(kept.mean() - 0.9) < 0.003  # 200k draws: 4 standard errors
  np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
  assert encoder_lib.dropout(x, 0.1, None) is x
  assert encoder_lib.dropout(x, 0.0, jax.random.key(0)) is x


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_prng_impl_changes_the_masks_only(impl):
  ids, mask = _batch()
  default, other = _model(), _model(prng_impl=impl)
  np.testing.assert_array_equal(other(ids, mask), default(ids, mask))  # no dropout: same function
  run = lambda m, s: np.asarray(m(ids, mask, deterministic=False, rngs=nnx.Rngs(dropout=s)))
  np.testing.assert_array_equal(run(other, 3), run(other, 3))  # reproducible from the step's key
  assert np.abs(run(other, 3) - run(default, 3)).max() > 1e-3
  keys = encoder_lib.dropout_keys(nnx.Rngs(dropout=0), impl, 4)
  assert str(jax.random.key_impl(keys)) == impl and keys.shape == (4,)


def test_exact_gelu_is_torchs_within_float32_rounding():
  """hidden_act="gelu" is written with erf, as torch computes it (XLA:CPU's erfc is 13x slower): values and
  gradients equal torch's float64 GELU within float32 rounding, where the tanh approximation is off by 4.7e-4."""
  torch = pytest.importorskip("torch")
  x = np.linspace(-10, 10, 20001, dtype=np.float32)
  reference = torch.tensor(x, dtype=torch.float64, requires_grad=True)
  torch.nn.functional.gelu(reference).sum().backward()
  for act in ("gelu", "gelu_new"):
    gelu = encoder_lib._ACTIVATIONS[act]
    close = np.allclose(gelu(jnp.asarray(x)), torch.nn.functional.gelu(reference).detach().numpy(), atol=2e-6)
    assert close == (act == "gelu"), act
  gelu = encoder_lib._ACTIVATIONS["gelu"]
  np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(jnp.asarray(x)), reference.grad.numpy(), atol=2e-6)
  assert gelu(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16
  assert "erfc" not in jax.jit(gelu).lower(jnp.ones(3)).as_text()  # jax.nn.gelu's form, the slow one


def test_tanh_gelu_is_the_gelu_new_activation():
  ids, mask = _batch()
  tanh, exact = _model(gelu="tanh"), _model()
  gelu_new = _model(hidden_act="gelu_new")
  np.testing.assert_array_equal(tanh(ids, mask), gelu_new(ids, mask))
  difference = np.abs(np.asarray(tanh(ids, mask)) - np.asarray(exact(ids, mask))).max()
  assert 0 < difference < 1e-2


SCAN_AND_REMAT = [dict(scan_layers=True), dict(remat="full"), dict(scan_layers=True, remat="dots_saveable")]


@pytest.mark.parametrize("options", SCAN_AND_REMAT)
def test_scan_and_remat_give_the_same_outputs_and_gradients(options):
  ids, mask = _batch()
  plain = _model()
  other = _with_params_of(_model(**options), plain)
  # the parameter tree is the unscanned one, so checkpoints and HF import / export are unchanged
  assert jax.tree.structure(nnx.state(other, nnx.Param)) == jax.tree.structure(nnx.state(plain, nnx.Param))

  def loss_and_grads(model):
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(ids, mask, deterministic=False, rngs=nnx.Rngs(dropout=7)) ** 3)
    return jax.value_and_grad(loss)(params)

  (loss_a, grads_a), (loss_b, grads_b) = loss_and_grads(plain), loss_and_grads(other)
  np.testing.assert_allclose(loss_b, loss_a, atol=1e-5, rtol=0)  # dropout on: the same masks too
  for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
  assert max(np.abs(g).max() for g in jax.tree.leaves(grads_a)) > 1e-2  # not vacuous


@pytest.mark.parametrize("field", ["attention_impl", "prng_impl", "gelu", "remat"])
def test_bad_option_names_the_config_field(field):
  with pytest.raises(ValueError, match=f"config.{field}='nope'; choose one of"):
    dataclasses.replace(TINY, **{field: "nope"})


def test_training_config_options_reach_the_tower():
  config = config_lib.training_config("search")
  assert {k: config[k] for k in encoder_lib.ENCODER_OPTIONS} == {
    f.name: f.default for f in dataclasses.fields(EncoderConfig) if f.name in encoder_lib.ENCODER_OPTIONS
  }  # the defaults are the encoder's: today's numerics
  config.attention_impl, config.scan_layers, config.remat = "xla", True, "full"
  infos = {"search": state_lib.TaskInfo("bce")}
  model = nnx.eval_shape(lambda: state_lib.build_model(config, TINY, infos, seed=0))
  cfg = model.tower.encoder.cfg
  assert (cfg.attention_impl, cfg.scan_layers, cfg.remat, cfg.gelu) == ("xla", True, "full", "exact")
