"""The ablation's statistics: intervals, the paired and Welch tests, the transfer table and summary, CSV round
trips, the leave-one-out matrix and the affinity helpers, on results with known answers."""

import math

import numpy as np
import pytest
from scipy import stats

from postembed_jax.ablation import statistics

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
  return {
    (r["regime"], r["task"], r["metric"]): r for r in statistics.transfer_table(statistics.result_rows(_results()))
  }


def test_mean_interval_is_student_t():
  mean, low, high = statistics.mean_interval([1.0, 2.0, 3.0])
  assert mean == 2.0 and high - mean == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))
  assert statistics.mean_interval([0.5]) == (0.5, 0.5, 0.5)


def test_paired_test_matches_the_formula_and_pairs_by_seed():
  mtl, stl = dict(enumerate(MTL["b"])), dict(enumerate(STL["b"]))
  n, difference, p = statistics.paired_test(mtl, stl)
  d = np.array(MTL["b"]) - np.array(STL["b"])
  t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
  assert (n, difference) == (3, pytest.approx(0.011)) and p == pytest.approx(2 * stats.t.sf(t, 2))
  assert p == pytest.approx(stats.ttest_rel(MTL["b"], STL["b"]).pvalue) and p < 0.01
  shuffled = {2: stl[2], 0: stl[0], 1: stl[1], 5: 0.1}  # matched by seed, not by order; an unmatched seed is dropped
  assert statistics.paired_test(mtl, shuffled) == (n, difference, p)
  assert statistics.paired_test({0: 0.5}, {0: 0.4})[2] != statistics.paired_test({0: 0.5}, {0: 0.4})[2]  # nan: one pair
  assert statistics.paired_test({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})[2] == 1.0
  assert statistics.paired_test({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})[2] == 0.0


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
  summary = {(s["regime"], s["metric"]): s for s in statistics.transfer_summary(list(_table().values()))}
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
  assert statistics.transfer_summary(statistics.transfer_table(rows))[0]["not_different"] == 1


def test_csv_round_trip_and_the_older_layout(tmp_path):
  rows = statistics.result_rows(_results())
  statistics.write_csv(rows, tmp_path / "results.csv")
  assert statistics.read_csv(tmp_path / "results.csv") == rows
  (tmp_path / "old.csv").write_text("variant,seed,task,metric,value,train_seconds\nmtl,1,a,pair_auc,0.9,10\n")
  assert statistics.read_csv(tmp_path / "old.csv") == [
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
  matrix = statistics.leave_one_out_matrix(rows, ["a", "b"])
  np.testing.assert_allclose(matrix, [[np.nan, 0.6], [-0.1, np.nan]])
  assert statistics.leave_one_out_matrix(rows[:2], ["a", "b"]) is None


def test_incoming_affinity_and_spearman():
  matrix = np.array([[9.0, 0.1, 0.3], [0.2, 9.0, 0.5], [0.4, 0.6, 9.0]])
  assert statistics.incoming_affinity(["x", "y", "z"], matrix) == pytest.approx({"x": 0.3, "y": 0.35, "z": 0.4})
  assert statistics.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
  assert np.isnan(statistics.spearman([1, 2], [1, 2]))
