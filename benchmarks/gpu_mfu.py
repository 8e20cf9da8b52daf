"""Tokens/s and model FLOP utilisation (MFU) of our full training step for a BERT-base shaped encoder in bfloat16.

  python -m benchmarks.gpu_mfu [--seq_lens 128,512] [--batch_sizes 256,64] [--steps 20] [--peak_tflops X]

The step is the library's own, from the trainer of ``postembed_jax.train.setup.build_random`` on the training
config's defaults (``training_config``: forward and backward of the siamese pair loss through the tower twice,
global-norm clipping, AdamW, donated state), on a randomly initialised PostEncoder of BERT-base shape (12 layers,
hidden 768, 12 heads, MLP 3072, vocabulary 30522, float32 parameters, bfloat16 compute, dropout 0.1 as in BERT)
without projection, and device-resident batches of full-length rows (no padding).

FLOPs of one step, counting matrix products only (the usual convention; embeddings, layer norms, softmax and the
optimizer are left out), for each of the two tower passes over B rows of L tokens:

    FLOPs = B * L * (6 * N + 12 * layers * hidden * L)
    N = layers * (4 * hidden^2 + 2 * hidden * mlp)      (Q, K, V, output and the two MLP matrices)

6 * N per token is 2 (multiply-add) x 3 (forward, and backward for inputs and weights); the second term is
Q K^T and probs V (2 * 2 * L * hidden per token and layer forward), times 3 likewise. MFU = FLOPs / step time /
peak, the peak being the device's dense bfloat16 rate (H100 SXM / H200: 989 TFLOP/s; --peak_tflops overrides).

On a CPU it runs at toy sizes (batch 4, 2 steps) so that it can be tested anywhere; MFU is 'n/a' unless
--peak_tflops is given. Writes benchmarks/results/gpu_mfu.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import common

TARGET_MFU = 0.45

# Dense bfloat16 peak TFLOP/s by device kind (first matching substring wins; vendors' data sheets, no sparsity).
PEAK_BF16_TFLOPS = (
  ("H100 PCIe", 756.0),
  ("H100 NVL", 835.0),
  ("H200", 989.0),
  ("H100", 989.0),
  ("A100", 312.0),
  ("L40S", 362.0),
  ("L4", 121.0),
)

TASK = "search"  # any pair task: the step is the shared pair step

BERT_BASE = dict(
  vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_position_embeddings=512
)


def matmul_params(cfg) -> int:
  """N: weights of the matrix products of the encoder layers (biases, norms and embeddings excluded)."""
  h, f = cfg.hidden_size, cfg.intermediate_size
  return cfg.num_layers * (4 * h * h + 2 * h * f)


def train_step_flops(cfg, batch_size: int, seq_lens: Sequence[int]) -> float:
  """Model FLOPs of one training step whose tower runs once per entry of ``seq_lens`` over ``batch_size`` rows."""
  n = matmul_params(cfg)
  return float(sum(batch_size * L * (6 * n + 12 * cfg.num_layers * cfg.hidden_size * L) for L in seq_lens))


def peak_tflops(device_kind: str) -> float | None:
  for name, tflops in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops
  return None


def train_config(dtype: str = "bfloat16", seed: int = 0):
  """The training config of the measured step: the training defaults with the encoder's full width (no
  projection), the given compute dtype and seed, and no persistent compilation cache (compile time is cold)."""
  from postembed_jax.train.config import training_config

  config = training_config(TASK)
  config.embed_dim = None
  config.dtype = dtype
  config.seed = seed
  config.compilation_cache_dir = ""
  return config


def measure(
  cfg,
  *,
  batch_size: int,
  seq_len: int,
  steps: int,
  warmup: int,
  dtype: str = "bfloat16",
  prng_impl: str | None = None,
  seed: int = 0,
) -> dict[str, Any]:
  """Builds a random model of shape ``cfg`` and times ``steps`` of its training step on pair batches of
  ``batch_size`` x ``seq_len`` tokens a side. Returns step time, tokens/s and achieved FLOP/s."""
  import jax
  import numpy as np

  from postembed_jax.train import setup

  if prng_impl:
    jax.config.update("jax_default_prng_impl", prng_impl)
  trainer = setup.build_random(train_config(dtype, seed), cfg)
  rng = np.random.default_rng(seed)
  ids = lambda: rng.integers(1000, cfg.vocab_size, (batch_size, seq_len), dtype=np.int32)
  ones = np.ones((batch_size, seq_len), np.int32)
  host_batch = {
    "task": TASK,
    "left_ids": ids(),
    "left_mask": ones,
    "right_ids": ids(),
    "right_mask": ones,
    "label": rng.integers(0, 2, batch_size).astype(np.float32),
  }
  # The jitted step on a batch already on the device: the loop's host work (transfer, fetching metrics) is not
  # what MFU measures.
  step, batch, state = trainer.step_for(host_batch), trainer.device_batch(host_batch), trainer.state

  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  first_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - t0
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite loss {loss}")
  step_s = elapsed / steps
  flops = train_step_flops(cfg, batch_size, [seq_len, seq_len])
  return {
    "seq_len": seq_len,
    "batch_size": batch_size,
    "tokens_per_step": 2 * batch_size * seq_len,
    "steps": steps,
    "step_ms": 1e3 * step_s,
    "tokens_per_s": 2 * batch_size * seq_len / step_s,
    "flops_per_step": flops,
    "achieved_tflops": flops / step_s / 1e12,
    "compile_and_first_step_s": first_s,
    "prng_impl": str(jax.config.jax_default_prng_impl),
    "loss": loss,
  }


def _ints(text: str) -> list[int]:
  return [int(x) for x in str(text).split(",") if x.strip()]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_lens", default=None, help="comma-separated; default 128,512 (CPU: 128)")
  parser.add_argument(
    "--batch_sizes", default=None, help="rows per tower, one per sequence length; default 256,64 (CPU: 4)"
  )
  parser.add_argument("--steps", type=int, default=None, help="timed steps; default 20 (CPU: 2)")
  parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling; default 3 (CPU: 1)")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout (BERT: 0.1)")
  parser.add_argument(
    "--prng_impls",
    default="",
    help="comma-separated jax PRNG implementations to measure each row with (dropout masks), "
    "e.g. threefry2x32,rbg; default: JAX's default",
  )
  parser.add_argument(
    "--peak_tflops",
    type=float,
    default=None,
    help="peak FLOP/s of the device in TFLOP/s (default: by device kind; CPUs: none)",
  )
  parser.add_argument("--layers", type=int, default=BERT_BASE["num_layers"])
  parser.add_argument("--hidden", type=int, default=BERT_BASE["hidden_size"])
  parser.add_argument("--heads", type=int, default=BERT_BASE["num_heads"])
  parser.add_argument("--mlp", type=int, default=BERT_BASE["intermediate_size"])
  parser.add_argument("--vocab", type=int, default=BERT_BASE["vocab_size"])
  parser.add_argument("--name", default="gpu_mfu", help="results file name under benchmarks/results")
  args = parser.parse_args(argv)
  result = run(args, on_row=lambda partial: write(partial, args.name))  # each row is kept as soon as measured
  return result


def run(args, on_row=None) -> dict[str, Any]:
  import jax

  from postembed_jax.models.encoder import EncoderConfig

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  seq_lens = _ints(args.seq_lens or ("128" if on_cpu else "128,512"))
  batch_sizes = _ints(args.batch_sizes or ("4" if on_cpu else "256,64"))
  if len(batch_sizes) == 1:
    batch_sizes *= len(seq_lens)
  if len(batch_sizes) != len(seq_lens):
    raise ValueError(f"--batch_sizes {batch_sizes} needs one entry per sequence length {seq_lens}")
  steps = args.steps or (2 if on_cpu else 20)
  warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 3)
  cfg = EncoderConfig(
    vocab_size=args.vocab,
    hidden_size=args.hidden,
    num_layers=args.layers,
    num_heads=args.heads,
    intermediate_size=args.mlp,
    max_position_embeddings=max(512, max(seq_lens)),
    hidden_dropout=args.dropout,
    attention_dropout=args.dropout,
  )
  peak = args.peak_tflops or peak_tflops(device.device_kind)
  rows = []
  for impl in [x for x in args.prng_impls.split(",") if x] or [None]:
    for seq_len, batch_size in zip(seq_lens, batch_sizes):
      row = measure(
        cfg, batch_size=batch_size, seq_len=seq_len, steps=steps, warmup=warmup, dtype=args.dtype, prng_impl=impl
      )
      row["mfu"] = row["achieved_tflops"] / peak if peak else None
      rows.append(row)
      mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
      print(
        f"L={seq_len} B={batch_size} prng={row['prng_impl']}: {row['step_ms']:.1f} ms/step, "
        f"{row['tokens_per_s']:.0f} tokens/s, {row['achieved_tflops']:.2f} TFLOP/s, MFU {mfu}",
        flush=True,
      )
      if on_row:
        on_row(_result(args, device, cfg, peak, rows))
  return _result(args, device, cfg, peak, rows)


def _result(args, device, cfg, peak, rows) -> dict[str, Any]:
  return {
    "command": "python -m benchmarks.gpu_mfu "
    + " ".join(f"--{k}={v}" for k, v in vars(args).items() if v not in (None, "")),
    "machine": common.machine(),
    "device_kind": device.device_kind,
    "platform": device.platform,
    "model": {
      "layers": cfg.num_layers,
      "hidden": cfg.hidden_size,
      "heads": cfg.num_heads,
      "mlp": cfg.intermediate_size,
      "vocab": cfg.vocab_size,
      "dropout": args.dropout,
      "matmul_params": matmul_params(cfg),
      "compute_dtype": args.dtype,
      "param_dtype": "float32",
    },
    "flops_formula": "per tower pass: B*L*(6*N + 12*layers*hidden*L), N = layers*(4*hidden^2 + 2*hidden*mlp)",
    "peak_tflops": peak,
    "peak_source": ("--peak_tflops" if args.peak_tflops else "device kind table" if peak else "unknown: MFU n/a"),
    "target_mfu": TARGET_MFU,
    "rows": rows,
    "best_mfu": max((r["mfu"] for r in rows if r["mfu"] is not None), default=None),
  }


def write(result: dict[str, Any], name: str = "gpu_mfu") -> None:
  table = []
  for r in result["rows"]:
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    table.append(
      (
        f"L={r['seq_len']}, B={r['batch_size']} x 2 towers, PRNG {r['prng_impl']}",
        f"{r['tokens_per_s']:,.0f} tokens/s; {r['step_ms']:.1f} ms/step; "
        f"{r['achieved_tflops']:.2f} TFLOP/s; MFU {mfu}; compile + first step "
        f"{r['compile_and_first_step_s']:.1f} s",
      )
    )
  best = result["best_mfu"]
  table += [
    ("device", f"{result['device_kind']} ({result['platform']}), JAX {result['machine']['jax']}"),
    ("peak bf16 TFLOP/s", f"{result['peak_tflops'] or 'n/a'} ({result['peak_source']})"),
    (
      "target MFU",
      f"{100 * result['target_mfu']:.0f}%: "
      + (
        "n/a (no peak known)"
        if best is None
        else f"{'met' if best >= result['target_mfu'] else 'missed'} (best {100 * best:.1f}%)"
      ),
    ),
    (
      "model",
      f"{result['model']['layers']} layers, hidden {result['model']['hidden']}, "
      f"{result['model']['heads']} heads, MLP {result['model']['mlp']}, N = "
      f"{result['model']['matmul_params']:,} matmul weights, {result['model']['compute_dtype']} compute",
    ),
    ("FLOPs per step", result["flops_formula"] + ", summed over the 2 tower passes"),
  ]
  common.write_result(name, result, table)


if __name__ == "__main__":
  main(sys.argv[1:])
