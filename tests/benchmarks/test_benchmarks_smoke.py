"""Smoke tests of benchmarks/train_throughput.py and benchmarks/gpu_mfu.py at toy sizes: a tiny BERT (with
all-MiniLM-L6-v2's tokenizer) on the Debian fixture, a few steps, sane numbers, and the FLOP formula by hand."""

import os
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "debian"
sys.path.insert(0, str(REPO))  # the benchmarks package lives at the repository root

from benchmarks import common, gpu_mfu, train_throughput  # noqa: E402
from postembed_jax.data.tasks import PAIR_TASKS  # noqa: E402


def test_train_throughput_trains_what_the_torch_loop_trains():
  """The torch loop is BCE on cosine, one task per step, every loss weighted 1: the main job's InfoNCE and task
  weights are set back, or the ratio would compare different losses."""
  config = train_throughput.load_config("configs/mtl.py")
  assert config.data.task_mixing == "one_task_per_step"
  assert {config.task_losses[t] for t in PAIR_TASKS} == {"bce"}
  assert {config.loss_weights[t] for t in PAIR_TASKS} == {1.0}


def test_train_throughput_tiny(tiny_model_dir, tmp_path, monkeypatch):
  config = train_throughput.load_config("configs/mtl.py")
  config.model = str(tiny_model_dir)
  config.embed_dim = 16
  config.data.index_dir = str(FIXTURE)
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.tasks = "search,storyline"
  config.data.batch_size = 4
  config.data.max_length = 32
  config.data.bucket_lengths = (32,)  # one compiled shape
  result = train_throughput.run_benchmark(config, rounds=2, steps=2, control=1, torch_threads=1, log=lambda _: None)

  ours, torch_ = result["postembed_jax"], result["torch"]
  for side in (ours, torch_):
    assert side["steps"] == 4 and side["pairs"] == 16  # the timed pass only, not the untimed heap pass before it
    assert side["pairs_per_s"] > 0 and side["compute_ms_per_step"] > 0
    assert 0 <= side["padding_fraction"] < 1
    assert 0 < side["mean_real_length"] <= side["mean_padded_length"] <= 32
  # Same pairs on both sides: the same real tokens, only the padding differs.
  assert ours["real_tokens"] == torch_["real_tokens"]
  assert ours["mean_padded_length"] == 32  # the single bucket
  assert result["speedup"] == pytest.approx(ours["pairs_per_s"] / torch_["pairs_per_s"])
  assert len(result["speedup_per_round"]) == 2
  assert result["warmup"]["jax_compiled_shapes"] >= 1 and result["warmup"]["jax_compile_s"] >= 0
  assert result["control_same_batches"]["steps"] == 2 and result["control_same_batches"]["kernel_speedup"] > 0

  monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
  result["command"] = "test"
  train_throughput.write(result)
  md = (tmp_path / "results" / "train_throughput.md").read_text()
  assert "## Profile" in md and "pairs/s" in md
  assert result["heap_passes"] == 1 and set(result["kernel_time_per_step_untimed_pass"]) == {"postembed_jax", "torch"}
  assert "untimed heap pass before (--heap_passes) | " in md and "no such pass" not in md
  assert (
    result["devices"] == jax.device_count()
    and f"devices of the data mesh (config.cpu_devices) | {jax.device_count()} (0)" in md
  )
  for side in result["kernel_time_per_step"].values():
    assert side["cpu_s"] > 0 and 0 < side["cores_busy"] <= os.cpu_count() + 0.5


def test_batch_plan_gives_the_texts_of_the_pipeline_batches(tiny_model_dir, tmp_path):
  """The examples the reference trains on (the iterator's batch plan) tokenise to exactly the ids of its batches,
  and planning does not move the iterator."""
  from postembed_jax.data import mixture
  from postembed_jax.models import hf_io

  config = train_throughput.load_config("configs/mtl.py")
  config.data.index_dir = str(FIXTURE)
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.batch_size = 4
  tokenizer = hf_io.load_tokenizer(tiny_model_dir)
  it = mixture.make_train_iterator(config.data, tokenizer, seed=0)
  state = it.get_state()
  plan = it.batch_plan(12)
  assert it.get_state() == state
  batches = [next(it) for _ in range(12)]
  train_throughput.check_plan(plan, batches, tokenizer, config.data.max_length)
  assert {p["task"] for p in plan} == {b["task"] for b in batches}
  plan[0]["examples"][0]["left"] = "a different text altogether"
  with pytest.raises(AssertionError):
    train_throughput.check_plan(plan, batches, tokenizer, config.data.max_length)


