"""Posts/s of the batch embedding path (launch/embed.py) against sentence-transformers' `encode`, same model,
same maximum length, same real Debian long descriptions, in one run; checks that every output agrees.

  python -m benchmarks.embed_throughput [--posts 2000] [--max_length 128] [--repeats 3] [--beam_posts 1000]

Rows, timed in turn round after round (the machine is shared, so the ratios are what to read): our local path
unpacked and packed, sentence-transformers, our path in ``--processes`` processes pinned to one core each (the
posts split between them), and in one process over a data mesh of 8 fake CPU devices and of one CPU device per core
(``config.cpu_devices=-1``; the devices share the cores). Then, apart, the Beam DirectRunner against the local path
on ``--beam_posts`` posts (serving/beam.py's time_against_local).

Every process runs under ``host_malloc.keep_freed_memory()``, as launch/embed.py does; ``POSTEMBED_MALLOC=default``
runs them under glibc's malloc settings instead (results named ``embed_throughput_glibc_malloc``).

Writes benchmarks/results/embed_throughput.{json,md}.
"""

import argparse
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common
from postembed_jax import host_malloc

MODEL = "all-MiniLM-L6-v2"
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _write_posts(path: Path, texts: list[str], ids: range) -> Path:
  path.write_text("".join(json.dumps({"id": i, "text": texts[i]}) + "\n" for i in ids))
  return path


def _worker(conn, posts: str, out: str, xla_flags: str, core: int | None, mesh: bool, devices: int, args) -> None:
  """One embedding process (packed rows): loads and compiles, then runs the local path on ``posts`` at each
  "go". ``devices``: ``config.cpu_devices`` as launch/embed.py applies it."""
  os.environ["XLA_FLAGS"] = xla_flags
  host_malloc.keep_freed_memory()
  if core is not None:
    os.sched_setaffinity(0, {core})
  from postembed_jax import cpu_devices
  from postembed_jax.models.embedder import Embedder, data_mesh
  from postembed_jax.serving import batch_embed

  cpu_devices.use(devices)

  embedder = Embedder.from_pretrained(
    MODEL, max_length=args.max_length, batch_size=args.batch_size, mesh=data_mesh() if mesh else None, pack=True
  )
  batch_embed.embed_file(embedder, posts, out, progress=False)  # compiles every shape
  conn.send("ready")
  while conn.recv() == "go":
    batch_embed.embed_file(embedder, posts, out, progress=False)
    conn.send("done")


class Workers:
  """Processes that embed their posts together at each call: the call's wall time is the slowest one's."""

  def __init__(self, specs: list[dict], args):
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: XLA_FLAGS apply before JAX starts
    self.conns, self.procs = [], []
    for spec in specs:
      parent, child = context.Pipe()
      proc = context.Process(target=_worker, args=(child, *spec.values(), args), daemon=True)
      proc.start()
      self.conns.append(parent)
      self.procs.append(proc)
    for conn in self.conns:
      assert conn.recv() == "ready"

  def __call__(self) -> None:
    for conn in self.conns:
      conn.send("go")
    for conn in self.conns:
      assert conn.recv() == "done"

  def close(self) -> None:
    for conn, proc in zip(self.conns, self.procs):
      conn.send("stop")
      proc.join()


def _read_vectors(paths) -> dict[int, np.ndarray]:
  import pyarrow.parquet as pq

  tables = [pq.read_table(p) for p in paths]
  return {
    int(i): v
    for t in tables
    for i, v in zip(t.column("id").to_pylist(), t.column("embedding").to_numpy(zero_copy_only=False))
  }


