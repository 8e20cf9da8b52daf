import pytest

from postembed_jax.serving.metrics import Histogram, ServiceMetrics


def test_histogram_is_cumulative_with_upper_bound_quantiles():
  h = Histogram((0.1, 1.0, 10.0))
  for value in [0.05] * 50 + [0.5] * 40 + [5.0] * 9 + [50.0]:
    h.observe(value)
  s = h.snapshot()
  assert s["count"] == 100 and s["sum"] == pytest.approx(2.5 + 20 + 45 + 50)
  assert s["buckets"] == {"0.1": 50, "1.0": 90, "10.0": 99, "+Inf": 100}
  assert (s["p50"], s["p90"], s["p99"]) == (0.1, 1.0, 10.0)
  h.observe(100.0, count=10)
  assert h.snapshot()["p99"] == float("inf")
  assert Histogram((1.0,)).snapshot()["p50"] is None


def test_service_metrics_count_batches_and_smooth_the_rate():
  m = ServiceMetrics()
  m.observe_batch(10, 1.0)
  m.observe_batch(20, 1.0)
  m.count("posts_embedded", 30)
  s = m.snapshot()
  assert s["batches"] == 2 and s["posts_embedded"] == 30
  assert s["embed_rate_posts_per_s"] == pytest.approx(0.8 * 10 + 0.2 * 20)
  assert s["batch_size"]["buckets"]["16"] == 1 and s["embed_batch_seconds"]["count"] == 2
