"""Train: `python launch/train.py --config configs/mtl.py[:quick] [--workdir DIR] [--config.FIELD=VALUE ...]`.

Re-running with the same --workdir resumes from its latest checkpoint. All logic is in postembed_jax.train.
"""

from absl import app, flags, logging

from postembed_jax import config_overrides
from postembed_jax.train.loop import train_and_evaluate

_CONFIG = config_overrides.define_config_flag("configs/mtl.py", "Training config.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/mtl", "Checkpoints, metrics and the export go here.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(
    "Final validation: "
    + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if not k.endswith(("_low", "_high")))
  )


if __name__ == "__main__":
  app.run(main)
