"""benchmarks/gpu_mfu.py's interleaved A/B of the accelerator options, tiny on a CPU, with its profile trace."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the benchmarks package lives at the repository root

from benchmarks import common, gpu_mfu  # noqa: E402

TINY = ["--layers=1", "--hidden=16", "--heads=2", "--mlp=32", "--vocab=2000", "--seq_lens=16", "--batch_sizes=2"]


def test_ab_rows_per_variant_with_trace(tmp_path, monkeypatch):
  monkeypatch.setattr(common, "RESULTS", tmp_path)
  variants = ["baseline", "fused_attention", "scan_layers"]
  result = gpu_mfu.main(
    TINY
    + [
      f"--variants={','.join(variants)}",
      "--rounds=2",
      "--steps=1",
      "--warmup=0",
      f"--trace_dir={tmp_path / 'trace'}",
    ]
  )
  rows = result["rows"]
  assert [r["variant"] for r in rows] == variants
  assert [r["overrides"] for r in rows] == [{}, {"attention_impl": "auto"}, {"scan_layers": True}]
  cfg = types.SimpleNamespace(hidden_size=16, intermediate_size=32, num_layers=1)
  for r in rows:
    assert len(r["step_ms_per_round"]) == 2 and r["step_ms"] > 0 and np.isfinite(r["loss"])
    assert r["flops_per_step"] == gpu_mfu.train_step_flops(cfg, 2, [16, 16])
  assert rows[0]["speedup_vs_baseline"] == 1.0 and rows[1]["speedup_vs_baseline"] > 0
  # same seed and data: a variant that computes the same function starts from the same loss
  assert rows[2]["loss"] == pytest.approx(rows[0]["loss"], abs=1e-4)
  assert list((tmp_path / "trace" / "L16_B2").rglob("*.xplane.pb"))  # the jax.profiler trace
  assert "scan_layers" in (tmp_path / "gpu_mfu.md").read_text()


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match=r"--variants: unknown \['fast'\]"):
    gpu_mfu.main(TINY + ["--variants=baseline,fast"])
