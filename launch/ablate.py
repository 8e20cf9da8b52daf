"""Ablate: `python launch/ablate.py --config configs/ablation.py[:quick] [--config.workers=N] [--config.FIELD=...]`.

Trains every unfinished run of the ablation (finished runs are skipped, killed ones resume), then writes
results.csv, transfer.csv, report.md and the plots into --config.workdir. All logic is in postembed_jax.ablation.
"""

import shlex
import sys
import time
from pathlib import Path

from absl import app, logging
from ml_collections import config_flags

from postembed_jax import config_overrides
from postembed_jax.ablation.report import write_report
from postembed_jax.ablation.runner import plan_runs, run_ablation

config_overrides.exit_on_unknown_override(default="configs/ablation.py")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/ablation.py", "Ablation config.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  start = time.perf_counter()
  results = run_ablation(config)
  summary = write_report(results, Path(config.workdir), metric=config.metric,
                         tasks=list(plan_runs(config)[0].tasks),  # the MTL run's, in config order
                         command="python " + " ".join(map(shlex.quote, sys.argv)))
  print(f"Ablation finished in {time.perf_counter() - start:.0f} s (this invocation): {summary}. "
        f"Report: {Path(config.workdir) / 'report.md'}")


if __name__ == "__main__":
  app.run(main)
