"""Train: `python launch/train.py --config configs/mtl.py[:quick] [--workdir DIR] [--config.FIELD=VALUE ...]`.

Re-running with the same --workdir resumes from its latest checkpoint. All logic is in postembed_jax.train.

A SIGTERM (preemption) saves the step and exits with status 75; the same command resumes. An error ends it
with one line on stderr (exit status 1; 70 for an internal error) and --verbose adds the traceback; see
postembed_jax/launching.py.
"""

from absl import flags, logging

from postembed_jax import config_overrides, launching
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
  launching.run(main)
