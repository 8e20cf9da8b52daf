"""Counters and latency histograms of the near-line service: Prometheus text at GET /metrics, the same figures as
JSON (with bucket-bound quantiles) at GET /stats.

Each service owns its registry (not prometheus_client's global one), so two services in one process, as in the
tests, count apart.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: spans a single short post on a warm model (ms) to a worker that is minutes behind.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFIX = "postembed_"
COUNTERS = dict(
  posts_accepted="Posts stored for embedding (created or edited).",
  posts_unchanged="Posts re-sent with the text they already had.",
  posts_deleted="Posts deleted.",
  requests_rejected_busy="Requests answered 429 because the queue was full.",
  posts_embedded="Embeddings stored and indexed.",
  batches="Worker micro-batches embedded.",
  worker_errors="Worker batches that failed (and were retried).",
  texts_embedded_sync="Texts embedded by POST /v1/embeddings.",
)
GAUGES = dict(queue_depth="Posts accepted and not yet embedded.", indexed="Posts in the nearest-neighbour index.")


class ServiceMetrics:
  """Everything the worker and the API count; thread-safe (prometheus_client's metrics are)."""

  def __init__(self):
    self.registry = CollectorRegistry()
    self._counters = {name: Counter(PREFIX + name, doc, registry=self.registry) for name, doc in COUNTERS.items()}
    self._gauges = {name: Gauge(PREFIX + name, doc, registry=self.registry) for name, doc in GAUGES.items()}
    histogram = lambda name, doc, buckets, **kw: Histogram(
      PREFIX + name, doc, buckets=buckets, registry=self.registry, **kw
    )
    self.embed_batch_seconds = histogram("embed_batch_seconds", "Model time of one micro-batch.", LATENCY_BUCKETS)
    self.submit_to_searchable_seconds = histogram(
      "submit_to_searchable_seconds", "Per post: accepted -> stored and in the index.", LATENCY_BUCKETS
    )
    self.batch_size = histogram("batch_size", "Posts per worker micro-batch.", BATCH_BUCKETS)
    self.request_seconds = histogram(
      "http_request_seconds",
      "HTTP requests by route template, method and status.",
      LATENCY_BUCKETS,
      labelnames=("route", "method", "status"),
    )
    self._lock = threading.Lock()
    self.embed_rate = None  # posts per second of model time, smoothed; sizes Retry-After

  def count(self, name: str, n: int = 1) -> None:
    self._counters[name].inc(n)

  def set_gauge(self, name: str, value: float) -> None:
    self._gauges[name].set(value)

  def observe_batch(self, size: int, seconds: float) -> None:
    self.embed_batch_seconds.observe(seconds)
    self.batch_size.observe(size)
    self._counters["batches"].inc()
    rate = size / max(seconds, 1e-6)
    with self._lock:
      self.embed_rate = rate if self.embed_rate is None else 0.8 * self.embed_rate + 0.2 * rate

  def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
    self.request_seconds.labels(route=route, method=method, status=str(status)).observe(seconds)

  def prometheus_text(self) -> bytes:
    return generate_latest(self.registry)

  def snapshot(self) -> dict:
    """The JSON of /stats: counters and gauges by name, each unlabelled histogram summarised."""
    out = dict(embed_rate_posts_per_s=self.embed_rate)
    for family in self.registry.collect():
      name = family.name.removeprefix(PREFIX)
      if family.type in ("counter", "gauge"):
        out[name] = int(family.samples[0].value)
      elif family.type == "histogram" and name != "http_request_seconds":
        out[name] = summarize_histogram(family.samples)
    return out


def summarize_histogram(samples) -> dict:
  """count, sum, mean, cumulative buckets by upper bound, and p50/p90/p99 as bucket upper bounds (upper estimates)."""
  buckets = {s.labels["le"]: int(s.value) for s in samples if s.name.endswith("_bucket")}
  n = buckets["+Inf"]
  total = next(s.value for s in samples if s.name.endswith("_sum"))

  def quantile(q: float):
    if not n:
      return None
    return next(float(le) for le, cumulative in buckets.items() if cumulative >= q * n)

  return dict(
    count=n,
    sum=total,
    mean=total / n if n else None,
    buckets=buckets,
    p50=quantile(0.5),
    p90=quantile(0.9),
    p99=quantile(0.99),
  )
