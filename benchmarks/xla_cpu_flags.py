"""Which XLA:CPU compiler options make our training step faster on this CPU, and what they do to its numerics.

  python -m benchmarks.xla_cpu_flags [--variants default,fast_math,...] [--rounds 3] [--steps 2]
      [--batch_size 32] [--seq_len 96]

The step is the library's own (``setup.build_random``: forward and backward of the pair loss, clipping, AdamW,
donated state) on a randomly initialised encoder of the shape of the training config's model
(all-MiniLM-L6-v2: 6 layers, hidden 384), float32, dropout on, 50-d projection, one pair batch of
``batch_size`` x ``seq_len`` tokens a side with seeded real-looking lengths (60-100% of ``seq_len``).

Each variant (``VARIANTS``: XLA debug options, the ones ``XLA_FLAGS`` sets) is compiled in this one process with
``jit(...).lower(...).compile(compiler_options=...)``, which XLA validates and applies exactly as it would the
same ``--xla_...`` flags, and which also keys JAX's persistent cache. So every variant runs the same process, the
same inputs and the same start state, and the timed rounds alternate them (the order rotating each round): a
neighbour's load hits all alike. Numerics: the first step's loss and gradient norm of each variant, from the same
state and batch with the same dropout key, against ``default``'s.

Writes benchmarks/results/xla_cpu_flags.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np

from benchmarks import common

# Options that exist in jaxlib 0.10.2 (``XLA_FLAGS=--help``) and could speed up a BERT layer's matrix products,
# elementwise ops or their fusion on an x86 CPU.
VARIANTS: dict[str, dict[str, Any]] = {
  "default": {},
  "fast_math": {"xla_cpu_enable_fast_math": True},  # honours NaNs, infs, division and math functions
  "fast_math_full": {
    "xla_cpu_enable_fast_math": True,
    "xla_cpu_fast_math_honor_functions": False,
    "xla_cpu_fast_math_honor_division": False,
  },
  "onednn": {"xla_cpu_use_onednn": True},
  "onednn_fusion_dot": {"xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
  "xnn_fusion_dot_eltwise": {
    "xla_cpu_experimental_xnn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"
  },
  "xnn_graph_greedy": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
  "ynn_fusion_dot": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
  "no_xnnpack": {"xla_cpu_use_xnnpack": False},
  "fast_runtime_preset": {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"},
  "vector_width_512": {"xla_cpu_prefer_vector_width": 512},
}
TASK = "search"


def xla_flags(options: dict[str, Any]) -> str:
  """The ``XLA_FLAGS`` string of the same options."""
  return " ".join(f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())


def build(batch_size: int, seq_len: int, seed: int = 0) -> dict[str, Any]:
  """The trainer of a random encoder of the training model's shape, its start state and one host pair batch."""
  import jax
  import jax.numpy as jnp

  from postembed_jax.models import hf_io
  from postembed_jax.models.encoder import EncoderConfig
  from postembed_jax.train import setup
  from postembed_jax.train.config import training_config

  config = training_config(TASK)
  config.dtype = "float32"
  config.seed = seed
  cfg = EncoderConfig.from_hf_config(hf_io.read_hf_config(hf_io.resolve_model_dir(config.model)))
  trainer = setup.build_random(config, cfg)
  rng = np.random.default_rng(seed)

  def side():
    ids = rng.integers(1000, cfg.vocab_size, (batch_size, seq_len), dtype=np.int32)
    lengths = rng.integers(int(0.6 * seq_len), seq_len + 1, batch_size)
    lengths[0] = seq_len  # the batch's padded length is its longest text
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    return ids * mask, mask

  (left_ids, left_mask), (right_ids, right_mask) = side(), side()
  batch = dict(task=TASK, left_ids=left_ids, left_mask=left_mask, right_ids=right_ids, right_mask=right_mask)
  batch["label"] = rng.integers(0, 2, batch_size).astype(np.float32)
  start = jax.tree.map(jnp.copy, trainer.state)
  return {"trainer": trainer, "batch": batch, "device_batch": trainer.device_batch(batch), "start": start, "cfg": cfg}