def test_flop_count_by_hand():
  cfg = types.SimpleNamespace(hidden_size=8, intermediate_size=16, num_layers=2)
  # N = 2 layers * (4 * 8^2 + 2 * 8 * 16) = 1024; per token 6 * 1024 + 12 * 2 * 8 * 4 = 6912;
  # 2 rows x 4 tokens x 2 tower passes = 16 tokens.
  assert gpu_mfu.matmul_params(cfg) == 1024
  assert gpu_mfu.train_step_flops(cfg, 2, [4, 4]) == 16 * 6912
  bert = types.SimpleNamespace(hidden_size=768, intermediate_size=3072, num_layers=12)
  assert gpu_mfu.matmul_params(bert) == 84_934_656  # BERT-base without embeddings, biases and norms


def test_peak_by_device_kind():
  assert gpu_mfu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert gpu_mfu.peak_tflops("NVIDIA H100 PCIe") == 756.0
  assert gpu_mfu.peak_tflops("NVIDIA H200") == 989.0
  assert gpu_mfu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
  assert gpu_mfu.peak_tflops("cpu") is None


def test_gpu_mfu_trains_with_the_training_config():
  """The measured step is the training defaults' but for the fields the benchmark names."""
  from postembed_jax.train import config as train_config

  ours, defaults = gpu_mfu.train_config("bfloat16", seed=3).to_dict(), train_config.training_config("search").to_dict()
  changed = {k for k in defaults if ours[k] != defaults[k]}
  assert changed == {"embed_dim", "dtype", "seed", "compilation_cache_dir"}
  assert ours["dtype"] == "bfloat16" and ours["embed_dim"] is None and ours["optim"] == defaults["optim"]


def test_gpu_mfu_runs_tiny_on_cpu(tmp_path, monkeypatch):
  monkeypatch.setattr(common, "RESULTS", tmp_path)
  result = gpu_mfu.main(
    [
      "--layers=1",
      "--hidden=16",
      "--heads=2",
      "--mlp=32",
      "--vocab=2000",
      "--seq_lens=16",
      "--batch_sizes=2",
      "--steps=2",
      "--warmup=0",
      "--peak_tflops=1",
    ]
  )
  (row,) = result["rows"]
  cfg = types.SimpleNamespace(hidden_size=16, intermediate_size=32, num_layers=1)
  assert row["tokens_per_step"] == 2 * 2 * 16
  assert row["flops_per_step"] == gpu_mfu.train_step_flops(cfg, 2, [16, 16])
  assert row["tokens_per_s"] > 0 and row["achieved_tflops"] > 0 and np.isfinite(row["loss"])
  assert 0 < row["mfu"] < 1 and row["mfu"] == pytest.approx(row["achieved_tflops"] / 1.0)
  assert "MFU" in (tmp_path / "gpu_mfu.md").read_text()


def test_packed_steps_are_counted_and_keyed_by_their_packed_rows():
  import ml_collections

  mask = (np.arange(32)[None] < np.arange(2, 18)[:, None] // 2).astype(np.int32)  # 16 texts of 1-8 tokens a side
  batch = {"task": "search", "left_ids": mask * 7, "left_mask": mask, "right_ids": mask * 8, "right_mask": mask}
  batch["label"] = np.ones(16, np.float32)
  plain, packed = ml_collections.ConfigDict({"pack_pairs": False}), ml_collections.ConfigDict({"pack_pairs": True})
  assert train_throughput.computed_positions(plain, batch) == 2 * 16 * 32
  assert train_throughput.computed_positions(packed, batch) == 8 * 32  # 4 texts a row, rows a multiple of 8
  assert train_throughput.compile_key(plain, batch) != train_throughput.compile_key(packed, batch)
  assert train_throughput.compile_key(packed, batch)[0] == "pairs"
