"""Ablate: `python launch/ablate.py --config configs/ablation.py[:quick] [--config.workers=N] [--config.FIELD=...]`.

Trains every unfinished run of the ablation (finished runs are skipped, killed ones resume): the learning-rate
selection on validation, then every seed at the chosen rates, scored on the test split. Then writes results.csv,
transfer.csv, summary.csv, selection.csv, runs.csv, report.md and the plots into --config.workdir. All logic is in
postembed_jax.ablation.

An error ends it with one line on stderr (exit status 1; 70 for an internal error) and --verbose adds the
traceback; see postembed_jax/launching.py.
"""

import shlex
import sys
import time
from pathlib import Path

from absl import logging

from postembed_jax import config_overrides, launching
from postembed_jax.ablation import plan, runner
from postembed_jax.ablation.report import write_report
from postembed_jax.data.lists import as_list

_CONFIG = config_overrides.define_config_flag("configs/ablation.py", "Ablation config.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  start = time.perf_counter()
  outcome = runner.run_ablation(config)
  wall = time.perf_counter() - start
  summary = write_report(
    outcome.results,
    Path(config.workdir),
    metric=config.metric,
    tasks=as_list(config.tasks),
    selection=outcome.selection,
    runs=outcome.runs,
    protocol=plan.describe(config),
    command="python " + " ".join(map(shlex.quote, sys.argv)),
    wall_seconds=wall,
  )
  headline = (
    f"{summary['regime']} regime, {summary['metric']}: mean relative change "
    f"{100 * summary['mean_relative_change']:+.2f}%, significantly better on {summary['better']}, not "
    f"different on {summary['not_different']}, worse on {summary['worse']} of {summary['tasks']} tasks"
    if summary
    else "no MTL/STL comparison"
  )
  print(
    f"Ablation finished in {wall:.0f} s (this invocation): {headline}. Report: {Path(config.workdir) / 'report.md'}"
  )


if __name__ == "__main__":
  launching.run(main)