def compile_variant(built: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
  """The step compiled with ``options``, its own copy of the start state, and its first step's numerics."""
  import jax
  import jax.numpy as jnp

  trainer, batch = built["trainer"], built["device_batch"]
  t0 = time.perf_counter()
  step = trainer.step_for(built["batch"]).lower(built["start"], batch).compile(compiler_options=options)
  compile_s = time.perf_counter() - t0
  state = jax.tree.map(jnp.copy, built["start"])
  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  metrics = jax.device_get(metrics)
  first_s = time.perf_counter() - t0
  return {
    "step": step,
    "state": state,
    "compile_s": compile_s,
    "first_step_s": first_s,
    "loss": float(metrics["loss"]),
    "grad_norm": float(metrics["grad_norm"]),
  }


def timed(run: dict[str, Any], batch, steps: int) -> float:
  """Seconds per step of ``steps`` steps (state carried on, metrics read at the end)."""
  import jax

  t0 = time.perf_counter()
  for _ in range(steps):
    run["state"], metrics = run["step"](run["state"], batch)
  jax.block_until_ready((run["state"], metrics))
  return (time.perf_counter() - t0) / steps


def run(args, log=print) -> dict[str, Any]:
  import jax

  names = args.variants.split(",")
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    raise ValueError(f"--variants has unknown {unknown}; choose from {sorted(VARIANTS)}.")
  if names[0] != "default":
    names = ["default"] + [n for n in names if n != "default"]
  built = build(args.batch_size, args.seq_len)
  runs: dict[str, dict[str, Any]] = {}
  for name in names:
    try:
      runs[name] = compile_variant(built, VARIANTS[name])
    except Exception as e:  # an option this build rejects is a result too
      log(f"{name}: failed: {str(e).splitlines()[0][:200]}")
      runs[name] = {"error": str(e).splitlines()[0][:300]}
      continue
    r = runs[name]
    log(f"{name}: compiled in {r['compile_s']:.1f} s, first step {r['first_step_s']:.2f} s, loss {r['loss']:.8f}")
  ok = [n for n in names if "error" not in runs[n]]
  times: dict[str, list[float]] = {n: [] for n in ok}
  for r in range(args.rounds):
    order = ok[r % len(ok) :] + ok[: r % len(ok)]
    for name in order:
      times[name].append(timed(runs[name], built["device_batch"], args.steps))
    log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in ok))

  base = runs["default"]
  rows = []
  for name in names:
    row = {"variant": name, "options": VARIANTS[name], "xla_flags": xla_flags(VARIANTS[name])}
    if "error" in runs[name]:
      rows.append(dict(row, error=runs[name]["error"]))
      continue
    v = runs[name]
    ratios = [b / t for b, t in zip(times["default"], times[name], strict=True)]
    rows.append(
      dict(
        row,
        compile_s=v["compile_s"],
        step_s_median=statistics.median(times[name]),
        step_s=times[name],
        speedup_median=statistics.median(ratios),
        speedup_per_round=ratios,
        loss=v["loss"],
        grad_norm=v["grad_norm"],
        loss_rel_diff=abs(v["loss"] - base["loss"]) / abs(base["loss"]),
        grad_norm_rel_diff=abs(v["grad_norm"] - base["grad_norm"]) / abs(base["grad_norm"]),
      )
    )
  cfg = built["cfg"]
  return {
    "machine": common.machine(),
    "jaxlib": __import__("jaxlib").__version__,
    "model_shape": {"layers": cfg.num_layers, "hidden": cfg.hidden_size, "heads": cfg.num_heads},
    "batch": {"pairs": args.batch_size, "seq_len": args.seq_len, "dtype": "float32"},
    "rounds": args.rounds,
    "steps_per_round": args.steps,
    "devices": [str(d) for d in jax.devices()],
    "rows": rows,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=2, help="timed steps of each variant per round")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--seq_len", type=int, default=96)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  result = run(args)
  result["command"] = "python -m benchmarks.xla_cpu_flags " + " ".join(f"--{k}={v}" for k, v in vars(args).items())
  result["wall_s"] = time.perf_counter() - start
  write(result)


def write(result: dict[str, Any], name: str = "xla_cpu_flags") -> None:
  rows = [
    (
      "machine",
      f"{result['machine']['processor']}, {result['machine']['cpus']} CPUs, jaxlib {result['jaxlib']}",
    ),
    (
      "step",
      f"train step, {result['model_shape']['layers']} layers x {result['model_shape']['hidden']}, "
      f"{result['batch']['pairs']} pairs x {result['batch']['seq_len']} tokens a side, float32",
    ),
    ("timing", f"{result['rounds']} interleaved rounds x {result['steps_per_round']} steps per variant"),
  ]
  for r in result["rows"]:
    if "error" in r:
      rows.append((f"{r['variant']} (`{r['xla_flags']}`)", f"rejected: {r['error']}"))
      continue
    rows.append(
      (
        f"{r['variant']} (`{r['xla_flags'] or 'none'}`)",
        f"{r['step_s_median']:.2f} s/step, {r['speedup_median']:.3f}x default "
        f"(rounds {', '.join(f'{x:.2f}' for x in r['speedup_per_round'])}); loss rel. diff "
        f"{r['loss_rel_diff']:.1e}, grad-norm rel. diff {r['grad_norm_rel_diff']:.1e}; compile {r['compile_s']:.0f} s",
      )
    )
  if "wall_s" in result:
    rows.append(("benchmark wall time", f"{result['wall_s']:.0f} s"))
  common.write_result(name, result, rows)


if __name__ == "__main__":
  main(sys.argv[1:])
