"""Run the near-line embedding service. All logic lives in postembed_jax.serving.service.

python launch/serve.py --config configs/serve.py --config.model=<export dir or all-MiniLM-L6-v2>
"""

from absl import app

from postembed_jax import config_overrides
from postembed_jax.serving.service import serve

_CONFIG = config_overrides.define_config_flag("configs/serve.py", "Near-line service config.")


def main(argv):
  del argv
  serve(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
