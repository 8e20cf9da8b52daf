"""Model FLOPs of a step on the shapes it runs (one tower call or two), and the peak table behind MFU."""

import types

import numpy as np

from postembed_jax.train import mfu

CFG = types.SimpleNamespace(hidden_size=8, intermediate_size=16, num_layers=2)


def test_tower_flops_by_hand():
  # N = 2 layers * (4 * 8^2 + 2 * 8 * 16) = 1024; per position 6 * 1024 + 12 * 2 * 8 * L.
  assert mfu.matmul_params(CFG) == 1024
  assert mfu.tower_flops(CFG, 2, 4) == 2 * 4 * (6 * 1024 + 12 * 2 * 8 * 4)
  assert mfu.train_step_flops(CFG, 2, [4, 6]) == mfu.tower_flops(CFG, 2, 4) + mfu.tower_flops(CFG, 2, 6)


def test_batch_flops_follow_the_tower_calls():
  pairs = {"left_ids": np.zeros((4, 8)), "right_ids": np.zeros((4, 16))}
  # One call pads the left side to 16 positions; two calls run each side at its own length.
  assert mfu.batch_flops(CFG, pairs, "one") == mfu.tower_flops(CFG, 8, 16)
  assert mfu.batch_flops(CFG, pairs, "two") == mfu.tower_flops(CFG, 4, 8) + mfu.tower_flops(CFG, 4, 16)
  assert mfu.batch_flops(CFG, pairs) == mfu.batch_flops(CFG, pairs, "two")  # auto on a CPU
  assert mfu.batch_flops(CFG, {"ids": np.zeros((4, 8))}) == mfu.tower_flops(CFG, 4, 8)
  packed = {"packed_ids": np.zeros((3, 16)), "left_slot": np.zeros(4), "right_slot": np.zeros(4)}
  assert mfu.batch_flops(CFG, packed, "two") == mfu.tower_flops(CFG, 3, 16)  # one call on the packed rows


def test_peak_by_device_kind():
  assert mfu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert mfu.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert mfu.peak_tflops("NVIDIA H200") == 989.0
  assert mfu.peak_tflops("TPU v5 lite") == 197.0
  assert mfu.peak_tflops("cpu") is None
