"""Multi-host training: two CPU processes on localhost joined by jax.distributed (one device each) log the same
losses as the one-process baseline, their checkpoint resumes in a single process, and a SIGTERM to one of them
stops both at the same step, saved together."""

import json
import re
import shutil
import signal
import socket
import time

import numpy as np
from conftest import FAST, check_ok, step_losses

from postembed_jax.launching import EXIT_PREEMPTED


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_processes(train_cmd, workdir, logs, *overrides, count=2):
  port = _free_port()
  return [
    train_cmd(
      workdir,
      *overrides,
      f"--config.distributed.coordinator_address=127.0.0.1:{port}",
      f"--config.distributed.num_processes={count}",
      f"--config.distributed.process_id={i}",
      wait=False,
      log=logs / f"process{i}.log",
    )
    for i in range(count)
  ]


def _run_processes(train_cmd, workdir, logs, *overrides, count=2, timeout=300, procs=None):
  """Starts `count` processes of launch/train.py sharing `workdir` (orbax writes one checkpoint from all
  processes), or takes the started `procs`; returns each one's (return code, output). A process that fails stops
  the others."""
  procs = procs or _start_processes(train_cmd, workdir, logs, *overrides, count=count)
  deadline = time.time() + timeout
  try:
    while time.time() < deadline and any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0, EXIT_PREEMPTED) for p in procs):
        break
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  return [(p.returncode, (logs / f"process{i}.log").read_text()) for i, p in enumerate(procs)]


def test_two_processes_match_one_then_resume_on_one(train_cmd, baseline, tmp_path):
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  logs.mkdir()
  results = _run_processes(train_cmd, workdir, logs, *FAST, "--config.export=False")
  for i, (code, output) in enumerate(results):
    assert code == 0, f"process {i} exited with {code}:\n{output[-4000:]}"
  # Process 0 saw both devices (one per process); process 1 logged nothing.
  assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1}" in results[0][1]
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in records if "train/loss" in r]
  assert steps == list(range(1, 21)), steps
  losses, reference = step_losses(workdir), baseline[1]
  np.testing.assert_allclose([losses[s] for s in steps], [reference[s] for s in steps], rtol=1e-4)
  # Both processes validated the same trained tower.
  finals = [[l for l in out.splitlines() if l.startswith("Final validation:")] for _, out in results]
  assert finals[0] and finals[0] == finals[1]

  # The data state written by two hosts is host-independent: one process resumes at step 15 and logs the
  # baseline's losses for steps 16-20.
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [15, 20], saved
  shutil.rmtree(workdir / "checkpoints" / "20")
  result = check_ok(train_cmd(workdir, *FAST, "--config.export=False"))
  assert "Starting at step 15 of 20" in result.stdout
  # Steps 16-20 were cut from the log and logged again, once.
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 21))
  resumed = {r["step"]: r["train/loss"] for r in records if "train/loss" in r and r["step"] > 15}
  np.testing.assert_allclose([resumed[s] for s in resumed], [reference[s] for s in resumed], rtol=1e-4)


def test_sigterm_on_one_host_stops_both_at_the_same_step(train_cmd, tmp_path):
  """Orbax saves are collective: process 1 alone receives the notice, and both must save the same step and exit
  preempted (a host saving alone would wait for the other forever, and the test would time out)."""
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  logs.mkdir()
  args = (*FAST, "--config.total_steps=500", "--config.checkpoint.every_steps=1000", "--config.export=False")
  procs = _start_processes(train_cmd, workdir, logs, *args, "--config.eval.at_start=False")
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if (workdir / "metrics.jsonl").exists() and len(step_losses(workdir)) >= 3:
      break
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  results = _run_processes(train_cmd, workdir, logs, procs=procs)
  for i, (code, output) in enumerate(results):
    assert code == EXIT_PREEMPTED, f"process {i} exited with {code}:\n{output[-4000:]}"
  steps = [int(re.search(r"Preempted by SIGTERM at step (\d+) of 500", out).group(1)) for _, out in results]
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[0] == steps[1] == saved[-1] == max(step_losses(workdir)) >= 3, (steps, saved)
