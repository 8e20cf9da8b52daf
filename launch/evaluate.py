"""Evaluate: `python launch/evaluate.py --config configs/evaluate.py[:quick] --config.model=NAME_OR_DIR[,...]`.

Prints the table and saves it as JSON and Markdown in --config.output_dir. All logic is in
postembed_jax.evaluation.suite, so a notebook can call run_suite(config) the same way.

An error ends it with one line on stderr (exit status 1; 70 for an internal error) and --verbose adds the
traceback; see postembed_jax/launching.py.
"""

from absl import logging

from postembed_jax import config_overrides, launching
from postembed_jax.evaluation.suite import run_suite

_CONFIG = config_overrides.define_config_flag("configs/evaluate.py", "Evaluation config.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run_suite(_CONFIG.value)


if __name__ == "__main__":
  launching.run(main)
