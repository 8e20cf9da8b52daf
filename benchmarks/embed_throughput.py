"""Posts/s of the batch embedding path (launch/embed.py) against sentence-transformers' `encode`, same model,
same maximum length, same real Debian long descriptions, in one run; checks both outputs agree.

  python -m benchmarks.embed_throughput [--posts 2000] [--max_length 128] [--repeats 3]

Writes benchmarks/results/embed_throughput.{json,md}.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--posts", type=int, default=2000)
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  import pyarrow.parquet as pq
  import torch
  from sentence_transformers import SentenceTransformer

  from postembed_jax.models import hf_io
  from postembed_jax.models.embedder import Embedder
  from postembed_jax.serving import batch_embed

  texts = common.debian_descriptions(args.posts)
  model_dir = hf_io.resolve_model_dir("all-MiniLM-L6-v2")
  ours = Embedder.from_pretrained("all-MiniLM-L6-v2", max_length=args.max_length, batch_size=args.batch_size)
  reference = SentenceTransformer(str(model_dir), device="cpu")
  reference.max_seq_length = args.max_length

  with tempfile.TemporaryDirectory() as tmp:
    posts = Path(tmp) / "posts.jsonl"
    posts.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = Path(tmp) / "emb.parquet"

    def run_ours():
      batch_embed.embed_file(ours, posts, out, progress=False)

    def run_reference():
      return reference.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)

    ours.embed(texts[:256])  # compile every bucket shape once; excluded from the timing, like torch's warm-up
    run_reference()
    ours_s, ref_s = common.interleaved_timings(run_ours, run_reference, args.repeats)
    mine = np.stack(pq.read_table(out).column("embedding").to_numpy(zero_copy_only=False))
  theirs = run_reference()
  max_diff = float(np.abs(mine - theirs).max())

  result = {
    "command": "python -m benchmarks.embed_throughput " + " ".join(f"--{k}={v}" for k, v in vars(args).items()),
    "machine": common.machine(),
    "torch_threads": torch.get_num_threads(),
    "posts": len(texts),
    "max_length": args.max_length,
    "batch_size": args.batch_size,
    "postembed_jax_posts_per_s": len(texts) / min(ours_s),
    "sentence_transformers_posts_per_s": len(texts) / min(ref_s),
    "speedup": min(ref_s) / min(ours_s),
    "max_abs_diff": max_diff,
    "timings_s": {"postembed_jax": ours_s, "sentence_transformers": ref_s},
  }
  assert max_diff < 1e-4, f"outputs disagree: max abs diff {max_diff}"
  common.write_result(
    "embed_throughput",
    result,
    [
      ("postembed_jax (launch/embed.py path)", f"{result['postembed_jax_posts_per_s']:.1f} posts/s"),
      ("sentence-transformers encode", f"{result['sentence_transformers_posts_per_s']:.1f} posts/s"),
      ("speed-up", f"{result['speedup']:.2f}x"),
      ("max abs difference of embeddings", f"{max_diff:.1e}"),
    ],
  )


if __name__ == "__main__":
  main()