def _beam_row(texts: list[str], args, tmp: Path) -> dict | None:
  """serving/beam.py's local-against-Beam timing, or None when that module (the optional beam extra) is absent."""
  try:
    from postembed_jax.serving import beam
  except ModuleNotFoundError:
    return None
  from configs import embed as embed_config

  config = embed_config.get_config()
  config.input = str(_write_posts(tmp / "beam_posts.jsonl", texts, range(min(args.beam_posts, len(texts)))))
  config.output = str(tmp / "beam_out")
  config.max_length, config.batch_size = args.max_length, args.batch_size
  return beam.time_against_local(config, repeats=2)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--posts", type=int, default=2000)
  parser.add_argument("--max_length", type=int, default=128)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--beam_posts", type=int, default=1000)
  args = parser.parse_args()
  host_malloc.keep_freed_memory()

  import torch
  from sentence_transformers import SentenceTransformer

  from postembed_jax.models import hf_io
  from postembed_jax.models.embedder import Embedder
  from postembed_jax.serving import batch_embed

  texts = common.debian_descriptions(args.posts)
  model, tokenizer, _ = hf_io.load_pretrained(MODEL)
  reference = SentenceTransformer(str(hf_io.resolve_model_dir(MODEL)), device="cpu")
  reference.max_seq_length = args.max_length
  n = args.processes

  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    posts = _write_posts(tmp / "posts.jsonl", texts, range(len(texts)))
    shards = [_write_posts(tmp / f"posts-{k}.jsonl", texts, range(k, len(texts), n)) for k in range(n)]
    outs = {}

    def local(name: str, pack: bool):
      embedder = Embedder(model, tokenizer, max_length=args.max_length, batch_size=args.batch_size, pack=pack)
      out = outs.setdefault(name, [tmp / f"{name}.parquet"])[0]
      run = lambda: batch_embed.embed_file(embedder, posts, out, progress=False)
      run()  # compile every shape once; excluded from the timing, like torch's warm-up
      return run

    cores = sorted(os.sched_getaffinity(0))

    def workers(name: str, posts: list[Path], xla_flags: str, *, pinned: bool, mesh: bool, devices=0) -> Workers:
      outs[name] = [tmp / f"{name}-{k}.parquet" for k in range(len(posts))]
      core = lambda k: cores[k % len(cores)] if pinned else None
      specs = [
        dict(posts=str(p), out=str(o), xla_flags=xla_flags, core=core(k), mesh=mesh, devices=devices)
        for k, (p, o) in enumerate(zip(posts, outs[name]))
      ]
      return Workers(specs, args)

    procs = workers(f"{n}_processes", shards, ONE_THREAD, pinned=True, mesh=False)
    fake = workers("8_fake_devices", [posts], "--xla_force_host_platform_device_count=8", pinned=False, mesh=True)
    per_core = workers("device_per_core", [posts], "", pinned=False, mesh=True, devices=-1)
    reference_run = lambda: reference.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)
    reference_run()
    fns = {
      "unpacked": local("unpacked", pack=False),
      "packed": local("packed", pack=True),
      "sentence_transformers": reference_run,
      f"{n}_processes": procs,
      "8_fake_devices": fake,
      "device_per_core": per_core,
    }
    times = common.interleaved_timings(fns, args.repeats)
    for pool in (procs, fake, per_core):
      pool.close()
    theirs = reference_run()
    diffs = {}
    for name, paths in outs.items():
      mine = _read_vectors(paths)
      assert sorted(mine) == list(range(len(texts))), name
      diffs[name] = float(np.abs(np.stack([mine[i] for i in range(len(texts))]) - theirs).max())
    beam_row = _beam_row(texts, args, tmp)

  best = {name: min(t) for name, t in times.items()}
  rate = {name: len(texts) / s for name, s in best.items()}
  st = best["sentence_transformers"]
  result = {
    "command": "python -m benchmarks.embed_throughput " + " ".join(f"--{k}={v}" for k, v in vars(args).items()),
    "machine": common.machine(),
    "host_malloc_kept": host_malloc.kept(),
    "torch_threads": torch.get_num_threads(),
    "posts": len(texts),
    "max_length": args.max_length,
    "batch_size": args.batch_size,
    "posts_per_s": rate,
    "speedup_vs_sentence_transformers": {name: st / s for name, s in best.items()},
    "max_abs_diff_vs_sentence_transformers": diffs,
    "timings_s": times,
    "beam": beam_row,
  }
  assert max(diffs.values()) < 1e-5, f"outputs disagree: {diffs}"
  label = {
    "unpacked": "postembed_jax local path, unpacked",
    "packed": "postembed_jax local path, packed",
    f"{n}_processes": f"postembed_jax, packed, {n} processes of 1 thread, each pinned to a core",
    "8_fake_devices": "postembed_jax, packed, 8 fake CPU devices in one process (a data mesh on 2 cores)",
    "device_per_core": f"postembed_jax, packed, one CPU device per core ({len(cores)}) in one process "
    "(config.cpu_devices=-1, a data mesh)",
  }
  rows = [
    common.malloc_row(result["host_malloc_kept"]),
    ("sentence-transformers encode", f"{rate['sentence_transformers']:.1f} posts/s"),
  ]
  rows += [(label[k], f"{rate[k]:.1f} posts/s, {st / best[k]:.2f}x, max abs diff {diffs[k]:.1e}") for k in label]
  if beam_row is None:
    rows.append(("Beam DirectRunner", "not measured: serving/beam.py (the beam extra) is not installed"))
  else:
    rows.append(
      (
        f"Beam DirectRunner against the local path ({beam_row['posts']} posts)",
        f"{beam_row['beam_s']:.1f} s vs {beam_row['local_s']:.1f} s: {beam_row['overhead']:.2f}x the time, "
        f"max abs diff {beam_row['max_abs_diff']:.1e}",
      )
    )
  common.write_result(common.malloc_name("embed_throughput", result["host_malloc_kept"]), result, rows)


if __name__ == "__main__":
  main()
