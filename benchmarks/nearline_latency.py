"""Near-line latency: how long from submitting a post until its embedding is stored and searchable, at a steady
arrival rate of real Debian descriptions, and the highest rate the service sustains before it pushes back.

The real service (launch/serve.py, default config unless overridden) runs in a subprocess on 127.0.0.1; an asyncio
client submits one post per request at fixed, open-loop arrival times (a slow answer never delays the next post).
A post's latency is the server's ``embedded_at`` (stamped in the commit that stores its embedding, just before the
index add) minus the client's send time; both clocks are this machine's. Then a sweep raises the rate until the
service answers 429 or p99 exceeds the target. Finally the saved index is reloaded and its HNSW recall@10 measured
against exact search, with queries the service never saw.

  python -m benchmarks.nearline_latency                       # ~10 min on 2 cores; writes benchmarks/results/
  python -m benchmarks.nearline_latency --model <export dir> --rate 20 --duration 60 --sweep 20,30,40,50,60
  python -m benchmarks.nearline_latency --broker 1,2,4        # through NATS JetStream with 1, 2, 4 worker processes

With ``--broker`` the service runs as in production broker mode: a local nats-server (fsync before every ack), the
API publishing (``--config.queue=nats``) and N ``launch/embed_worker.py`` processes; for each N the rate sweep
runs on a fresh broker and database, and the results join the JSON and Markdown beside the single-process ones.
There a post's latency is the worker's ``embedded_at`` minus the send time; the API's index follows the store
within ``broker.follow_interval_ms`` (10 ms), which GET /posts/{id} waits for before it answers "embedded".
"""

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks import common
from postembed_jax import config_overrides
from postembed_jax.serving.broker_worker import READY_LINE
from postembed_jax.serving.nats_server import NatsServer

REPO = Path(__file__).resolve().parents[1]
TARGET_P99_S = 1.0


def service_config():
  """configs/serve.py's defaults, which the benchmarked service runs with (plus the flags it is given)."""
  return config_overrides.load_config(str(REPO / "configs" / "serve.py"))


class Service:
  """launch/serve.py in a subprocess; the port is the one uvicorn reports."""

  def __init__(self, workdir: Path, flags: list[str], startup_timeout_s: float = 900):
    self.log_path = workdir / "service.log"
    self._log = open(self.log_path, "w")
    self.proc = subprocess.Popen(
      [
        sys.executable,
        "launch/serve.py",
        "--config",
        "configs/serve.py",
        "--config.port=0",
        f"--config.db_path={workdir / 'posts.sqlite3'}",
        f"--config.index_path={workdir / 'posts.usearch'}",
        "--config.access_log=False",
        *flags,
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    self.url = None
    ready = threading.Event()

    def read():
      for line in self.proc.stdout:
        self._log.write(line)
        self._log.flush()
        match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if match:
          self.url = match.group(1)
          ready.set()

    threading.Thread(target=read, daemon=True).start()
    start = time.monotonic()
    if not ready.wait(startup_timeout_s):
      self.stop(signal.SIGKILL)
      raise RuntimeError(f"service did not start; see {self.log_path}")
    self.startup_s = time.monotonic() - start

  def stop(self, sig=signal.SIGTERM) -> None:
    if self.proc.poll() is None:
      os.kill(self.proc.pid, sig)
    try:
      self.proc.wait(120)
    except subprocess.TimeoutExpired:
      os.kill(self.proc.pid, signal.SIGKILL)
      self.proc.wait(30)


async def run_phase(
  url: str, texts: list[str], first_id: int, rate: float, duration_s: float, per_request: int = 1
) -> dict:
  """Open-loop arrivals at ``rate`` posts/s, ``per_request`` posts per request (POST /posts or /posts/batch); per
  post: send time, answer, ack time. Samples the queue depth too."""
  n = int(rate * duration_s) // per_request * per_request
  sends, acks, codes = np.zeros(n), np.zeros(n), np.zeros(n, int)
  depths, failures, retry_after = [], [], []
  # Idle connections expire before uvicorn's 5 s keep-alive timeout, so no request races a closing connection.
  limits = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=2.0)
  async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

    async def send(first):
      posts = slice(first, first + per_request)
      body = [dict(id=f"b{first_id + i}", text=texts[i]) for i in range(first, first + per_request)]
      sends[posts] = time.time()
      try:
        r = await (
          client.post("/posts", json=body[0])
          if per_request == 1
          else client.post("/posts/batch", json=dict(posts=body))
        )
        codes[posts] = r.status_code
        if r.status_code == 429:
          retry_after.append(int(r.headers["Retry-After"]))
        elif r.status_code != 202:
          failures.append(f"{r.status_code}: {r.text[:200]}")
      except httpx.HTTPError as e:
        codes[posts] = -1
        failures.append(f"{type(e).__name__}: {e}")
      acks[posts] = time.time()

    async def sample_depth(stop):
      # Accepted and not yet embedded: the store's queue, or in broker mode the stream's backlog.
      embedded_before = (await client.get("/health")).json()["with_embedding"]
      while not stop.is_set():
        embedded = (await client.get("/health")).json()["with_embedding"] - embedded_before
        depths.append(int(np.sum(codes == 202)) - embedded)
        await asyncio.sleep(0.5)

    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_depth(stop))
    start = time.monotonic()
    tasks = []
    for first in range(0, n, per_request):
      delay = start + first / rate - time.monotonic()
      if delay > 0:
        await asyncio.sleep(delay)
      tasks.append(asyncio.create_task(send(first)))
    await asyncio.gather(*tasks)
    stop.set()
    await sampler
  ids = [f"b{first_id + i}" for i in range(n)]
  return dict(
    ids=ids,
    sends=sends,
    acks=acks,
    codes=codes,
    max_queue_depth=max(depths, default=0),
    achieved_rate=n / (sends.max() - sends.min() + per_request / rate),
    failures=failures,
    retry_after=retry_after,
  )


