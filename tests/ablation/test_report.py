import json
import math

import numpy as np
import pytest
from scipy import stats

from postembed_jax.ablation import report

# Per seed 0, 1, 2. On `a` MTL is ahead by about 0.1 everywhere; on `b` the seeds spread widely but MTL is ahead
# of its own seed by 0.010-0.012 each time: Welch's test sees nothing, the paired test sees it.
MTL = {"a": [0.90, 0.91, 0.92], "b": [0.712, 0.81, 0.911]}
STL = {"a": [0.80, 0.82, 0.81], "b": [0.70, 0.80, 0.90]}
TRIPLET = {"mtl": [0.60, 0.61, 0.62], "stl": [0.70, 0.72, 0.71]}  # `a`'s triplet accuracy: MTL worse


def _results():
  out = []
  for seed in range(3):
    out.append(
      {
        "regime": "full",
        "variant": "mtl",
        "lr": 3e-4,
        "seed": seed,
        "eval_tasks": ["a", "b"],
        "workdir": f"full/mtl/lr_0.0003/seed_{seed}",
        "train_seconds": 10.0,
        "eval_seconds": 2.0,
        "metrics": {
          "a/pair_auc": MTL["a"][seed],
          "b/pair_auc": MTL["b"][seed],
          "a/triplet_accuracy": TRIPLET["mtl"][seed],
          "a/pair_auc/ci95_low": 0.1,
          "c/pair_auc": 0.3,
        },
      }
    )
    for task in ("a", "b"):
      metrics = {f"{task}/pair_auc": STL[task][seed]}
      if task == "a":
        metrics["a/triplet_accuracy"] = TRIPLET["stl"][seed]
      out.append(
        {
          "regime": "full",
          "variant": f"stl-{task}",
          "lr": 1e-4,
          "seed": seed,
          "eval_tasks": [task],
          "workdir": f"full/stl-{task}/lr_0.0001/seed_{seed}",
          "train_seconds": 4.0,
          "eval_seconds": 1.0,
          "metrics": metrics,
        }
      )
  # The scarce regime with one seed: compared, not tested.
  out.append(
    {
      "regime": "scarce",
      "focus": "a",
      "variant": "mtl",
      "lr": 1e-4,
      "seed": 0,
      "eval_tasks": ["a"],
      "workdir": "scarce-a/mtl/lr_0.0001/seed_0",
      "train_seconds": 9.0,
      "eval_seconds": 1.0,
      "metrics": {"a/pair_auc": 0.75},
    }
  )
  out.append(
    {
      "regime": "scarce",
      "focus": "a",
      "variant": "stl-a",
      "lr": 1e-4,
      "seed": 0,
      "eval_tasks": ["a"],
      "workdir": "scarce-a/stl-a/lr_0.0001/seed_0",
      "train_seconds": 3.0,
      "eval_seconds": 1.0,
      "metrics": {"a/pair_auc": 0.60},
    }
  )
  return out


def _table():
  return {(r["regime"], r["task"], r["metric"]): r for r in report.transfer_table(report.result_rows(_results()))}


def test_mean_interval_is_student_t():
  mean, low, high = report.mean_interval([1.0, 2.0, 3.0])
  assert mean == 2.0 and high - mean == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))
  assert report.mean_interval([0.5]) == (0.5, 0.5, 0.5)


def test_paired_test_matches_the_formula_and_pairs_by_seed():
  mtl, stl = dict(enumerate(MTL["b"])), dict(enumerate(STL["b"]))
  n, difference, p = report.paired_test(mtl, stl)
  d = np.array(MTL["b"]) - np.array(STL["b"])
  t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
  assert (n, difference) == (3, pytest.approx(0.011)) and p == pytest.approx(2 * stats.t.sf(t, 2))
  assert p == pytest.approx(stats.ttest_rel(MTL["b"], STL["b"]).pvalue) and p < 0.01
  shuffled = {2: stl[2], 0: stl[0], 1: stl[1], 5: 0.1}  # matched by seed, not by order; an unmatched seed is dropped
  assert report.paired_test(mtl, shuffled) == (n, difference, p)
  assert report.paired_test({0: 0.5}, {0: 0.4})[2] != report.paired_test({0: 0.5}, {0: 0.4})[2]  # nan: one pair
  assert report.paired_test({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})[2] == 1.0
  assert report.paired_test({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})[2] == 0.0


