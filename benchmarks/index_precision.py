"""Smaller vectors in the near-line index: recall@10 of usearch's f16, i8 and b1 against float32, on real posts.

Real Debian descriptions (the train split, distinct, seeded order) are embedded once with the service's default
model and settings and cached; queries are distinct descriptions of the test split, none of them in the corpus. For
each ``config.index_dtype`` a ``PostIndex`` is built as the worker builds it (one thread, batches of 32) and
searched two ways: HNSW (what the service uses above ``exact_search_below`` posts) and exact (brute force over the
quantised vectors, what it uses below). The reference is exact float32 search by numpy: recall@10 is the share
of each query's true top-10 found in the returned 10. Also the saved index's bytes per post (vectors and graph)
and the HNSW query latency.

  python -m benchmarks.index_precision    # 40 min on a loaded 2-core CPU embedding (cached: a rerun takes 1-2 min)
  python -m benchmarks.index_precision --posts 20000 --queries 500
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from postembed_jax.serving.index import DTYPES, PostIndex

CACHE = Path("workdirs/bench/index_precision")
K = 10
WORKER_BATCH = 32


def embeddings(name: str, texts: list[str], model: str) -> np.ndarray:
  """Embeds ``texts`` with the service's embedder settings (the model's max_length), cached under CACHE."""
  path = CACHE / f"{name}-{model.replace('/', '_')}-{len(texts)}.npy"
  if path.exists():
    return np.load(path)
  from postembed_jax.models.embedder import Embedder

  vectors = Embedder.from_pretrained(model).embed(texts, progress=True)
  CACHE.mkdir(parents=True, exist_ok=True)
  np.save(path, vectors)
  return vectors


def recall(found: list[tuple[np.ndarray, np.ndarray]], truth: np.ndarray) -> float:
  return float(np.mean([len(set(keys.tolist()) & set(top.tolist())) / K for (keys, _), top in zip(found, truth)]))


def _saved_bytes(index: PostIndex) -> int:
  """Size of the saved index file: vectors plus the HNSW graph (usearch's memory_usage counts reserved capacity)."""
  with tempfile.TemporaryDirectory() as tmp:
    index.save(Path(tmp) / "index.usearch", meta={})
    return (Path(tmp) / "index.usearch").stat().st_size


def measure(dtype: str, corpus: np.ndarray, queries: np.ndarray, truth: np.ndarray, truth_scores: np.ndarray) -> dict:
  index = PostIndex(corpus.shape[1], dtype=dtype, exact_below=0)
  start = time.perf_counter()
  for s in range(0, len(corpus), WORKER_BATCH):
    index.add(np.arange(s, min(s + WORKER_BATCH, len(corpus))), corpus[s : s + WORKER_BATCH])
  build_s = time.perf_counter() - start
  start = time.perf_counter()
  hnsw = [index.search(q, K)[0] for q in queries]  # one query per call, as the service searches
  query_ms = 1000 * (time.perf_counter() - start) / len(queries)
  exact = index.search(queries, K, exact=True)
  # How far the index's scores are from the true cosine of the keys it returns (b1's are Hamming estimates).
  score_error = np.mean(
    [np.abs(scores - corpus[keys.astype(int)] @ q).mean() for (keys, scores), q in zip(hnsw, queries)]
  )
  return dict(
    dtype=dtype,
    recall_at_10_hnsw=round(recall(hnsw, truth), 4),
    recall_at_10_exact=round(recall(exact, truth), 4),
    mean_abs_score_error=round(float(score_error), 4),
    top1_score_true=round(float(truth_scores[:, 0].mean()), 4),
    index_bytes_per_post=round(_saved_bytes(index) / len(corpus)),
    vector_bytes=corpus.shape[1] * {"f32": 4, "f16": 2, "i8": 1, "b1": 1 / 8}[dtype],
    build_s=round(build_s, 2),
    hnsw_query_ms=round(query_ms, 3),
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="all-MiniLM-L6-v2")
  parser.add_argument("--posts", type=int, default=10_000)
  parser.add_argument("--queries", type=int, default=500)
  args = parser.parse_args()

  texts = common.debian_descriptions(args.posts, "train")
  seen = set(texts)
  query_texts = [t for t in common.debian_descriptions(10**9, "test") if t not in seen][: args.queries]
  corpus = embeddings("corpus", texts, args.model)
  queries = embeddings("queries", query_texts, args.model)
  similarities = queries @ corpus.T
  truth = np.argsort(-similarities, axis=1, kind="stable")[:, :K]
  truth_scores = np.take_along_axis(similarities, truth, axis=1)
  rows = [measure(dtype, corpus, queries, truth, truth_scores) for dtype in DTYPES]
  result = dict(
    command=" ".join(["python -m benchmarks.index_precision"] + sys.argv[1:]),
    date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    model=args.model,
    posts=len(texts),
    queries=len(query_texts),
    dim=int(corpus.shape[1]),
    machine=common.machine(),
    results=rows,
  )
  common.write_result(
    "index_precision",
    result,
    [
      (
        r["dtype"],
        f"recall@10 HNSW {r['recall_at_10_hnsw']}, exact {r['recall_at_10_exact']}; "
        f"{r['index_bytes_per_post']} B/post saved (vector {r['vector_bytes']:g} B); "
        f"score error {r['mean_abs_score_error']}; query {r['hnsw_query_ms']} ms; build {r['build_s']} s",
      )
      for r in rows
    ]
    + [
      (
        "corpus",
        f"{len(texts)} train descriptions, {len(query_texts)} test queries, {args.model}, dim {corpus.shape[1]}",
      )
    ],
  )


if __name__ == "__main__":
  main()
