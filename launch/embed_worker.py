"""Run an embed worker of the broker-mode near-line service. All logic lives in postembed_jax.serving.broker_worker.

python launch/embed_worker.py --config configs/serve.py --config.queue=nats --config.broker.url=nats://HOST:4222

Start as many as the posts need, with the config the API runs with (same model, db_path and broker); see
docs/serving.md, "Through a broker". An error ends it with one line on stderr (exit status 1; 70 for an internal
error) and --verbose adds the traceback; see postembed_jax/launching.py.
"""

from postembed_jax import config_overrides, launching
from postembed_jax.serving.broker_worker import run

_CONFIG = config_overrides.define_config_flag("configs/serve.py", "Near-line service config (queue=nats).")


def main(argv):
  del argv
  run(_CONFIG.value)


if __name__ == "__main__":
  launching.run(main)
