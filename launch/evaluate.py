"""Evaluate: `python launch/evaluate.py --config configs/evaluate.py[:quick] --config.model=NAME_OR_DIR[,...]`.

Prints the table and saves it as JSON and Markdown in --config.output_dir. All logic is in
postembed_jax.evaluation.suite, so a notebook can call run_suite(config) the same way.
"""

from absl import app, logging
from ml_collections import config_flags

from postembed_jax import config_overrides
from postembed_jax.evaluation.suite import run_suite

config_overrides.exit_on_unknown_override(default="configs/evaluate.py")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/evaluate.py", "Evaluation config.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run_suite(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
