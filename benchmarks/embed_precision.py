"""Smaller stored vectors from the batch job: retrieval quality of each ``config.precision`` and ``config.dim``
against float32, on real posts.

Real Debian descriptions (train split, distinct, seeded order) are the corpus and descriptions of the test split the
queries. Both are embedded once with the model in float32, then passed through the batch job's own storage path
(serving/vectors.py: ``to_table`` -> Parquet -> ``decode``) at each precision and width, and searched exactly by
cosine, queries stored like the corpus. recall@10 is the share of each query's float32 top-10 found in the top-10
of the smaller vectors. Widths: those the export was trained at (postembed.json ``matryoshka_widths``); for a model
without them (the default all-MiniLM-L6-v2) the same prefixes are measured as a reference and marked as such, since
``--config.dim`` refuses them.

  python -m benchmarks.embed_precision                          # ~5 min on 2 busy cores, most of it embedding
  python -m benchmarks.embed_precision --model workdirs/mtl/export --posts 3000 --queries 300
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks import common
from postembed_jax.serving import vectors

K = 10
REFERENCE_WIDTHS = (32, 64, 128, 192)  # prefixes measured on a model not trained with Matryoshka widths


def stored(ids: list[str], x: np.ndarray, model: str, precision: str, width: int, folder: Path):
  """``x`` written and read back as the batch job stores it; also the Parquet file's size in bytes."""
  schema = vectors.output_schema(model, x.shape[1], 128, precision, width)
  path = folder / f"{precision}-{width}.parquet"
  pq.write_table(vectors.to_table(ids, x, schema), path)
  return vectors.decode(pq.read_table(path)), path.stat().st_size


def top_k(corpus: np.ndarray, queries: np.ndarray) -> np.ndarray:
  corpus = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  return np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :K]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
  return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth)]))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="all-MiniLM-L6-v2")
  parser.add_argument("--posts", type=int, default=2000)
  parser.add_argument("--queries", type=int, default=200)
  parser.add_argument("--max-length", type=int, default=128)
  args = parser.parse_args(argv)
  from postembed_jax.models.embedder import Embedder

  embedder = Embedder.from_pretrained(args.model, max_length=args.max_length)
  corpus = embedder.embed(common.debian_descriptions(args.posts, "train"), progress=True)
  queries = embedder.embed(common.debian_descriptions(args.queries, "test"), progress=True)
  dim = embedder.dim
  trained = vectors.supported_widths(args.model)
  widths = trained or tuple(w for w in REFERENCE_WIDTHS if w < dim) + (dim,)
  truth = top_k(corpus, queries)
  rows, results = [], []
  with tempfile.TemporaryDirectory() as folder:
    for width in sorted(widths, reverse=True):
      for precision in vectors.PRECISIONS:
        if width != dim and precision != "float32":
          continue  # widths at float32 only: the two reductions compose, and each is measured on its own
        c, size = stored([str(i) for i in range(len(corpus))], corpus, args.model, precision, width, Path(folder))
        q, _ = stored([str(i) for i in range(len(queries))], queries, args.model, precision, width, Path(folder))
        r = recall(top_k(c, q), truth)
        kind = "a trained width" if trained else "prefix of a model not trained for it"
        label = f"{precision}, dim {width}" + ("" if width == dim else f", {kind}")
        results.append(dict(precision=precision, width=width, recall_at_10=r, parquet_bytes_per_post=size / len(c)))
        rows.append((label, f"recall@10 {r:.3f}, {size / len(c):.1f} Parquet bytes per post"))
  result = dict(
    command=("python -m benchmarks.embed_precision " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
    model=args.model,
    dim=dim,
    max_length=args.max_length,
    posts=len(corpus),
    queries=len(queries),
    matryoshka_widths=list(trained) if trained else None,
    results=results,
    machine=common.machine(),
  )
  common.write_result("embed_precision", result, rows)
  return result


if __name__ == "__main__":
  main()
