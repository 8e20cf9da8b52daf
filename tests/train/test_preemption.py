"""A preemption notice (SIGTERM) that lands while the model loads, before the loop: kept, not fatal, and the run
ends with the preempted status and the command that resumes it. (A notice mid-loop: test_loop.py; on one of two
hosts: test_multihost.py.)"""

import json

from conftest import FAST

from postembed_jax.launching import EXIT_PREEMPTED

# Runs the launcher with setup.build sending this process a SIGTERM first: the notice arrives during start-up, at
# a known point, whatever the machine's speed. Without a handler by then, the process dies of the signal (-15).
NOTICE_WHILE_LOADING = """
import os, runpy, signal, sys
from postembed_jax.train import setup
build = setup.build
def build_after_notice(*args, **kwargs):
  os.kill(os.getpid(), signal.SIGTERM)
  return build(*args, **kwargs)
setup.build = build_after_notice
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_sigterm_while_the_model_loads_stops_before_the_first_step(train_cmd, tmp_path):
  result = train_cmd(
    tmp_path, *FAST, "--config.eval.at_start=False", "--config.export=False", python_args=("-c", NOTICE_WHILE_LOADING)
  )
  assert result.returncode == EXIT_PREEMPTED, result.stdout[-2000:] + result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("train.py: Preempted by SIGTERM before step 1 of 20, so nothing new to save."), last
  assert (
    f"Run the same command again to resume: python launch/train.py --config=configs/mtl.py:quick --workdir={tmp_path}"
    in last
  )
  assert "Final validation" not in result.stdout
  assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == []
