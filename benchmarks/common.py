"""Shared benchmark plumbing: real Debian texts, interleaved timing (fair on a noisy shared machine), results."""

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def debian_descriptions(n: int, split: str = "train", seed: int = 0) -> list[str]:
  """``n`` distinct English long descriptions from the Debian corpus (built on first use), in a seeded order."""
  from postembed_jax.data import debian

  texts = sorted({r["description"] for r in debian.load_records(split) if r["description"].strip()})
  order = np.random.default_rng(seed).permutation(len(texts))[:n]
  return [texts[i] for i in order]


def interleaved_timings(fns: dict, repeats: int) -> dict[str, list[float]]:
  """Runs the named functions in turn, ``repeats`` rounds, so that machine load hits all alike; returns each one's
  wall times in seconds."""
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def machine() -> dict:
  import jax

  return {
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "cpus": os.cpu_count(),
    "jax_backend": jax.default_backend(),
    "jax": jax.__version__,
  }


def malloc_row(kept: bool) -> tuple[str, str]:
  """The results row saying which malloc settings a run had (``host_malloc.kept()``, postembed_jax/host_malloc.py)."""
  return "malloc", "freed memory kept (postembed_jax.host_malloc)" if kept else "glibc's settings"


def malloc_name(name: str, kept: bool) -> str:
  """``name`` for a run under host_malloc, ``name_glibc_malloc`` for its control under glibc's settings."""
  return name if kept else f"{name}_glibc_malloc"


def write_result(name: str, result: dict, rows: list[tuple[str, str]]) -> None:
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
  lines = [f"# {name}", "", f"Command: `{result['command']}`", "", "| measure | value |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in rows]
  (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