def wait_drained(client: httpx.Client, embedded: int, timeout_s: float = 600) -> float:
  """Seconds until the service holds ``embedded`` embeddings (every post of these runs is new)."""
  start = time.monotonic()
  while client.get("/health").json()["with_embedding"] < embedded and time.monotonic() - start < timeout_s:
    time.sleep(0.1)
  return time.monotonic() - start


def summarize(client: httpx.Client, phase: dict, rate: float) -> dict:
  accepted = [i for i, c in enumerate(phase["codes"]) if c == 202]
  latency = []
  for i in accepted:
    post = client.get(f"/posts/{phase['ids'][i]}").json()
    latency.append(post["embedded_at"] - phase["sends"][i])
  latency = np.array(latency)
  ack = (phase["acks"] - phase["sends"])[accepted]
  pct = lambda v, q: round(float(np.percentile(v, q)), 4) if len(v) else None
  return dict(
    rate=rate,
    achieved_rate=round(phase["achieved_rate"], 2),
    posts=len(phase["codes"]),
    accepted=len(accepted),
    rejected_429=int(np.sum(phase["codes"] == 429)),
    errors=int(np.sum((phase["codes"] != 202) & (phase["codes"] != 429))),
    max_queue_depth=phase["max_queue_depth"],
    failures=phase["failures"][:5],
    retry_after_s=(
      dict(min=min(phase["retry_after"]), max=max(phase["retry_after"])) if phase["retry_after"] else None
    ),
    searchable_s=dict(
      p50=pct(latency, 50),
      p90=pct(latency, 90),
      p99=pct(latency, 99),
      max=pct(latency, 100),
      mean=round(float(latency.mean()), 4) if len(latency) else None,
    ),
    ack_s=dict(p50=pct(ack, 50), p99=pct(ack, 99), max=pct(ack, 100)),
  )


def index_recall(workdir: Path, model: str, max_length, queries: list[str], k: int = 10) -> dict:
  """HNSW (as saved by the service and reloaded) vs brute force, for queries that are not in the index."""
  from postembed_jax.models.embedder import Embedder
  from postembed_jax.serving.index import PostIndex
  from postembed_jax.serving.store import PostStore

  loaded, _ = PostIndex.load(workdir / "posts.usearch")
  store = PostStore(workdir / "posts.sqlite3")
  try:
    keys, vectors = zip(*[(k_, v) for ks, vs in store.embeddings_since(0) for k_, v in zip(ks, vs)])
  finally:
    store.close()
  keys, vectors = np.array(keys), np.stack(vectors)
  q = Embedder.from_pretrained(model, max_length=max_length).embed(queries)
  exact = keys[np.argsort(-(q @ vectors.T), axis=1)[:, :k]]
  approx = loaded.search(q, k, exact=False)
  recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / k for (a, _), e in zip(approx, exact)])
  return dict(indexed=len(loaded), queries=len(queries), k=k, recall=round(float(recall), 4))


