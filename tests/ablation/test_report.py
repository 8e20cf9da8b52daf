"""The ablation's report.md, CSVs and plots from ``write_report``, every section present."""

import json

from postembed_jax.ablation import report, statistics

from .test_statistics import _results


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
  assert "measured transfer: not defined over 2 task(s) (it needs 3 or more with some spread)." in text
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
  assert statistics.read_selection(tmp_path / "selection.csv") == statistics.selection_rows(_selection())
  assert statistics.read_runs(tmp_path / "runs.csv") == statistics.run_rows(runs)
  assert "Mean seconds per run (training and test scoring): MTL 12 (4 runs), STL 5 (7 runs)" in text
  assert statistics.read_selection(tmp_path / "missing.csv") == []
  assert "p_paired" in (tmp_path / "transfer.csv").read_text().splitlines()[0]
