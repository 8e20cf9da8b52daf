import pytest
from prometheus_client.parser import text_string_to_metric_families

from postembed_jax.serving.metrics import ServiceMetrics


def _samples(metrics: ServiceMetrics) -> dict:
  """Every sample of the Prometheus text, parsed back by prometheus_client's own parser."""
  return {
    (s.name, tuple(sorted(s.labels.items()))): s.value
    for family in text_string_to_metric_families(metrics.prometheus_text().decode())
    for s in family.samples
  }


def test_histograms_are_cumulative_with_upper_bound_quantiles():
  m = ServiceMetrics()
  for value in [0.004] * 50 + [0.2] * 40 + [4.0] * 9 + [400.0]:
    m.submit_to_searchable_seconds.observe(value)
  s = m.snapshot()["submit_to_searchable_seconds"]
  assert s["count"] == 100 and s["sum"] == pytest.approx(0.2 + 8 + 36 + 400)
  assert s["buckets"]["0.005"] == 50 and s["buckets"]["0.25"] == 90 and s["buckets"]["5.0"] == 99
  assert s["buckets"]["300.0"] == 99 and s["buckets"]["+Inf"] == 100
  assert (s["p50"], s["p90"], s["p99"]) == (0.005, 0.25, 5.0)
  m.submit_to_searchable_seconds.observe(1000.0)
  m.submit_to_searchable_seconds.observe(1000.0)
  assert m.snapshot()["submit_to_searchable_seconds"]["p99"] == float("inf")
  assert ServiceMetrics().snapshot()["embed_batch_seconds"]["p50"] is None


def test_service_metrics_count_batches_and_smooth_the_rate():
  m = ServiceMetrics()
  m.observe_batch(10, 1.0)
  m.observe_batch(20, 1.0)
  m.count("posts_embedded", 30)
  m.set_gauge("queue_depth", 7)
  s = m.snapshot()
  assert s["batches"] == 2 and s["posts_embedded"] == 30 and s["queue_depth"] == 7
  assert s["embed_rate_posts_per_s"] == pytest.approx(0.8 * 10 + 0.2 * 20)
  assert s["batch_size"]["buckets"]["16.0"] == 1 and s["embed_batch_seconds"]["count"] == 2


def test_prometheus_text_carries_the_same_figures():
  m = ServiceMetrics()
  m.observe_batch(3, 0.02)
  m.count("posts_accepted", 5)
  m.observe_request("/posts/{post_id:path}", "GET", 404, 0.003)
  samples = _samples(m)
  assert samples[("postembed_posts_accepted_total", ())] == 5
  assert samples[("postembed_batches_total", ())] == 1
  assert samples[("postembed_embed_batch_seconds_bucket", (("le", "0.01"),))] == 0
  assert samples[("postembed_embed_batch_seconds_bucket", (("le", "0.025"),))] == 1
  assert samples[("postembed_batch_size_sum", ())] == 3
  labels = (("le", "0.005"), ("method", "GET"), ("route", "/posts/{post_id:path}"), ("status", "404"))
  assert samples[("postembed_http_request_seconds_bucket", labels)] == 1
  assert _samples(ServiceMetrics())[("postembed_posts_accepted_total", ())] == 0  # a registry per service
