"""The batch embedding job's entry point (launch/embed.py, notebooks): ``config.runner`` picks the local job
(serving/batch_embed.py, the default) or Apache Beam (serving/beam.py, the optional ``beam`` extra)."""

from __future__ import annotations

from postembed_jax.serving import batch_embed
from postembed_jax.serving.embed_io import ReadStats


def run(config) -> ReadStats:
  if config.runner == "local":
    return batch_embed.run_embed_job(config)
  try:
    from postembed_jax.serving import beam
  except ModuleNotFoundError as e:
    if e.name != "apache_beam" and not (e.name or "").startswith("apache_beam."):
      raise
    raise ValueError(
      f"config.runner={config.runner!r} needs Apache Beam: pip install -c constraints.txt -e '.[beam]'."
    ) from None
  return beam.run_pipeline(config)
