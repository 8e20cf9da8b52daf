"""End-to-end training runs: mesh equivalence, exact resume after SIGKILL, cross-mesh restore, SIGTERM, errors,
and the sentence-transformers export."""

import json
import re
import signal
import time

import numpy as np
import pytest
from conftest import FAST, step_losses
from conftest import check_ok as _ok  # `baseline` (20 one-device steps) is a session fixture in conftest.py

from postembed_jax.launching import EXIT_PREEMPTED, EXIT_USER_ERROR


def _assert_same_losses(losses, reference, rtol):
  steps = sorted(reference)
  assert sorted(losses) == steps
  np.testing.assert_allclose([losses[s] for s in steps], [reference[s] for s in steps], rtol=rtol)


@pytest.mark.parametrize(
  "mesh", [("--config.mesh.fsdp=2",), ("--config.mesh.tensor=2",)], ids=["data4_fsdp2", "data4_tensor2"]
)
def test_eight_devices_match_one(train_cmd, baseline, tmp_path, mesh):
  _ok(train_cmd(tmp_path, *FAST, *mesh, "--config.export=False", devices=8))
  _assert_same_losses(step_losses(tmp_path), baseline[1], rtol=1e-4)


def test_cpu_devices_makes_the_data_mesh(train_cmd, baseline, tmp_path):
  """config.cpu_devices=2 splits the host into two devices (over XLA_FLAGS' one) and the run trains on both."""
  result = _ok(train_cmd(tmp_path, *FAST, "--config.cpu_devices=2", "--config.export=False", devices=1))
  assert re.search(r"mesh \{'data': 2, 'fsdp': 1, 'tensor': 1\}", result.stdout), result.stdout
  _assert_same_losses(step_losses(tmp_path), baseline[1], rtol=1e-4)


def test_sigkill_then_resume_reproduces_losses(train_cmd, baseline, tmp_path):
  # Blocking saves, so the step-5 checkpoint is complete once step 7 is logged; the kill then comes mid-run
  # however fast the steps are (compiled executables may come from the persistent cache).
  sync = "--config.checkpoint.async_save=False"
  proc = train_cmd(tmp_path, *FAST, sync, "--config.export=False", wait=False)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    try:
      if metrics.exists() and max(step_losses(tmp_path), default=0) >= 7:
        break
    except ValueError:  # caught a line half-written
      pass
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  killed_at = max(step_losses(tmp_path))
  assert 7 <= killed_at < 20
  resumed = _ok(train_cmd(tmp_path, *FAST, sync, "--config.export=False"))
  started = int(re.search(r"Starting at step (\d+) of 20 from .*checkpoints", resumed.stdout).group(1))
  assert 5 <= started <= killed_at
  # The steps the killed attempt logged after its checkpoint were cut from the log: each step appears once.
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 21))
  # Exact: same devices, same data position, same dropout keys.
  _assert_same_losses(step_losses(tmp_path), baseline[1], rtol=1e-6)


def test_checkpoint_moves_between_meshes(train_cmd, baseline, tmp_path):
  """Steps 1-10 on 8 devices, 11-20 on 1 device restored from that checkpoint; and the reverse."""
  eight_then_one = tmp_path / "8to1"
  _ok(
    train_cmd(
      eight_then_one,
      *FAST,
      "--config.total_steps=10",
      "--config.mesh.fsdp=2",
      "--config.optim.warmup_steps=10",
      "--config.export=False",
      devices=8,
    )
  )
  _ok(train_cmd(eight_then_one, *FAST, "--config.optim.warmup_steps=10", "--config.export=False"))
  one_then_eight = tmp_path / "1to8"
  _ok(
    train_cmd(
      one_then_eight, *FAST, "--config.total_steps=10", "--config.optim.warmup_steps=10", "--config.export=False"
    )
  )
  _ok(
    train_cmd(
      one_then_eight,
      *FAST,
      "--config.mesh.tensor=2",
      "--config.optim.warmup_steps=10",
      "--config.export=False",
      devices=8,
    )
  )
  reference = tmp_path / "reference"
  _ok(train_cmd(reference, *FAST, "--config.optim.warmup_steps=10", "--config.export=False"))
  for workdir in (eight_then_one, one_then_eight):
    _assert_same_losses(step_losses(workdir), step_losses(reference), rtol=1e-4)


def test_sigterm_saves_then_exits_preempted(train_cmd, tmp_path):
  proc = train_cmd(tmp_path, *FAST, "--config.total_steps=500", "--config.checkpoint.every_steps=1000", wait=False)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if (tmp_path / "metrics.jsonl").exists() and len(step_losses(tmp_path)) >= 3:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=300)
  assert proc.returncode == EXIT_PREEMPTED, output[-3000:]  # not 0: the run is not finished
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and saved[-1] == max(step_losses(tmp_path)) >= 3
  assert f"SIGTERM: saved step {saved[-1]}" in output
  assert "Final validation" not in output
  last = output.strip().splitlines()[-1]
  assert last.startswith(
    f"train.py: Preempted by SIGTERM at step {saved[-1]} of 500; saved it in {tmp_path}/checkpoints/{saved[-1]}. "
    f"Run the same command again to resume: python launch/train.py --config=configs/mtl.py:quick --workdir={tmp_path}"
  ), last


