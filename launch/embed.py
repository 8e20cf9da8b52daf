"""Embed a file of posts into Parquet. All logic lives in postembed_jax.serving.batch_embed."""

from absl import app

from postembed_jax import config_overrides
from postembed_jax.serving.batch_embed import run_embed_job

_CONFIG = config_overrides.define_config_flag("configs/embed.py", "Embedding job config.")


def main(argv):
  del argv
  run_embed_job(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
