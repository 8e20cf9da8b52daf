"""Run the near-line embedding service. All logic lives in postembed_jax.serving.service.

python launch/serve.py --config configs/serve.py --config.model=<export dir or all-MiniLM-L6-v2>

An error ends it with one line on stderr (exit status 1; 70 for an internal error) and --verbose adds the
traceback; see postembed_jax/launching.py.
"""

from postembed_jax import config_overrides, launching
from postembed_jax.serving.service import serve

_CONFIG = config_overrides.define_config_flag("configs/serve.py", "Near-line service config.")


def main(argv):
  del argv
  serve(_CONFIG.value)


if __name__ == "__main__":
  launching.run(main)
