"""Metrics stay on the device until a read: one transfer for the steps since the last read, a non-finite check
that names the step range and its first bad step, and a loop that reads only at log steps and before saves."""

import json

import jax
import jax.numpy as jnp
import pytest

from postembed_jax.train import config as train_config
from postembed_jax.train import step_metrics
from postembed_jax.train.loop import train_and_evaluate


def _metrics(loss, grad_norm=1.0):
  return {"loss": jnp.float32(loss), "grad_norm": jnp.float32(grad_norm), "accuracy": jnp.float32(0.5)}


def test_a_read_returns_every_pending_step():
  pending = step_metrics.Pending()
  for step in (11, 12, 13):
    pending.add(step, "search", _metrics(step / 10))
  records = pending.read()
  assert [(s, t) for s, t, _ in records] == [(11, "search"), (12, "search"), (13, "search")]
  assert [m["loss"] for _, _, m in records] == pytest.approx([1.1, 1.2, 1.3])
  assert isinstance(records[0][2]["accuracy"], float)
  assert len(pending) == 0 and pending.read() == []


def test_a_non_finite_step_is_named_with_the_range_read(tmp_path):
  pending = step_metrics.Pending(tmp_path)
  pending.add(31, "search", _metrics(0.7))
  pending.add(32, "storyline", _metrics(0.6, grad_norm=float("inf")))
  pending.add(33, "search", _metrics(float("nan"), float("nan")))
  with pytest.raises(FloatingPointError) as caught:
    pending.read()
  assert str(caught.value) == (
    "Non-finite grad_norm between steps 31 and 33, first at step 32 on task 'storyline' (loss=0.6000000238418579, "
    f"grad_norm=inf). The last good checkpoint is in {tmp_path}/checkpoints."
  )
  with pytest.raises(FloatingPointError, match=r"^Non-finite loss and grad_norm at step 7 on task 'all' \(loss=nan"):
    step_metrics.read([(7, "all", _metrics(float("nan"), float("nan")))])


def test_the_loop_reads_metrics_at_log_steps_only(tiny_model_dir, fixture_data_config, tmp_path, monkeypatch):
  """10 steps logged every 4, saved at the first step (Orbax's initial save) and the last: the steps' metrics come
  to the host in four transfers, before the save of step 1 and at steps 4, 8 and 10, and the log has examples/s
  and model FLOP/s at the log steps (no MFU on a CPU: no known peak)."""
  config = train_config.training_config("search,storyline")
  config.model, config.embed_dim = str(tiny_model_dir), 16
  config.data = fixture_data_config.copy_and_resolve_references()
  config.data.update(tasks="search,storyline", batch_size=8, max_length=32, bucket_lengths=(32,))
  config.update(total_steps=10, log_every_steps=4, export=False)
  config.optim.warmup_steps = 0
  config.eval.update(at_start=False, every_steps=1000, max_examples=40)
  config.checkpoint.every_steps = 1000  # the last step saves (and reads first) whatever the interval
  reads = []
  device_get = jax.device_get

  def counting(tree):
    if isinstance(tree, list) and tree and isinstance(tree[0], dict) and "grad_norm" in tree[0]:
      reads.append(len(tree))
    return device_get(tree)

  monkeypatch.setattr(jax, "device_get", counting)
  train_and_evaluate(config, tmp_path)
  assert reads == [1, 3, 4, 2]
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [1, 10]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in logged] == [4, 8, 10]
  for r in logged:
    assert r["train/examples_per_s"] > 0 and r["train/model_tflops_per_s"] > 0 and "train/mfu" not in r
