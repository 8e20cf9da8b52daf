"""Embed a file of posts into Parquet. All logic lives in postembed_jax.serving.batch_embed.

An error ends it with one line on stderr (exit status 1; 70 for an internal error) and --verbose adds the
traceback; see postembed_jax/launching.py.
"""

from postembed_jax import config_overrides, launching
from postembed_jax.serving.batch_embed import run_embed_job

_CONFIG = config_overrides.define_config_flag("configs/embed.py", "Embedding job config.")


def main(argv):
  del argv
  run_embed_job(_CONFIG.value)


if __name__ == "__main__":
  launching.run(main)
