"""Embed a file of posts into Parquet, here or on Apache Beam (--config.runner). All logic lives in
postembed_jax.serving (embed_job picks batch_embed or beam).

An error ends it with one line on stderr (exit status 1; 70 for an internal error) and --verbose adds the
traceback; see postembed_jax/launching.py.
"""

from postembed_jax import config_overrides, launching
from postembed_jax.serving import embed_job

_CONFIG = config_overrides.define_config_flag("configs/embed.py", "Embedding job config.")


def main(argv):
  del argv
  embed_job.run(_CONFIG.value)


if __name__ == "__main__":
  launching.run(main)
