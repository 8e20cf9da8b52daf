import json

import numpy as np
import pytest
from scipy import stats

from postembed_jax.ablation import report

MTL = {"a": [0.90, 0.91, 0.92], "b": [0.70, 0.72, 0.71]}
STL = {"a": [0.80, 0.81, 0.82], "b": [0.70, 0.73, 0.70]}


def _results():
  out = []
  for seed in range(3):
    out.append({"variant": "mtl", "seed": seed, "eval_tasks": ["a", "b"], "train_seconds": 10.0,
                "eval_seconds": 2.0, "metrics": {"a/pair_auc": MTL["a"][seed], "b/pair_auc": MTL["b"][seed],
                                                 "a/recall@1": 0.1}})
    for task in ("a", "b"):
      out.append({"variant": f"stl-{task}", "seed": seed, "eval_tasks": [task], "train_seconds": 4.0,
                  "eval_seconds": 1.0, "metrics": {f"{task}/pair_auc": STL[task][seed]}})
  return out


def test_mean_interval_is_student_t():
  mean, low, high = report.mean_interval([1.0, 2.0, 3.0])
  assert mean == 2.0 and high - mean == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))
  assert report.mean_interval([0.5]) == (0.5, 0.5, 0.5)


def test_transfer_table_and_summary():
  rows = report.result_rows(_results(), "pair_auc")
  assert len(rows) == 12 and {r["metric"] for r in rows} == {"pair_auc"}
  table = {r["task"]: r for r in report.transfer_table(rows)}
  assert table["a"]["relative_change"] == pytest.approx((0.91 - 0.81) / 0.81)
  assert table["a"]["p_value"] == pytest.approx(stats.ttest_ind(MTL["a"], STL["a"], equal_var=False).pvalue)
  assert table["a"]["significant"] and not table["b"]["significant"]
  assert table["a"]["mtl_ci_low"] < table["a"]["mtl_mean"] < table["a"]["mtl_ci_high"]
  summary = report.transfer_summary(list(table.values()))
  assert summary["significant_positive"] == 1 and summary["significant_negative"] == 0
  assert summary["mean_relative_change"] == pytest.approx(np.mean([r["relative_change"] for r in table.values()]))


def test_csv_round_trip(tmp_path):
  rows = report.result_rows(_results(), "pair_auc")
  report.write_csv(rows, tmp_path / "results.csv")
  assert report.read_csv(tmp_path / "results.csv") == rows


def test_leave_one_out_matrix():
  rows = [{"variant": "mtl", "task": "a", "value": 0.9}, {"variant": "mtl", "task": "b", "value": 0.8},
          {"variant": "loto-a", "task": "b", "value": 0.5}, {"variant": "loto-b", "task": "a", "value": 1.0}]
  matrix = report.leave_one_out_matrix(rows, ["a", "b"])
  np.testing.assert_allclose(matrix, [[np.nan, 0.6], [-0.1, np.nan]])
  assert report.leave_one_out_matrix(rows[:2], ["a", "b"]) is None


def test_incoming_affinity_and_spearman():
  matrix = np.array([[9.0, 0.1, 0.3], [0.2, 9.0, 0.5], [0.4, 0.6, 9.0]])
  assert report.incoming_affinity(["x", "y", "z"], matrix) == pytest.approx({"x": 0.3, "y": 0.35, "z": 0.4})
  assert report.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
  assert np.isnan(report.spearman([1, 2], [1, 2]))


def test_write_report_with_affinity(tmp_path):
  for seed in range(3):
    workdir = tmp_path / "mtl" / f"seed_{seed}"
    workdir.mkdir(parents=True)
    record = {"step": 10, "affinity": [[0.0, 0.02], [-0.01, 0.0]], "affinity_labels": ["a", "b"]}
    (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
  summary = report.write_report(_results(), tmp_path, metric="pair_auc", tasks=["a", "b"], command="python x.py")
  assert summary["significant_positive"] == 1
  text = (tmp_path / "report.md").read_text()
  assert "    python x.py" in text and "| a | 0.9100 [" in text and "+12.35% |" in text
  assert "Mean over 3 logged steps" in text and "| b | 0.0200 | +0.00% |" in text
  for name in ("results.csv", "transfer.csv", "transfer.png", "affinity.png"):
    assert (tmp_path / name).stat().st_size > 0
