"""Training tests run the real launcher in subprocesses (device count is fixed at JAX start-up) on the Debian
fixture with a tiny BERT that uses all-MiniLM-L6-v2's tokenizer, so each run takes seconds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "debian"


@pytest.fixture(scope="session")
def tfds_dir(fixture_data_config) -> Path:
  return Path(fixture_data_config.data_dir)  # the session's: the fixture dataset is built once


# Two tasks and one bucket length keep the number of compiled steps (and so the test time) small.
FAST = ("--config.data.tasks=search,storyline", "--config.data.bucket_lengths=(32,)")


def check_ok(result):
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


@pytest.fixture(scope="session")
def train_cmd(tiny_model_dir, tfds_dir):
  """Returns run(workdir, *overrides, devices=1, wait=True, log=None, python_args=()) -> CompletedProcess (or Popen
  if wait=False; its output goes to the file `log` when given, else to a pipe). `python_args` go before the
  script, e.g. ("-c", code) to run code that then runs the script (sys.argv[1:] is the launcher's command line)."""

  def run(workdir, *overrides, devices=1, wait=True, config="configs/mtl.py:quick", log=None, python_args=()):
    cmd = [
      sys.executable,
      *python_args,
      "launch/train.py",
      f"--config={config}",
      f"--workdir={workdir}",
      f"--config.model={tiny_model_dir}",
      f"--config.data.index_dir={FIXTURE}",
      f"--config.data.data_dir={tfds_dir}",
      "--config.total_steps=20",
      "--config.data.batch_size=8",
      "--config.data.max_length=32",
      "--config.data.bucket_lengths=(16,32)",
      "--config.log_every_steps=1",
      "--config.eval.every_steps=1000",
      "--config.eval.max_examples=40",
      "--config.checkpoint.every_steps=5",
      "--config.embed_dim=16",
      *overrides,
    ]
    env = dict(
      os.environ,
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
      JAX_PLATFORMS="cpu",
      PYTHONUNBUFFERED="1",
    )
    if not wait and log:  # a file: processes that wait for each other never block on a full pipe
      with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    if not wait:
      return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return result

  return run


@pytest.fixture(scope="session")
def baseline(train_cmd, tmp_path_factory):
  """20 uninterrupted steps on one device: the reference every other run is compared with."""
  workdir = tmp_path_factory.mktemp("baseline")
  check_ok(train_cmd(workdir, *FAST))
  losses = step_losses(workdir)
  assert sorted(losses) == list(range(1, 21))
  return workdir, losses


def step_losses(workdir) -> dict[int, float]:
  """Training loss by step from metrics.jsonl; a step logged twice (before a kill and after resume) keeps the
  later value."""
  losses = {}
  for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "train/loss" in record:
      losses[record["step"]] = record["train/loss"]
  return losses
