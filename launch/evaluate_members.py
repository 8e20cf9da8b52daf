"""Simulated-member retrieval: `python launch/evaluate_members.py --config configs/members.py [--config.FIELD=...]`.

Prints the report as JSON and writes it to --config.out if given. All logic is in postembed_jax.evaluation.members.

An error ends it with one line on stderr (exit status 1; 70 for an internal error) and --verbose adds the
traceback; see postembed_jax/launching.py.
"""

import json
from pathlib import Path

from absl import logging

from postembed_jax import config_overrides, launching
from postembed_jax.evaluation.members import run_member_evaluation

_CONFIG = config_overrides.define_config_flag("configs/members.py", "Simulated-member evaluation config.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  report = run_member_evaluation(
    config.model,
    split=config.split,
    n_members=config.n_members,
    seed=config.seed,
    max_length=config.max_length,
    max_posts=config.max_posts,
    data_dir=config.data_dir,
    index_dir=config.index_dir,
  )
  text = json.dumps(report, indent=1)
  print(text)
  if config.out:
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    Path(config.out).write_text(text + "\n")


if __name__ == "__main__":
  launching.run(main)