class Phases:
  """Runs phases against one service, each with posts it has not seen; waits after each until all are embedded."""

  def __init__(self, url: str, texts: list[str]):
    self.url, self.texts, self.used, self.accepted = url, texts, 0, 0
    self.client = httpx.Client(base_url=url, timeout=60)

  def __call__(self, rate: float, duration: float, per_request: int = 1) -> dict:
    n = int(rate * duration)
    if self.used + n > len(self.texts):
      raise SystemExit(f"Only {len(self.texts)} distinct posts; lower the rates or durations.")
    posts = self.texts[self.used : self.used + n]
    result = asyncio.run(run_phase(self.url, posts, self.used, rate, duration, per_request))
    self.used += n
    self.accepted += int(np.sum(result["codes"] == 202))
    drain_s = wait_drained(self.client, self.accepted)
    summary = summarize(self.client, result, rate)
    summary["drain_after_phase_s"] = round(drain_s, 2)
    print(json.dumps(summary), flush=True)
    return summary

  def sweep(self, rates: list[float], duration: float, *, always: int = 0) -> tuple[list[dict], float | None]:
    """Phases at rising rates until one is not sustained (a 429, an error, or p99 over the target), the first
    ``always`` of them in any case; returns them and the highest rate sustained together with every lower one."""
    phases, best, held = [], None, True
    for i, rate in enumerate(rates):
      p = self(rate, duration)
      phases.append(p)
      held = held and not (p["rejected_429"] or p["errors"] or p["searchable_s"]["p99"] > TARGET_P99_S)
      if held:
        best = rate
      elif i + 1 >= always:
        break
    return phases, best


def start_workers(workdir: Path, flags: list[str], n: int, timeout_s: float = 900) -> list[subprocess.Popen]:
  """``n`` launch/embed_worker.py processes, returned once each has subscribed."""
  logs = [workdir / f"worker{i}.log" for i in range(n)]
  procs = [
    subprocess.Popen(
      [sys.executable, "launch/embed_worker.py", "--config", "configs/serve.py", *worker_flags(workdir, flags)],
      cwd=REPO,
      stdout=open(log, "w"),
      stderr=subprocess.STDOUT,
    )
    for log in logs
  ]
  deadline = time.monotonic() + timeout_s
  for proc, log in zip(procs, logs):
    while READY_LINE not in log.read_text():
      if proc.poll() is not None or time.monotonic() > deadline:
        stop_all(procs)
        raise RuntimeError(f"embed worker did not start; see {log}:\n{log.read_text()[-2000:]}")
      time.sleep(0.2)
  return procs


def worker_flags(workdir: Path, flags: list[str]) -> list[str]:
  return [f"--config.db_path={workdir / 'posts.sqlite3'}", f"--config.index_path={workdir / 'posts.usearch'}", *flags]


def stop_all(procs: list[subprocess.Popen]) -> None:
  for proc in procs:
    if proc.poll() is None:
      proc.terminate()
  for proc in procs:
    try:
      proc.wait(120)
    except subprocess.TimeoutExpired:
      proc.kill()


def run_broker(args, texts: list[str], flags: list[str], write) -> dict:
  """The sweep through a real broker, once per worker count, each on a fresh broker and database; ``write`` gets
  the report after each worker count."""
  report = dict(
    command=" ".join(["python -m benchmarks.nearline_latency"] + sys.argv[1:]),
    date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    machine_before=machine(),
    sweep_duration_s=args.sweep_duration,
    runs=[],
  )
  rates = [float(r) for r in args.broker_sweep.split(",")]
  for n in [int(w) for w in args.broker.split(",")]:
    with tempfile.TemporaryDirectory(prefix="nearline_broker_bench_") as tmp:
      workdir = Path(tmp)
      with NatsServer(workdir / "nats") as nats:
        broker_flags = [*flags, "--config.queue=nats", f"--config.broker.url={nats.url}"]
        start = time.monotonic()
        service = Service(workdir, broker_flags)
        workers = []
        try:
          workers = start_workers(workdir, broker_flags, n)
          startup_s = time.monotonic() - start
          phases = Phases(service.url, texts)
          phases(rates[0], 3.0)  # warms the HTTP path and connection pool; not reported
          sweep, best = phases.sweep(rates, args.sweep_duration, always=args.broker_always)
          stats = phases.client.get("/stats").json()
          phases.client.close()
        finally:
          stop_all(workers)
          service.stop()
      run = dict(workers=n, startup_s=round(startup_s, 1), sweep=sweep, max_sustainable_rate=best, api_stats=stats)
      report["runs"].append(run)
      report["machine_after"] = machine()
      write(report)
  return report


def machine() -> dict:
  """common.machine() plus the load average: other jobs on a shared machine move these figures."""
  return dict(common.machine(), load_average_1_5_15=[round(x, 2) for x in os.getloadavg()])


