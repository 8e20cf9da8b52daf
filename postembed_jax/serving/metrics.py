"""Counters and latency histograms of the near-line service, read by GET /metrics (JSON)."""

from __future__ import annotations

import bisect
import threading

# Seconds: spans a single short post on a warm model (ms) to a worker that is minutes behind.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
  """Cumulative-bucket histogram (Prometheus' shape); quantiles are bucket upper bounds, i.e. upper estimates."""

  def __init__(self, buckets: tuple[float, ...]):
    self.buckets = buckets
    self._counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
    self._sum = 0.0
    self._lock = threading.Lock()

  def observe(self, value: float, count: int = 1) -> None:
    with self._lock:
      self._counts[bisect.bisect_left(self.buckets, value)] += count
      self._sum += value * count

  def snapshot(self) -> dict:
    with self._lock:
      counts, total = list(self._counts), self._sum
    n = sum(counts)
    cumulative, running = [], 0
    for c in counts:
      running += c
      cumulative.append(running)

    def quantile(q: float):
      if not n:
        return None
      i = bisect.bisect_left(cumulative, q * n)
      return self.buckets[i] if i < len(self.buckets) else float("inf")

    return dict(
      count=n,
      sum=total,
      mean=total / n if n else None,
      buckets={**{str(b): c for b, c in zip(self.buckets, cumulative)}, "+Inf": n},
      p50=quantile(0.5),
      p90=quantile(0.9),
      p99=quantile(0.99),
    )


class ServiceMetrics:
  """Everything the worker and the API count; thread-safe."""

  def __init__(self):
    self.embed_batch_seconds = Histogram(LATENCY_BUCKETS)  # model time of one micro-batch
    self.submit_to_searchable_seconds = Histogram(LATENCY_BUCKETS)  # per post: accepted -> in the index
    self.batch_size = Histogram(BATCH_BUCKETS)
    self._counters = dict(
      posts_accepted=0, posts_unchanged=0, requests_rejected_busy=0, posts_embedded=0, batches=0, worker_errors=0
    )
    self._lock = threading.Lock()
    self.embed_rate = None  # posts per second of model time, smoothed; sizes Retry-After

  def count(self, name: str, n: int = 1) -> None:
    with self._lock:
      self._counters[name] += n

  def observe_batch(self, size: int, seconds: float) -> None:
    self.embed_batch_seconds.observe(seconds)
    self.batch_size.observe(size)
    rate = size / max(seconds, 1e-6)
    with self._lock:
      self._counters["batches"] += 1
      self.embed_rate = rate if self.embed_rate is None else 0.8 * self.embed_rate + 0.2 * rate

  def snapshot(self) -> dict:
    with self._lock:
      out = dict(self._counters, embed_rate_posts_per_s=self.embed_rate)
    out.update(
      embed_batch_seconds=self.embed_batch_seconds.snapshot(),
      submit_to_searchable_seconds=self.submit_to_searchable_seconds.snapshot(),
      batch_size=self.batch_size.snapshot(),
    )
    return out
