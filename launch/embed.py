"""Embed a file of posts into Parquet. All logic lives in postembed_jax.serving.batch_embed."""

from absl import app
from ml_collections import config_flags

from postembed_jax import config_overrides
from postembed_jax.serving.batch_embed import run_embed_job

config_overrides.exit_on_unknown_override(default="configs/embed.py")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/embed.py", "Embedding job config.")


def main(argv):
  del argv
  run_embed_job(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