def overload_line(p: dict, max_queue: int) -> str:
  retry = p["retry_after_s"] and f"Retry-After {p['retry_after_s']['min']}-{p['retry_after_s']['max']} s"
  return (
    f"Overload, {p['rate']:.0f} posts/s offered in batch requests for {p['posts'] / p['rate']:.0f} s with the "
    f"queue bounded at {max_queue}: "
    f"{p['rejected_429']} of {p['posts']} posts answered 429 ({retry or 'none'}), {p['errors']} errors; "
    f"all {p['accepted']} accepted posts were embedded (queue drained {p['drain_after_phase_s']} s after "
    f"the phase; p99 {p['searchable_s']['p99']} s).\n"
  )


def markdown(report: dict) -> str:
  broker = broker_markdown(report["broker"]) if "broker" in report else []
  if "steady" not in report:
    return "\n".join(["# Near-line latency benchmark", "", *broker])
  s = report["steady"]
  lines = [
    "# Near-line latency benchmark",
    "",
    f"Command: `{report['command']}`  ",
    f"Date: {report['date']}  ",
    f"Machine: {report['machine_before']['processor']}, {report['machine_before']['cpus']} cores; load average "
    f"before {report['machine_before']['load_average_1_5_15']}, "
    f"after {report['machine_after']['load_average_1_5_15']} "
    "(other jobs shared the machine when the load is above ~2)  ",
    f"Service: model `{report['model']}`, flags `{' '.join(report['service_flags']) or '(defaults)'}`, "
    f"startup incl. warm-up {report['service_startup_s']:.0f} s",
    "",
    f"## Steady arrival: {s['rate']} posts/s for {report['duration_s']:.0f} s of real Debian descriptions",
    "",
    "| submission -> searchable | p50 | p90 | p99 | max |",
    "| --- | --- | --- | --- | --- |",
    f"| seconds | {s['searchable_s']['p50']} | {s['searchable_s']['p90']} | {s['searchable_s']['p99']} | "
    f"{s['searchable_s']['max']} |",
    "",
    f"Target p99 <= {TARGET_P99_S} s: **{'met' if s['searchable_s']['p99'] <= TARGET_P99_S else 'missed'}**. "
    f"Acknowledgement (durable commit + HTTP): p50 {s['ack_s']['p50']} s, p99 {s['ack_s']['p99']} s. "
    f"{s['accepted']}/{s['posts']} accepted, max queue depth {s['max_queue_depth']}.",
    "",
    "## Rate sweep",
    "",
    "| offered posts/s | achieved | accepted | 429 | max queue | p50 s | p99 s |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for p in report["sweep"]:
    lines.append(
      f"| {p['rate']} | {p['achieved_rate']} | {p['accepted']} | {p['rejected_429']} | "
      f"{p['max_queue_depth']} | {p['searchable_s']['p50']} | {p['searchable_s']['p99']} |"
    )
  r = report["index_recall"]
  lines += [
    "",
    f"Highest sustainable rate (no 429, p99 <= {TARGET_P99_S} s): **{report['max_sustainable_rate']} posts/s**.",
    "",
    overload_line(report["overload"], report["max_queue"]),
    f"HNSW recall@{r['k']} against exact search over the {r['indexed']} indexed posts (saved index reloaded, "
    f"{r['queries']} unseen descriptions as queries): **{r['recall']}**.",
    "",
    *broker,
  ]
  return "\n".join(lines)


def broker_markdown(b: dict) -> list[str]:
  lines = [
    "## Through the broker (NATS JetStream, `--config.queue=nats`)",
    "",
    f"Command: `{b['command']}`  ",
    f"Date: {b['date']}  ",
    f"Machine: {b['machine_before']['processor']}, {b['machine_before']['cpus']} cores; load average before "
    f"{b['machine_before']['load_average_1_5_15']}, after {b['machine_after']['load_average_1_5_15']}  ",
    f"Model `{b['model']}`; a local nats-server (`sync_interval: always`), the API, and N embed worker processes, "
    f"all on this machine with the client; {b['sweep_duration_s']:.0f} s per rate.",
    "",
    "| workers | offered posts/s | achieved | accepted | errors | max backlog | p50 s | p99 s | ack p50 | ack p99 |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for run in b["runs"]:
    for p in run["sweep"]:
      lines.append(
        f"| {run['workers']} | {p['rate']} | {p['achieved_rate']} | {p['accepted']} | {p['errors']} | "
        f"{p['max_queue_depth']} | {p['searchable_s']['p50']} | {p['searchable_s']['p99']} | "
        f"{p['ack_s']['p50']} | {p['ack_s']['p99']} |"
      )
  lines += ["", f"Highest rate held with p99 <= {TARGET_P99_S} s, by worker count: "]
  lowest = b["runs"][0]["sweep"][0]["rate"]
  held = lambda rate: f"{rate} posts/s" if rate else f"none of the rates tried (from {lowest})"
  lines[-1] += ", ".join(f"{r['workers']}: **{held(r['max_sustainable_rate'])}**" for r in b["runs"]) + "."
  return lines + [""]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="all-MiniLM-L6-v2")
  parser.add_argument("--rate", type=float, default=20.0)
  parser.add_argument("--duration", type=float, default=60.0)
  parser.add_argument(
    "--sweep",
    default="20,30,40,50,60,80,120,160,240",
    help="rates (posts/s) tried in order; stops after the first that is not sustained",
  )
  parser.add_argument("--sweep_duration", type=float, default=20.0)
  parser.add_argument(
    "--overload",
    type=float,
    default=4.0,
    help="finally offer this multiple of the highest sustained rate, to see back-pressure",
  )
  parser.add_argument(
    "--overload_batch",
    type=int,
    default=16,
    help="posts per request in the overload phase (a bulk producer; one client core can't send single posts that fast)",
  )
  parser.add_argument(
    "--max_queue",
    type=int,
    default=1000,
    help="the service's queue bound for this run (about 10-20 s of work at capacity)",
  )
  parser.add_argument("--split", default="train")
  parser.add_argument("--recall_queries", type=int, default=300)
  parser.add_argument("--service_flag", action="append", default=[], help="extra --config.* flag for the service")
  parser.add_argument(
    "--broker",
    default="",
    help="worker counts, e.g. 1,2,4: run the sweep through NATS JetStream with that many worker processes instead",
  )
  parser.add_argument("--broker_sweep", default="20,50,70,100,140", help="rates of the broker-mode sweep")
  parser.add_argument("--broker_always", type=int, default=2, help="broker-mode rates measured even when not held")
  parser.add_argument("--out", default=str(common.RESULTS / "nearline_latency"))
  args = parser.parse_args()
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the service (finally) when terminated

  # All distinct descriptions, seeded order, without the few longer than the service accepts.
  texts = [t for t in common.debian_descriptions(10**9, args.split) if len(t) <= service_config().max_text_chars]
  queries, texts = texts[: args.recall_queries], texts[args.recall_queries :]
  flags = [
    f"--config.model={args.model}",
    f"--config.max_queue={args.max_queue}",
    "--config.compilation_cache_dir=workdirs/jax_cache",
    *args.service_flag,
  ]
  out_json = Path(args.out + ".json")
  previous = json.loads(out_json.read_text()) if out_json.exists() else {}
  if args.broker:  # the single-process results stay; the broker section is replaced
    section = lambda broker: dict(broker, model=args.model, service_flags=flags)
    run_broker(args, texts, flags, lambda broker: write_report(args.out, dict(previous, broker=section(broker))))
    return
  report = dict(
    command=" ".join(["python -m benchmarks.nearline_latency"] + sys.argv[1:]),
    date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    model=args.model,
    service_flags=flags,
    duration_s=args.duration,
    target_p99_s=TARGET_P99_S,
    max_queue=args.max_queue,
    machine_before=machine(),
  )
  with tempfile.TemporaryDirectory(prefix="nearline_bench_") as tmp:
    workdir = Path(tmp)
    service = Service(workdir, flags)
    report["service_startup_s"] = round(service.startup_s, 1)
    try:
      phase = Phases(service.url, texts)
      phase(args.rate, 3.0)  # warms the HTTP path and connection pool; not reported
      report["steady"] = phase(args.rate, args.duration)
      report["sweep"], report["max_sustainable_rate"] = phase.sweep(
        [float(r) for r in args.sweep.split(",")], args.sweep_duration
      )
      overload = args.overload * (report["max_sustainable_rate"] or args.rate)
      report["overload"] = phase(overload, args.sweep_duration, per_request=args.overload_batch)
      report["server_metrics"] = phase.client.get("/stats").json()
      phase.client.close()
    finally:
      service.stop()
    report["index_recall"] = index_recall(workdir, args.model, None, queries)
  report["machine_after"] = machine()
  if "broker" in previous:
    report["broker"] = previous["broker"]
  write_report(args.out, report)


def write_report(out: str, report: dict) -> None:
  Path(out).parent.mkdir(parents=True, exist_ok=True)
  Path(out + ".json").write_text(json.dumps(report, indent=1) + "\n")
  Path(out + ".md").write_text(markdown(report))
  print(markdown(report))


if __name__ == "__main__":
  main()
