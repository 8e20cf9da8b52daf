"""Tokens/s and model FLOP utilisation (MFU) of our full training step for a BERT-base shaped encoder in bfloat16,
as an interleaved A/B of the accelerator options (docs/training.md, "Accelerator efficiency options").

  python -m benchmarks.gpu_mfu [--seq_lens 128,512] [--batch_sizes 256,64] [--steps 20] [--rounds 5]
      [--variants baseline,fused_attention,...] [--trace_dir DIR] [--peak_tflops X]

Each variant (``VARIANTS``: training-config overrides of the encoder options) gets its own trainer and compiled
step; after compiling and warming up all of them, ``--rounds`` rounds time ``--steps`` steps of every variant in
turn (the order rotating each round), so drifting clocks or a neighbour's load hit every variant alike. A row
reports the median step time over the rounds and the median of the per-round speed-ups over ``baseline``.
``--trace_dir`` saves a ``jax.profiler`` trace of one more step per variant (TensorBoard / Perfetto), one
annotation per variant.

The step is the library's own, from the trainer of ``postembed_jax.train.setup.build_random`` on the training
config's defaults (``training_config``: forward and backward of the siamese pair loss, both sides in one tower
call on an accelerator (``config.pair_tower_calls``), global-norm clipping, AdamW, donated state), on a randomly
initialised PostEncoder of BERT-base shape (12 layers, hidden 768, 12 heads, MLP 3072, vocabulary 30522, float32
parameters, bfloat16 compute, dropout 0.1 as in BERT) without projection, and device-resident batches of
full-length rows (no padding).

FLOPs of one step count matrix products only, for each tower pass over B rows of L tokens
(``postembed_jax.train.mfu``, the formula the training loop's MFU uses):

    FLOPs = B * L * (6 * N + 12 * layers * hidden * L),  N = layers * (4 * hidden^2 + 2 * hidden * mlp)

MFU = FLOPs / step time / peak, the peak being the device's dense bfloat16 rate (``mfu.PEAK_BF16_TFLOPS``;
H100 SXM / H200: 989 TFLOP/s; --peak_tflops overrides).

On a CPU it runs at toy sizes (batch 4, 2 steps, 1 round, the baseline only) so that it can be tested anywhere;
MFU is 'n/a' unless --peak_tflops is given. Writes benchmarks/results/gpu_mfu.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from postembed_jax import host_malloc
from postembed_jax.train.mfu import matmul_params, peak_tflops, train_step_flops

TARGET_MFU = 0.45

# Training-config overrides measured against "baseline" (today's defaults); see postembed_jax/train/config.py.
VARIANTS = {
  "baseline": {},
  "fused_attention": {"attention_impl": "auto"},  # cuDNN on a GPU in bf16, XLA elsewhere; no attention dropout
  "rbg_dropout": {"prng_impl": "rbg"},
  "unsafe_rbg_dropout": {"prng_impl": "unsafe_rbg"},
  "tanh_gelu": {"gelu": "tanh"},
  "scan_layers": {"scan_layers": True},
  "remat_dots": {"remat": "dots_saveable"},
  "combined": {"attention_impl": "auto", "prng_impl": "unsafe_rbg", "gelu": "tanh"},
}

TASK = "search"  # any pair task: the step is the shared pair step

BERT_BASE = dict(
  vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_position_embeddings=512
)


def train_config(dtype: str = "bfloat16", seed: int = 0, **overrides):
  """The training config of the measured step: the training defaults with the encoder's full width (no
  projection), the given compute dtype, seed and ``overrides``, and no persistent compilation cache (compile time
  is cold)."""
  from postembed_jax.train.config import training_config

  config = training_config(TASK)
  config.embed_dim = None
  config.dtype = dtype
  config.seed = seed
  config.compilation_cache_dir = ""
  config.update(overrides)
  return config


def build(cfg, overrides: dict, *, batch_size: int, seq_len: int, dtype: str, seed: int = 0) -> dict[str, Any]:
  """A random model of shape ``cfg`` trained with ``overrides``, its jitted step and a device-resident pair batch
  of ``batch_size`` x ``seq_len`` tokens a side, after one (compiling) step, timed."""
  import numpy as np

  from postembed_jax.train import setup

  trainer = setup.build_random(train_config(dtype, seed, **overrides), cfg)
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
  run = {"step": trainer.step_for(host_batch), "batch": trainer.device_batch(host_batch), "state": trainer.state}
  run["compile_and_first_step_s"] = time_steps(run, 1)
  return run


def time_steps(run: dict[str, Any], steps: int) -> float:
  """Seconds per step of ``steps`` steps of a ``build`` (its state carried on); fails on a non-finite loss."""
  import jax
  import numpy as np

  t0 = time.perf_counter()
  for _ in range(steps):
    run["state"], run["metrics"] = run["step"](run["state"], run["batch"])
  jax.block_until_ready((run["state"], run["metrics"]))
  elapsed = (time.perf_counter() - t0) / steps
  loss = float(run["metrics"]["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite loss {loss}")
  return elapsed


def measure_ab(
  cfg,
  variants: list[str],
  *,
  batch_size: int,
  seq_len: int,
  steps: int,
  warmup: int,
  rounds: int,
  dtype: str = "bfloat16",
  trace_dir: str | None = None,
) -> list[dict[str, Any]]:
  """One row per variant: median step time over ``rounds`` interleaved rounds of ``steps`` steps, tokens/s,
  achieved FLOP/s and the median per-round speed-up over ``baseline`` (when measured)."""
  import jax

  runs = {name: build(cfg, VARIANTS[name], batch_size=batch_size, seq_len=seq_len, dtype=dtype) for name in variants}
  for run in runs.values():
    if warmup:
      time_steps(run, warmup)
  times = {name: [] for name in variants}
  for r in range(rounds):
    for name in variants[r % len(variants) :] + variants[: r % len(variants)]:
      times[name].append(time_steps(runs[name], steps))
  if trace_dir:
    with jax.profiler.trace(str(Path(trace_dir) / f"L{seq_len}_B{batch_size}")):
      for name in variants:
        with jax.profiler.TraceAnnotation(name):
          time_steps(runs[name], 1)
  flops = train_step_flops(cfg, batch_size, [seq_len, seq_len])
  rows = []
  for name in variants:
    step_s = statistics.median(times[name])
    speedups = [b / t for b, t in zip(times["baseline"], times[name])] if "baseline" in times else None
    rows.append(
      {
        "variant": name,
        "overrides": VARIANTS[name],
        "seq_len": seq_len,
        "batch_size": batch_size,
        "tokens_per_step": 2 * batch_size * seq_len,
        "steps": steps,
        "rounds": rounds,
        "step_ms": 1e3 * step_s,
        "step_ms_per_round": [1e3 * t for t in times[name]],
        "speedup_vs_baseline": statistics.median(speedups) if speedups else None,
        "tokens_per_s": 2 * batch_size * seq_len / step_s,
        "flops_per_step": flops,
        "achieved_tflops": flops / step_s / 1e12,
        "compile_and_first_step_s": runs[name]["compile_and_first_step_s"],
        "loss": float(runs[name]["metrics"]["loss"]),
      }
    )
  return rows


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
    "--variants", default=None, help=f"comma-separated, of {list(VARIANTS)}; default all (CPU: baseline)"
  )
  parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds; default 5 (CPU: 1)")
  parser.add_argument("--trace_dir", default=None, help="save a jax.profiler trace of one step per variant here")
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
  host_malloc.keep_freed_memory()  # as launching.run does for a training run (matters on a CPU)
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
  rounds = args.rounds or (1 if on_cpu else 5)
  variants = [v for v in (args.variants or ("baseline" if on_cpu else ",".join(VARIANTS))).split(",") if v]
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    raise ValueError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
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
  for seq_len, batch_size in zip(seq_lens, batch_sizes):
    shape = dict(batch_size=batch_size, seq_len=seq_len, steps=steps, warmup=warmup, rounds=rounds)
    for row in measure_ab(cfg, variants, **shape, dtype=args.dtype, trace_dir=args.trace_dir):
      row["mfu"] = row["achieved_tflops"] / peak if peak else None
      rows.append(row)
      mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
      speedup = "" if row["speedup_vs_baseline"] is None else f", x{row['speedup_vs_baseline']:.3f} vs baseline"
      print(
        f"L={seq_len} B={batch_size} {row['variant']}: {row['step_ms']:.1f} ms/step{speedup}, "
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
    "trace_dir": args.trace_dir,
    "rows": rows,
    "best_mfu": max((r["mfu"] for r in rows if r["mfu"] is not None), default=None),
    "host_malloc_kept": host_malloc.kept(),
  }


def write(result: dict[str, Any], name: str = "gpu_mfu") -> None:
  table = []
  for r in result["rows"]:
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    speedup = "" if r["speedup_vs_baseline"] is None else f" (x{r['speedup_vs_baseline']:.3f} vs baseline)"
    table.append(
      (
        f"L={r['seq_len']}, B={r['batch_size']} x 2 sides, {r['variant']}",
        f"{r['tokens_per_s']:,.0f} tokens/s; {r['step_ms']:.1f} ms/step{speedup}, median of {r['rounds']} "
        f"rounds of {r['steps']}; "
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
    common.malloc_row(result.get("host_malloc_kept", False)),
  ]
  common.write_result(name, result, table)


if __name__ == "__main__":
  main(sys.argv[1:])
