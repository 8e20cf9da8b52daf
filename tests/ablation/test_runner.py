import json
import sys
from pathlib import Path

import pytest

from postembed_jax.ablation import runner

REPO = Path(__file__).parents[2]


def _config(tmp_path, **changes):
  sys.path.insert(0, str(REPO))
  from configs import ablation
  config = ablation.get_config("quick")
  config.workdir = str(tmp_path)
  config.update(changes)
  return config


def test_plan_has_mtl_stl_and_optional_leave_one_out_per_seed(tmp_path):
  config = _config(tmp_path, tasks="a,b,c", seeds="0,1,2")
  runs = runner.plan_runs(config)
  assert len(runs) == 3 * (1 + 3)
  assert runs[0] == runner.Run("mtl", 0, ("a", "b", "c"), ("a", "b", "c"))
  assert runner.Run("stl-b", 2, ("b",), ("b",)) in runs
  config.leave_one_out = True
  loto = [r for r in runner.plan_runs(config) if r.variant.startswith("loto")]
  assert len(loto) == 9 and runner.Run("loto-a", 1, ("b", "c"), ("a", "b", "c")) in loto
  with pytest.raises(ValueError, match="at least 2 tasks"):
    runner.plan_runs(_config(tmp_path, tasks="a"))


def test_runs_differ_from_the_training_config_only_by_their_overrides(tmp_path):
  config = _config(tmp_path)
  mtl, stl = runner.Run("mtl", 2, ("interest", "search"), ()), runner.Run("stl-search", 1, ("search",), ())
  mtl_config, stl_config = runner.run_config(config, mtl), runner.run_config(config, stl)
  assert (mtl_config.data.tasks, mtl_config.seed) == ("interest,search", 2)
  assert (stl_config.data.tasks, stl_config.seed) == ("search", 1)
  assert mtl_config.affinity_every_steps == config.affinity_every_steps > 0 and stl_config.affinity_every_steps == 0
  for field in ("total_steps",):
    assert mtl_config[field] == stl_config[field] == config.train[field]
  assert mtl_config.data.batch_size == stl_config.data.batch_size == config.train.data.batch_size
  assert config.train.data.tasks == config.tasks  # run_config must not mutate the shared block
  assert mtl_config.optim.to_dict() == stl_config.optim.to_dict()


@pytest.fixture
def fake_training(monkeypatch):
  """Training that records calls and writes a marker; scoring that returns a fixed AUC per evaluated task."""
  calls = []

  def train_and_evaluate(config, workdir):
    calls.append((config.data.tasks, config.seed, str(workdir)))
    (Path(workdir) / "trained").write_text("1")
    return {}

  monkeypatch.setattr("postembed_jax.train.loop.train_and_evaluate", train_and_evaluate)
  monkeypatch.setattr("postembed_jax.serving.embedder.Embedder.from_pretrained", classmethod(lambda cls, *a, **k: None))
  monkeypatch.setattr("postembed_jax.evaluation.evaluators.evaluate", lambda embedder, names, *, split, data_config,
                      settings: {f"{t}/pair_auc": 0.5 for t in data_config.tasks.split(",")})
  return calls


def test_finished_runs_are_skipped_and_unfinished_ones_rerun_in_place(tmp_path, fake_training):
  config = _config(tmp_path, tasks="interest,search", seeds="0,1")
  results = runner.run_ablation(config)
  assert len(fake_training) == 6 and len(results) == 6
  assert results[0]["metrics"] == {"interest/pair_auc": 0.5, "search/pair_auc": 0.5}
  stl = next(r for r in results if r["variant"] == "stl-search")
  assert stl["metrics"] == {"search/pair_auc": 0.5} and stl["tasks"] == ["search"]
  assert json.loads((tmp_path / "mtl/seed_1/overrides.json").read_text()) == {"data.tasks": "interest,search",
                                                                             "seed": 1}
  fake_training.clear()
  runner.run_ablation(config)
  assert fake_training == []  # all finished
  (tmp_path / "stl-interest/seed_1" / runner.RESULT_FILE).unlink()  # as if killed before it finished
  runner.run_ablation(config)
  assert fake_training == [("interest", 1, str(tmp_path / "stl-interest/seed_1"))]


def test_unknown_evaluator_fails_before_any_training(tmp_path, fake_training):
  with pytest.raises(ValueError, match="valid evaluators"):
    runner.run_ablation(_config(tmp_path, evaluators="pair_acu"))
  assert fake_training == []


def test_launcher_rejects_a_mistyped_field_before_any_work(tmp_path):
  import subprocess
  result = subprocess.run([sys.executable, "launch/ablate.py", "--config", "configs/ablation.py:quick",
                           "--config.seed=1", f"--config.workdir={tmp_path}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 1 and "config has no field 'seed'" in result.stderr and "seeds" in result.stderr
  assert list(tmp_path.iterdir()) == []
