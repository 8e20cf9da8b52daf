"""Executing the ablation: learning-rate selection then every seed, resuming and skipping finished runs (with fake
training and scoring), and launch/ablate.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postembed_jax.ablation import plan, runner

from .test_plan import REPO, _config

FIXTURE = REPO / "tests" / "fixtures" / "debian"


VALIDATION = {
  ("interest,search", 1e-4): 0.80,
  ("interest,search", 3e-4): 0.85,
  ("interest", 1e-4): 0.90,
  ("interest", 3e-4): 0.70,
  ("search", 1e-4): 0.95,
  ("search", 3e-4): 0.96,
}


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
  """Training that records calls and writes an export whose validation depends on the run's tasks and rate;
  scoring that records which export it read and favours the rate validation does not."""
  calls = {"train": [], "test": []}

  def train_and_evaluate(config, workdir):
    calls["train"].append(str(Path(workdir).relative_to(tmp_path)))
    value = VALIDATION[(config.data.tasks, config.optim.lr)]
    tasks = config.data.tasks.split(",")
    validation = {f"val/{t}/pair_auc": value for t in tasks} | {"val/mean_pair_auc": value}
    (Path(workdir) / "export").mkdir(exist_ok=True)  # a resumed run has its best-so-far export
    meta = {"step": 20, "final": True, "validation": validation}
    (Path(workdir) / "export/postembed.json").write_text(json.dumps(meta))
    (Path(workdir) / "metrics.jsonl").write_text(json.dumps({"step": 30, "train/loss": 1.0}) + "\n")
    return validation

  def evaluate(embedder, names, *, split, data_config, settings):
    calls["test"].append((split, str(Path(embedder).parent.relative_to(tmp_path))))
    score = 0.5 if "lr_0.0003" in embedder else 0.9
    return {f"{t}/{m}": score for t in data_config.tasks.split(",") for m in ("pair_auc", "triplet_accuracy")}

  monkeypatch.setattr("postembed_jax.train.loop.train_and_evaluate", train_and_evaluate)
  monkeypatch.setattr(
    "postembed_jax.models.embedder.Embedder.from_pretrained", classmethod(lambda cls, path, **k: path)
  )
  monkeypatch.setattr("postembed_jax.evaluation.evaluators.evaluate", evaluate)
  return calls


def test_lr_selection_then_every_seed_at_the_chosen_rate(tmp_path, fake_training):
  config = _config(tmp_path, tasks="interest,search", seeds="0,1", lr_grid="1e-4,3e-4")
  outcome = runner.run_ablation(config)
  assert {k: v["lr"] for k, v in outcome.choices.items()} == {
    "full/mtl": 3e-4,
    "full/stl-interest": 1e-4,
    "full/stl-search": 3e-4,
  }
  assert len(fake_training["train"]) == len(set(fake_training["train"])) == plan.count_runs(config) == 9
  assert "full/mtl/lr_0.0001/seed_1" not in fake_training["train"]  # losers train the selection seed only
  # The test split is read by the final runs alone, each once, never at a losing rate.
  assert sorted(fake_training["test"]) == sorted(
    ("test", r)
    for r in (
      "full/mtl/lr_0.0003/seed_0",
      "full/mtl/lr_0.0003/seed_1",
      "full/stl-interest/lr_0.0001/seed_0",
      "full/stl-interest/lr_0.0001/seed_1",
      "full/stl-search/lr_0.0003/seed_0",
      "full/stl-search/lr_0.0003/seed_1",
    )
  )
  assert len(outcome.results) == 6 and len(outcome.selection) == 6 and len(outcome.runs) == 9
  assert sum(r["chosen"] for r in outcome.selection) == 3
  assert {r["phase"] for r in outcome.runs} == {"selection", "selection+final", "final"}
  mtl = outcome.results[0]
  assert (mtl["variant"], mtl["lr"], mtl["seed"], mtl["best_step"], mtl["steps"]) == ("mtl", 3e-4, 0, 20, 30)
  assert mtl["selection_value"] == 0.85 and mtl["metrics"]["search/pair_auc"] == 0.5
  overrides = json.loads((tmp_path / "full/mtl/lr_0.0003/seed_1/overrides.json").read_text())
  assert overrides["data.task_mixing"] == "all_tasks_per_step" and overrides["optim.lr"] == 3e-4
  saved = json.loads((tmp_path / runner.SELECTION_FILE).read_text())
  assert saved["full/stl-interest"] == {
    "metric": "val/interest/pair_auc",
    "lr": 1e-4,
    "values": {"0.0001": 0.9, "0.0003": 0.7},
  }
  assert not (tmp_path / "full/mtl/lr_0.0003/seed_0/checkpoints").exists()


def test_finished_runs_are_skipped_and_unfinished_ones_rerun_in_place(tmp_path, fake_training):
  config = _config(tmp_path, tasks="interest,search", seeds="0,1", lr_grid="1e-4,3e-4")
  first = runner.run_ablation(config)
  fake_training["train"].clear()
  fake_training["test"].clear()
  again = runner.run_ablation(config)
  assert fake_training["train"] == [] and fake_training["test"] == []  # all finished
  assert [r["metrics"] for r in again.results] == [r["metrics"] for r in first.results]
  run = tmp_path / "full/stl-interest/lr_0.0001/seed_1"
  (run / runner.RESULT_FILE).unlink()  # trained, killed before scoring: scored, not retrained
  runner.run_ablation(config)
  assert fake_training["train"] == [] and fake_training["test"] == [("test", "full/stl-interest/lr_0.0001/seed_1")]
  for name in (runner.RESULT_FILE, runner.TRAIN_FILE, "export/postembed.json"):  # killed while training
    (run / name).unlink()
  (run / "export").rmdir()
  runner.run_ablation(config)
  assert fake_training["train"] == ["full/stl-interest/lr_0.0001/seed_1"]
  fake_training["train"].clear()
  # Killed mid-run after a best-so-far export (not final): resumed in place, never scored as it stands.
  (run / runner.RESULT_FILE).unlink()
  (run / runner.TRAIN_FILE).unlink()
  meta = json.loads((run / "export/postembed.json").read_text())
  (run / "export/postembed.json").write_text(json.dumps(dict(meta, final=False)))
  runner.run_ablation(config)
  assert fake_training["train"] == ["full/stl-interest/lr_0.0001/seed_1"]
  fake_training["train"].clear()
  (tmp_path / "full/mtl/lr_0.0001/seed_0" / runner.TRAIN_FILE).unlink()  # a losing selection run: its export stays
  runner.run_ablation(config)
  assert fake_training["train"] == [] and (tmp_path / "full/mtl/lr_0.0001/seed_0" / runner.TRAIN_FILE).exists()


def test_one_rate_means_no_selection_phase(tmp_path, fake_training):
  config = _config(tmp_path, tasks="interest,search", seeds="0,1", lr_grid="1e-4")
  outcome = runner.run_ablation(config)
  assert len(fake_training["train"]) == 6 and outcome.selection == [] and len(outcome.results) == 6
  assert {r["phase"] for r in outcome.runs} == {"final"}


def test_a_shared_run_is_trained_once_and_reported_for_both_arms(tmp_path, fake_training):
  config = _config(
    tmp_path,
    tasks="interest,search",
    seeds="0,1",
    lr_grid="1e-4,3e-4",
    regimes="capped,scarce",
    scarce_tasks="search",
    scarce_examples=300,
  )
  outcome = runner.run_ablation(config)
  shared = [r for r in fake_training["train"] if r.startswith("scarce-search/stl-search")]
  assert len(fake_training["train"]) == len(set(fake_training["train"])) == plan.count_runs(config)
  assert shared == [
    "scarce-search/stl-search/lr_0.0001/seed_0",
    "scarce-search/stl-search/lr_0.0003/seed_0",
    "scarce-search/stl-search/lr_0.0003/seed_1",
  ]
  assert outcome.choices["capped/stl-search"]["lr"] == outcome.choices["scarce-search/stl-search"]["lr"] == 3e-4
  both = [(r["regime"], r["focus"], r["seed"]) for r in outcome.results if r["variant"] == "stl-search"]
  assert both == [("capped", "", 0), ("capped", "", 1), ("scarce", "search", 0), ("scarce", "search", 1)]
  assert len(outcome.runs) == len(fake_training["train"])  # timings count each training once


def test_unknown_evaluator_fails_before_any_training(tmp_path, fake_training):
  with pytest.raises(ValueError, match="valid evaluators"):
    runner.run_ablation(_config(tmp_path, evaluators="pair_acu"))
  assert fake_training["train"] == []


def test_launcher_rejects_a_mistyped_field_before_any_work(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "launch/ablate.py",
      "--config",
      "configs/ablation.py:quick",
      "--config.seed=1",
      f"--config.workdir={tmp_path}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1 and "config has no field 'seed'" in result.stderr and "seeds" in result.stderr
  assert list(tmp_path.iterdir()) == []


def _fixture_ablation(tmp_path, tiny_model_dir, fixture_data_config) -> list[str]:
  """launch/ablate.py on the tiny model and the fixture corpus, tasks search and storyline, seed 0."""
  return [
    sys.executable,
    "launch/ablate.py",
    "--config",
    "configs/ablation.py:quick",
    f"--config.workdir={tmp_path}",
    "--config.tasks=search,storyline",
    "--config.train.data.tasks=search,storyline",
    "--config.seeds=0",
    f"--config.train.model={tiny_model_dir}",
    "--config.train.embed_dim=16",
    f"--config.train.data.index_dir={FIXTURE}",
    f"--config.train.data.data_dir={fixture_data_config.data_dir}",
  ]


@pytest.mark.slow
def test_launcher_end_to_end_on_the_fixture(tmp_path, tiny_model_dir, fixture_data_config):
  """A tiny ablation through launch/ablate.py: two rates per arm selected on validation, the chosen selection runs
  scored on test with two evaluators, the report; then a second invocation finds everything finished. (A further
  seed at the chosen rate trains like a selection run; the fake-training tests cover it.)"""
  cmd = [
    *_fixture_ablation(tmp_path, tiny_model_dir, fixture_data_config),
    "--config.lr_grid=1e-4,1e-3",
    "--config.train.total_steps=4",
    "--config.train.data.batch_size=8",
    "--config.train.data.max_length=32",
    "--config.train.data.bucket_lengths=(32,)",
    "--config.train.eval.every_steps=2",
    "--config.train.checkpoint.every_steps=2",
    "--config.train.eval.max_examples=20",
    "--config.train.log_every_steps=1",
    "--config.affinity_every_steps=2",
    "--config.evaluation.max_examples=30",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "6 trainings in 3 arms" in result.stdout and "Ablation finished" in result.stdout
  text = (tmp_path / "report.md").read_text()
  for heading in (
    "## Summary",
    "### pair_auc",
    "### triplet_accuracy_hard",
    "## Learning-rate selection",
    "## Time",
    "### Lookahead task affinity",
  ):
    assert heading in text, heading
  assert (tmp_path / "selection.csv").read_text().count("\n") == 1 + 6
  assert (tmp_path / "runs.csv").read_text().count("\n") == 1 + 6
  assert (tmp_path / "transfer_full.png").stat().st_size > 0 and (tmp_path / "affinity_full.png").exists()
  meta = json.loads(next(tmp_path.glob("full/mtl/lr_*/seed_0/export/postembed.json")).read_text())
  assert meta["config"]["data"]["task_mixing"] == "all_tasks_per_step" and "val/mean_pair_auc" in meta["validation"]
  assert len(list(tmp_path.glob("full/*/lr_*/seed_0/result.json"))) == 3  # the chosen rates only
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "6 found trained" in again.stdout and "[1]" not in again.stdout


def _saved_steps(run) -> list[int]:
  folder = run / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


@pytest.mark.slow
def test_sigterm_stops_every_worker_and_exits_preempted(tmp_path, tiny_model_dir, fixture_data_config):
  """A SIGTERM to the ablation's parent (what a scheduler sends) reaches its worker processes: the runs in training
  save and stop, nothing is left running, and the launcher exits with the preempted status. Without the forwarding
  the spawned workers are orphaned and train on."""
  cmd = [
    *_fixture_ablation(tmp_path, tiny_model_dir, fixture_data_config),
    "--config.workers=2",
    "--config.train.total_steps=100000",
    "--config.train.early_stopping.patience=0",
    "--config.train.data.batch_size=4",
    "--config.train.data.max_length=16",
    "--config.train.data.bucket_lengths=(16,)",
    "--config.train.eval.every_steps=2",
    "--config.train.checkpoint.every_steps=2",
    "--config.train.eval.max_examples=10",
    "--config.affinity_every_steps=0",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  process = subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
  )
  try:
    deadline = time.monotonic() + 600
    # Both workers are training once each run has saved a step >= 2 (step 2 itself is soon rotated out).
    while sum(max(_saved_steps(run), default=0) >= 2 for run in tmp_path.glob("full/*/lr_*/seed_0")) < 2:
      assert process.poll() is None, process.communicate()
      assert time.monotonic() < deadline, "the two workers did not both save a step within 600 s"
      time.sleep(1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
  assert process.returncode == 75, stdout[-2000:] + stderr[-2000:]
  last = stderr.strip().splitlines()[-1]
  assert "Ablation stopped by SIGTERM; 2 run(s) saved mid-training" in last and "Run the same command again" in last
  time.sleep(2)
  with pytest.raises(ProcessLookupError):  # no worker outlived the parent
    os.killpg(process.pid, 0)
  for run in tmp_path.glob("full/*/lr_*/seed_0"):
    assert not (run / "train.json").exists()  # stopped, not finished
    assert _saved_steps(run)[-1] >= 2
    # Its best-so-far export (validation at step 2) is not final, so running the command again resumes it.
    assert json.loads((run / "export/postembed.json").read_text())["final"] is False
