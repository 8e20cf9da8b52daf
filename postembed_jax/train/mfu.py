"""Model FLOPs of a training step and the peak FLOP/s of a device: what model FLOP utilisation (MFU) divides.

FLOPs count matrix products only (the usual convention; embeddings, layer norms, softmax and the optimizer are
left out). One tower pass over B rows of L positions, forward and backward:

    FLOPs = B * L * (6 * N + 12 * layers * hidden * L)
    N = layers * (4 * hidden^2 + 2 * hidden * mlp)      (Q, K, V, output and the two MLP matrices)

6 * N per position is 2 (multiply-add) x 3 (forward, and backward for inputs and weights); the second term is
Q K^T and probs V (2 * 2 * L * hidden per position and layer forward), times 3 likewise. A step is counted on the
shapes it runs, padded positions included, so MFU says how busy the step keeps the chips, and examples/s what
the padding costs. MFU = FLOPs / step time / (peak x devices), the peak being the device's dense bfloat16 rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from postembed_jax.models import heads as heads_lib

# Dense bfloat16 peak TFLOP/s by device kind (first matching substring wins; vendors' data sheets, no sparsity).
# CPUs and unlisted kinds have no entry: their MFU is left out.
PEAK_BF16_TFLOPS = (
  ("H100 PCIe", 756.0),
  ("H100 NVL", 835.0),
  ("H200", 989.0),
  ("H100", 989.0),
  ("A100", 312.0),
  ("L40S", 362.0),
  ("L4", 121.0),
  ("TPU v5 lite", 197.0),
  ("TPU v5p", 459.0),
  ("TPU v4", 275.0),
)


def peak_tflops(device_kind: str) -> float | None:
  """The device's dense bfloat16 peak in TFLOP/s, or None when the kind is not in ``PEAK_BF16_TFLOPS``."""
  for name, tflops in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops
  return None


def matmul_params(cfg) -> int:
  """N: weights of the matrix products of the encoder layers (biases, norms and embeddings excluded)."""
  h, f = cfg.hidden_size, cfg.intermediate_size
  return cfg.num_layers * (4 * h * h + 2 * h * f)


def tower_flops(cfg, rows: int, length: int) -> float:
  """Forward and backward FLOPs of one tower pass over ``rows`` x ``length`` positions."""
  return float(rows * length * (6 * matmul_params(cfg) + 12 * cfg.num_layers * cfg.hidden_size * length))


def train_step_flops(cfg, batch_size: int, seq_lens: Sequence[int]) -> float:
  """Model FLOPs of one training step whose tower runs once per entry of ``seq_lens`` over ``batch_size`` rows."""
  return sum(tower_flops(cfg, batch_size, length) for length in seq_lens)


def batch_flops(cfg, arrays: Mapping[str, Any], tower_calls: str = "auto") -> float:
  """Model FLOPs of a training step on one batch (host or device arrays: only shapes are read): a pair batch in
  one tower call or two as ``heads.pair_embeddings`` runs it, a packed pair batch or a classification batch in one."""
  if "packed_ids" in arrays:
    return tower_flops(cfg, *arrays["packed_ids"].shape)
  if "left_ids" not in arrays:
    return tower_flops(cfg, *arrays["ids"].shape)
  left, right = arrays["left_ids"].shape, arrays["right_ids"].shape
  if heads_lib.one_tower_call(left, right, tower_calls):
    return tower_flops(cfg, left[0] + right[0], max(left[1], right[1]))
  return tower_flops(cfg, *left) + tower_flops(cfg, *right)
