"""The ablation's plan: its arms per regime, the runs of both phases, each run's config overrides, the selection
metric and the choice of a learning rate on validation."""

import sys
from pathlib import Path

import pytest

from postembed_jax.ablation import plan

REPO = Path(__file__).parents[2]


def _config(tmp_path, arg="quick", **changes):
  sys.path.insert(0, str(REPO))
  from configs import ablation

  config = ablation.get_config(arg)
  config.workdir = str(tmp_path)
  config.update(changes)
  return config


def test_plan_has_mtl_stl_and_optional_leave_one_out_per_regime(tmp_path):
  config = _config(tmp_path, tasks="a,b,c", seeds="0,1,2", lr_grid="1e-4,3e-4")
  arms = plan.plan_arms(config)
  assert [a.key for a in arms] == ["full/mtl", "full/stl-a", "full/stl-b", "full/stl-c"]
  assert arms[0] == plan.Arm("full", "mtl", ("a", "b", "c"), ("a", "b", "c"))
  config.leave_one_out = True
  loto = [a for a in plan.plan_arms(config) if a.variant.startswith("loto")]
  assert len(loto) == 3 and plan.Arm("full", "loto-a", ("b", "c"), ("a", "b", "c")) in loto
  config.update(leave_one_out=False, regimes="capped,scarce", scarce_tasks="b,c")
  keys = [a.key for a in plan.plan_arms(config)]
  assert keys == [
    "capped/mtl",
    "capped/stl-a",
    "capped/stl-b",
    "capped/stl-c",
    "scarce-b/mtl",
    "scarce-c/mtl",
    "scarce-b/stl-b",
    "scarce-c/stl-c",
  ]
  scarce_mtl = plan.plan_arms(config)[4]
  assert (scarce_mtl.tasks, scarce_mtl.eval_tasks, scarce_mtl.focus) == (("a", "b", "c"), ("b",), "b")
  with pytest.raises(ValueError, match="at least 2 tasks"):
    plan.plan_arms(_config(tmp_path, tasks="a"))
  with pytest.raises(ValueError, match="valid regimes"):
    plan.plan_arms(_config(tmp_path, regimes="ful"))


def test_capped_single_task_arms_share_the_scarce_runs_at_the_same_count(tmp_path):
  config = _config(tmp_path, tasks="a,b", seeds="0,1", lr_grid="1e-4", regimes="capped,scarce", scarce_examples=300)
  arms = {a.key: a for a in plan.plan_arms(config)}
  capped, scarce = plan.Run(arms["capped/stl-b"], 1e-4, 1), plan.Run(arms["scarce-b/stl-b"], 1e-4, 1)
  assert capped.name == scarce.name == "scarce-b/stl-b/lr_0.0001/seed_1"
  assert plan.run_overrides(config, capped) == plan.run_overrides(config, scarce)
  assert plan.Run(arms["capped/mtl"], 1e-4, 1).name == "capped/mtl/lr_0.0001/seed_1"  # MTL sees every task capped
  assert plan.count_runs(config) == (1 + 2 + 2) * 2  # capped/mtl, scarce-a|b/mtl, scarce-a|b/stl
  config.train.data.max_examples_per_task = 200  # the scarce arm would keep this base cap: 200, not 300
  assert plan.Run(plan.plan_arms(config)[2], 1e-4, 1).name == "capped/stl-b/lr_0.0001/seed_1"
  config.train.data.max_examples_per_task = 0
  config.scarce_examples = 128  # another count: a different training, not shared
  capped = plan.Run(plan.plan_arms(config)[2], 1e-4, 1)
  assert capped.name == "capped/stl-b/lr_0.0001/seed_1"
  assert plan.run_overrides(config, capped)["data.max_examples_per_task"] == 300
  assert plan.count_runs(config) == (3 + 2 + 2) * 2


def test_phases_reuse_the_selection_run_at_the_chosen_rate(tmp_path):
  config = _config(tmp_path, tasks="a,b", seeds="0,1,2", lr_grid="1e-4,3e-4")
  arm = plan.plan_arms(config)[0]
  selection = plan.selection_runs(config, [arm])
  assert [(r.lr, r.seed) for r in selection] == [(1e-4, 0), (3e-4, 0)]  # selection_seed defaults to the first seed
  final = plan.final_runs(config, arm, 3e-4)
  assert [(r.lr, r.seed) for r in final] == [(3e-4, 0), (3e-4, 1), (3e-4, 2)]
  assert selection[1] == final[0] and selection[1].name == "full/mtl/lr_0.0003/seed_0"
  assert plan.count_runs(config) == 3 * (2 + 3 - 1)
  config.selection_seed = 7  # a seed of its own: nothing to reuse
  assert plan.count_runs(config) == 3 * (2 + 3) and plan.selection_runs(config)[0].seed == 7
  config.lr_grid = "1e-4"
  assert plan.selection_runs(config) == [] and plan.count_runs(config) == 3 * 3
  with pytest.raises(ValueError, match="lr_grid"):
    plan.lr_grid(_config(tmp_path, lr_grid="1e-4,1e-4"))