def test_every_metric_gets_a_table_row_with_known_answers():
  table = _table()
  assert set(table) == {
    ("full", "a", "pair_auc"),
    ("full", "b", "pair_auc"),
    ("full", "a", "triplet_accuracy"),
    ("scarce", "a", "pair_auc"),
  }  # no interval bounds, no task without an STL side
  a = table["full", "a", "pair_auc"]
  assert a["relative_change"] == pytest.approx((0.91 - 0.81) / 0.81) and a["verdict"] == "better"
  assert a["p_paired"] == pytest.approx(stats.ttest_rel(MTL["a"], STL["a"]).pvalue)
  assert a["p_welch"] == pytest.approx(stats.ttest_ind(MTL["a"], STL["a"], equal_var=False).pvalue)
  assert a["mtl_ci_low"] < a["mtl_mean"] < a["mtl_ci_high"]
  b = table["full", "b", "pair_auc"]
  assert b["p_welch"] > 0.5 and b["p_paired"] < 0.05 and b["verdict"] == "better"
  assert table["full", "a", "triplet_accuracy"]["verdict"] == "worse"
  scarce = table["scarce", "a", "pair_auc"]
  assert scarce["verdict"] == "untested" and math.isnan(scarce["p_paired"]) and scarce["n_mtl"] == 1
  assert scarce["relative_change"] == pytest.approx(0.25)


def test_summary_counts_verdicts_per_regime_and_metric():
  summary = {(s["regime"], s["metric"]): s for s in report.transfer_summary(list(_table().values()))}
  assert summary["full", "pair_auc"] | {"mean_relative_change": 0} == {
    "regime": "full",
    "metric": "pair_auc",
    "tasks": 2,
    "mean_relative_change": 0,
    "better": 2,
    "not_different": 0,
    "worse": 0,
    "untested": 0,
  }
  assert (summary["full", "triplet_accuracy"]["worse"], summary["scarce", "pair_auc"]["untested"]) == (1, 1)
  # Differences +0.01, -0.02, +0.01: no change.
  rows = [
    {"variant": v, "seed": seed, "task": "a", "metric": "pair_auc", "value": value}
    for v, values in (("mtl", [0.81, 0.80, 0.82]), ("stl-a", [0.80, 0.82, 0.81]))
    for seed, value in enumerate(values)
  ]
  assert report.transfer_summary(report.transfer_table(rows))[0]["not_different"] == 1


def test_csv_round_trip_and_the_older_layout(tmp_path):
  rows = report.result_rows(_results())
  report.write_csv(rows, tmp_path / "results.csv")
  assert report.read_csv(tmp_path / "results.csv") == rows
  (tmp_path / "old.csv").write_text("variant,seed,task,metric,value,train_seconds\nmtl,1,a,pair_auc,0.9,10\n")
  assert report.read_csv(tmp_path / "old.csv") == [
    {
      "regime": "full",
      "focus": "",
      "variant": "mtl",
      "lr": None,
      "seed": 1,
      "task": "a",
      "metric": "pair_auc",
      "value": 0.9,
      "train_seconds": 10.0,
      "workdir": "mtl/seed_1",
    }
  ]


def test_leave_one_out_matrix():
  rows = [
    {"variant": "mtl", "task": "a", "value": 0.9},
    {"variant": "mtl", "task": "b", "value": 0.8},
    {"variant": "loto-a", "task": "b", "value": 0.5},
    {"variant": "loto-b", "task": "a", "value": 1.0},
  ]
  matrix = report.leave_one_out_matrix(rows, ["a", "b"])
  np.testing.assert_allclose(matrix, [[np.nan, 0.6], [-0.1, np.nan]])
  assert report.leave_one_out_matrix(rows[:2], ["a", "b"]) is None