def test_non_finite_loss_names_the_step_range_and_keeps_checkpoints_good(train_cmd, tmp_path):
  """Metrics are read every 4 steps (and before each save, every 5): the error names the steps read together
  and the first bad one, and no checkpoint holds a state from that step on."""
  result = train_cmd(
    tmp_path,
    *FAST,
    "--config.optim.lr=1e8",
    "--config.optim.head_lr=1e8",
    "--config.optim.warmup_steps=0",
    "--config.optim.clip_norm=1e30",
    "--config.dtype=bfloat16",
    "--config.log_every_steps=4",
  )
  assert result.returncode == EXIT_USER_ERROR
  last = result.stderr.strip().splitlines()[-1]  # one line, no traceback
  match = re.fullmatch(
    r"train\.py: error: Non-finite (loss|grad_norm|loss and grad_norm) (between steps (\d+) and (\d+), first )?"
    rf"at step (\d+) on task '(search|storyline)' .*"
    rf"The last good checkpoint is in {re.escape(str(tmp_path))}/checkpoints\.",
    last,
  )
  assert match, last
  first_bad = int(match.group(5))
  if match.group(2):
    start, end = int(match.group(3)), int(match.group(4))
    assert start <= first_bad <= end and (end % 4 == 0 or end % 5 == 0)  # a log step or a save
  saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert all(s < first_bad for s in saved), (saved, first_bad)
  assert "Traceback" not in result.stderr


def test_export_loads_in_sentence_transformers(baseline):
  from sentence_transformers import SentenceTransformer

  from postembed_jax.models.embedder import Embedder

  workdir, _ = baseline
  texts = ["Debian package manager", "image viewer for the GNOME desktop", "", "日本語のパッケージ説明"]
  ours = Embedder.from_pretrained(workdir / "export").embed(texts)
  theirs = SentenceTransformer(str(workdir / "export_st"), device="cpu").encode(texts, convert_to_numpy=True)
  assert ours.shape == theirs.shape == (4, 16)
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
  meta = json.loads((workdir / "export" / "postembed.json").read_text())
  assert meta["step"] == 20 and meta["tower"]["embed_dim"] == 16


def test_resolved_config_and_metrics_are_written(baseline):
  workdir, _ = baseline
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["tasks"] == "search,storyline" and config["total_steps"] == 20
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  final = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if "val/mean_pair_auc" in l]
  assert final and 0.0 <= final[-1]["val/mean_pair_auc"] <= 1.0


def test_affinity_matrix_is_logged(train_cmd, tmp_path):
  from postembed_jax.train.affinity import read_affinity

  _ok(train_cmd(tmp_path, *FAST, "--config.total_steps=8", "--config.affinity_every_steps=4", "--config.export=False"))
  labels, matrix, count = read_affinity(tmp_path)
  assert labels == ["search", "storyline"] and matrix.shape == (2, 2) and count == 2
  assert np.all(np.isfinite(matrix))
  # A lookahead step on a task's own gradient lowers its own loss (small enough step): positive diagonal.
  assert np.all(np.diag(matrix) > 0), matrix


def test_best_tracker_counts_patience_and_keeps_ties_late():
  from postembed_jax.train.loop import BestTracker

  tracker = BestTracker("val/m", patience=2, min_delta=0.01)
  stops = [tracker.update(step, {"val/m": v}) for step, v in [(1, 0.5), (2, 0.6), (3, 0.605), (4, 0.6), (5, 0.7)]]
  # 0.605 is the best so far but within min_delta of 0.6, so it does not reset the patience: the run stops at 4.
  assert stops == [False, False, False, True, False]
  assert (tracker.best, tracker.best_step) == (0.7, 5)
  tied = BestTracker("val/m")
  for step in (1, 2):
    tied.update(step, {"val/m": 0.5})
  assert tied.best_step == 2 and not tied.stopped  # patience 0 never stops
  again = BestTracker("val/m", patience=2, min_delta=0.01)
  again.load(json.loads(json.dumps(tracker.state())))
  assert again.state() == tracker.state()
  with pytest.raises(ValueError, match="checkpoint.best_metric='val/m' is missing from the validation metrics"):
    BestTracker("val/m").update(1, {"val/other": 0.5})


def test_early_stopping_exports_the_best_checkpoint_and_stays_stopped(train_cmd, tmp_path):
  # min_delta=1: no evaluation after the first can improve enough, so with patience 1 the run stops at step 4.
  args = (
    *FAST,
    "--config.eval.every_steps=2",
    "--config.early_stopping.patience=1",
    "--config.early_stopping.min_delta=1.0",
    "--config.optim.lr=3e-3",
  )
  result = _ok(train_cmd(tmp_path, *args))
  assert "Early stopping at step 4" in result.stdout + result.stderr
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert max(r["step"] for r in records) == 4
  val = {r["step"]: r["val/mean_pair_auc"] for r in records if "val/mean_pair_auc" in r and r["step"] > 0}
  best = max(s for s in val if val[s] == max(val.values()))
  meta = json.loads((tmp_path / "export" / "postembed.json").read_text())
  assert meta["step"] == best and meta["final"] is True
  assert meta["validation"]["val/mean_pair_auc"] == val[best]
  # Running the command again trains no further: the stopped run's checkpoint says so.
  again = _ok(train_cmd(tmp_path, *args))
  assert "Starting at step 4" in again.stdout
  assert max(json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