def test_runs_differ_from_the_training_config_only_by_their_overrides(tmp_path):
  config = _config(tmp_path, tasks="interest,search", regimes="full,capped,scarce", scarce_fraction=0.05)
  arms = {a.key: a for a in plan.plan_arms(config)}
  mtl, stl = plan.Run(arms["full/mtl"], 3e-4, 2), plan.Run(arms["full/stl-search"], 1e-4, 1)
  mtl_config, stl_config = plan.run_config(config, mtl), plan.run_config(config, stl)
  assert (mtl_config.data.tasks, mtl_config.seed, mtl_config.optim.lr) == ("interest,search", 2, 3e-4)
  assert (stl_config.data.tasks, stl_config.seed, stl_config.optim.lr) == ("search", 1, 1e-4)
  assert mtl_config.data.task_mixing == "all_tasks_per_step" and stl_config.data.task_mixing == "one_task_per_step"
  assert mtl_config.checkpoint.best_metric == "val/mean_pair_auc"
  assert stl_config.checkpoint.best_metric == "val/search/pair_auc"
  assert mtl_config.affinity_every_steps == config.affinity_every_steps > 0 and stl_config.affinity_every_steps == 0
  for field in ("total_steps", "early_stopping", "eval", "export_checkpoint"):
    assert mtl_config[field] == stl_config[field] == config.train[field]
  assert config.train.early_stopping.patience > 0 and config.train.export_checkpoint == "best"
  assert mtl_config.data.batch_size == stl_config.data.batch_size == config.train.data.batch_size
  assert config.train.data.tasks == config.tasks  # run_config must not mutate the shared block
  assert {**mtl_config.optim.to_dict(), "lr": 0} == {**stl_config.optim.to_dict(), "lr": 0}

  capped = plan.run_config(config, plan.Run(arms["capped/stl-search"], 1e-4, 0))
  assert capped.data.max_examples_per_task == config.cap_examples
  scarce_mtl = plan.run_config(config, plan.Run(arms["scarce-search/mtl"], 1e-4, 0))
  scarce_stl = plan.run_config(config, plan.Run(arms["scarce-search/stl-search"], 1e-4, 0))
  assert scarce_mtl.data.tasks == "interest,search" and scarce_stl.data.tasks == "search"
  assert scarce_mtl.data.task_fractions == scarce_stl.data.task_fractions == "search=0.05"
  assert scarce_mtl.checkpoint.best_metric == scarce_stl.checkpoint.best_metric == "val/search/pair_auc"
  assert scarce_mtl.data.task_mixing == "all_tasks_per_step"
  assert plan.eval_data_config(config, ("search",)).task_fractions is None  # scoring is the same for all runs
  config.scarce_examples = 128  # a count instead of the share
  assert plan.run_config(config, plan.Run(arms["scarce-search/mtl"], 1e-4, 0)).data.task_fractions == "search=128"
  assert any("that task at 128 training examples" in line for line in plan.describe(config))
  assert _config(tmp_path, "default").scarce_examples == 128  # the default budget's 1,280 pairs per task


def test_selection_metric_is_configurable_and_checked(tmp_path):
  config = _config(tmp_path, tasks="a,b", selection_metric="triplet_accuracy")
  arms = plan.plan_arms(config)
  assert plan.selection_key(config, arms[1]) == "val/a/triplet_accuracy"
  with pytest.raises(ValueError, match="pair_auc only"):
    plan.selection_key(config, arms[0])


def test_choice_reads_validation_never_test():
  """The test metrics favour 1e-4, validation favours 3e-4: the choice is 3e-4."""
  records = [
    {"lr": 1e-4, "validation": {"val/mean_pair_auc": 0.80}, "metrics": {"a/pair_auc": 0.99}},
    {"lr": 3e-4, "validation": {"val/mean_pair_auc": 0.85}, "metrics": {"a/pair_auc": 0.50}},
  ]
  assert plan.choose_lr(records, "val/mean_pair_auc") == (3e-4, {1e-4: 0.80, 3e-4: 0.85})
  tie = [dict(r, validation={"val/mean_pair_auc": 0.8}) for r in records]
  assert plan.choose_lr(tie, "val/mean_pair_auc")[0] == 1e-4  # the first listed
  with pytest.raises(ValueError, match="missing or not finite"):
    plan.choose_lr(records, "val/a/pair_auc")