def test_incoming_affinity_and_spearman():
  matrix = np.array([[9.0, 0.1, 0.3], [0.2, 9.0, 0.5], [0.4, 0.6, 9.0]])
  assert report.incoming_affinity(["x", "y", "z"], matrix) == pytest.approx({"x": 0.3, "y": 0.35, "z": 0.4})
  assert report.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
  assert np.isnan(report.spearman([1, 2], [1, 2]))


def _selection():
  out = []
  for variant, values, chosen in (("mtl", (0.80, 0.85), 3e-4), ("stl-a", (0.90, 0.70), 1e-4)):
    for lr, value in zip((1e-4, 3e-4), values):
      out.append(
        {
          "regime": "full",
          "focus": "",
          "variant": variant,
          "lr": lr,
          "seed": 0,
          "name": f"{variant}/{lr}",
          "selection_metric": "val/mean_pair_auc" if variant == "mtl" else "val/a/pair_auc",
          "selection_value": value,
          "best_step": 50,
          "steps": 125,
          "train_seconds": 30.0,
          "chosen": lr == chosen,
        }
      )
  return out


def test_write_report_with_every_section(tmp_path):
  for seed in range(3):
    workdir = tmp_path / "full/mtl/lr_0.0003" / f"seed_{seed}"
    workdir.mkdir(parents=True)
    record = {"step": 10, "affinity": [[0.0, 0.02], [-0.01, 0.0]], "affinity_labels": ["a", "b"]}
    (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
  runs = [dict(r, name=r["workdir"], phase="final", steps=100, best_step=75) for r in _results()]
  summary = report.write_report(
    _results(),
    tmp_path,
    metric="pair_auc",
    tasks=["a", "b"],
    selection=_selection(),
    runs=runs,
    command="python x.py",
    protocol=["Regimes: full."],
    wall_seconds=120.0,
  )
  assert (summary["regime"], summary["better"], summary["tasks"]) == ("full", 2, 2)
  text = (tmp_path / "report.md").read_text()
  assert "    python x.py" in text and "* Regimes: full." in text
  assert "| full | pair_auc | 2 | " in text and "| full | triplet_accuracy | 1 | -14.08% | 0 | 0 | 1 | 0 |" in text
  assert "## Regime `full`" in text and "### triplet_accuracy" in text and "## Regime `scarce`" in text
  assert "| a | 0.9100 [" in text and "+12.35% * |" in text and "| better |" in text and "untested" in text
  assert "Mean over 3 logged steps" in text and f"| b | 0.0200 | {100 * (0.811 - 0.8) / 0.8:+.2f}% |" in text
  assert "| full | mtl | `val/mean_pair_auc` | 0.8000 (best 50 / 125) | 0.8500 (best 50 / 125) | 0.0003 |" in text
  assert "| full | stl-a | `val/a/pair_auc` | 0.9000 (best 50 / 125) | 0.7000 (best 50 / 125) | 0.0001 |" in text
  assert "| full/mtl/lr_0.0003/seed_0 | final | 100 | 75 | 10 | 2 |" in text
  assert f"Sum over {len(runs)} runs: 80 s" in text
  assert "Wall clock of the invocation that wrote this report: 120 s" in text
  for name in (
    "results.csv",
    "transfer.csv",
    "summary.csv",
    "selection.csv",
    "runs.csv",
    "transfer_full.png",
    "transfer_scarce.png",
    "affinity_full.png",
  ):
    assert (tmp_path / name).stat().st_size > 0, name
  assert report.read_selection(tmp_path / "selection.csv") == report.selection_rows(_selection())
  assert report.read_runs(tmp_path / "runs.csv") == report.run_rows(runs)
  assert "Mean seconds per run (training and test scoring): MTL 12 (4 runs), STL 5 (7 runs)" in text
  assert report.read_selection(tmp_path / "missing.csv") == []
  assert "p_paired" in (tmp_path / "transfer.csv").read_text().splitlines()[0]
