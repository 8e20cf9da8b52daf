"""Run the near-line embedding service. All logic lives in postembed_jax.serving.service.

  python launch/serve.py --config configs/serve.py --config.model=<export dir or all-MiniLM-L6-v2>
"""

from absl import app
from ml_collections import config_flags

from postembed_jax import config_overrides
from postembed_jax.serving.service import serve

config_overrides.exit_on_unknown_override(default="configs/serve.py")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve.py", "Near-line service config.")


def main(argv):
  del argv
  serve(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
