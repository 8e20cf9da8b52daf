"""Token positions a training step computes with and without ``config.pack_pairs``, on the real batches of a
training config: what packing can save on a compute-bound device, measured without timing (so load-independent).

  python -m benchmarks.pack_positions [--config configs/mtl.py] [--batches 200] [--max_length 128]

Each of the first ``--batches`` batches of the config's own iterator (one task per step, as
benchmarks/train_throughput.py runs it) is counted as the step runs it: unpacked, both sides at their bucketed
lengths; packed, both sides' texts in rows of the longer side's length, the row count a multiple of 8 (one device).
Writes benchmarks/results/pack_positions.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np

from benchmarks import common, train_throughput
from postembed_jax.data import mixture, tokenize
from postembed_jax.models import hf_io


def count(batches) -> dict[str, float]:
  """Real tokens, unpacked and packed positions, and packed rows over pair batches."""
  real = unpacked = packed = texts = rows = 0
  for b in batches:
    real += int(np.sum(b["left_mask"]) + np.sum(b["right_mask"]))
    unpacked += int(b["left_ids"].size + b["right_ids"].size)
    p = tokenize.pack_pair_batch(b)["packed_ids"]
    packed, rows, texts = packed + int(p.size), rows + p.shape[0], texts + 2 * len(b["label"])
  return {
    "real_tokens": real,
    "unpacked_positions": unpacked,
    "packed_positions": packed,
    "unpacked_padding": 1 - real / unpacked,
    "packed_padding": 1 - real / packed,
    "position_ratio": unpacked / packed,
    "texts_per_packed_row": texts / rows,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mtl.py")
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_length", type=int, default=128)
  args = parser.parse_args(argv)
  config = train_throughput.load_config(args.config)
  config.data.batch_size, config.data.max_length = args.batch_size, args.max_length
  start = time.perf_counter()
  tokenizer = hf_io.load_tokenizer(hf_io.resolve_model_dir(config.model))
  it = mixture.make_train_iterator(config.data, tokenizer, seed=config.seed)
  by_task = collections.defaultdict(list)
  for _ in range(args.batches):
    b = next(it)
    if "left_ids" in b:  # pair tasks only: classification batches are not packed
      by_task[b["task"]].append(b)
  result = {"all": count([b for bs in by_task.values() for b in bs])}
  result.update({task: count(bs) for task, bs in sorted(by_task.items())})
  result["command"] = "python -m benchmarks.pack_positions " + " ".join(f"--{k}={v}" for k, v in vars(args).items())
  result["wall_s"] = time.perf_counter() - start
  rows = [
    (
      name,
      f"padding {r['unpacked_padding']:.3f} -> {r['packed_padding']:.3f}; {r['position_ratio']:.2f}x fewer positions;"
      f" {r['texts_per_packed_row']:.2f} texts per packed row",
    )
    for name, r in result.items()
    if isinstance(r, dict)
  ]
  common.write_result("pack_positions", result, rows)


if __name__ == "__main__":
  main()
