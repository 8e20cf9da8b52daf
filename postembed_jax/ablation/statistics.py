"""The ablation's numbers: does multi-task training transfer positively to each task?

Everything that computes or reads and writes data, no plots and no Markdown (those are report.py's). Per regime, task
and every test metric the evaluators produced: the multi-task (MTL) and single-task (STL) means over seeds with
t-based 95% intervals, the relative change (MTL - STL) / STL, and a paired t-test over seed-matched runs (seed s of
MTL against seed s of STL); Welch's unpaired test is a second column, since where the seeds share little between the
arms the pairing buys nothing and costs degrees of freedom. A metric is significantly better or worse at p < 0.05 of
the paired test. Beside them: the leave-one-task-out matrix, the lookahead affinity the MTL runs logged and how well
it ranks the measured transfer (Spearman), the learning-rate selection rows (every grid run, the losers too) and
every run's steps and seconds; results.csv, selection.csv and runs.csv are written and read back here.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from postembed_jax.train import affinity as affinity_lib

CSV_FIELDS = ("regime", "focus", "variant", "lr", "seed", "task", "metric", "value", "train_seconds", "workdir")
TRANSFER_FIELDS = (
  "regime",
  "task",
  "metric",
  "n_mtl",
  "mtl_mean",
  "mtl_ci_low",
  "mtl_ci_high",
  "n_stl",
  "stl_mean",
  "stl_ci_low",
  "stl_ci_high",
  "relative_change",
  "n_paired",
  "mean_difference",
  "p_paired",
  "p_welch",
  "significant",
  "verdict",
)
SUMMARY_FIELDS = ("regime", "metric", "tasks", "mean_relative_change", "better", "not_different", "worse", "untested")
SELECTION_FIELDS = (
  "regime",
  "focus",
  "variant",
  "lr",
  "seed",
  "selection_metric",
  "value",
  "best_step",
  "steps",
  "train_seconds",
  "chosen",
)
RUN_FIELDS = (
  "run",
  "phase",
  "regime",
  "focus",
  "variant",
  "lr",
  "seed",
  "steps",
  "best_step",
  "train_seconds",
  "eval_seconds",
  "total_seconds",
)
VERDICTS = ("better", "not different", "worse", "untested")


def result_rows(results: Sequence[dict], metrics: Sequence[str] | None = None) -> list[dict]:
  """One row per (run, task, metric) of the runs' test metrics (``<task>/<metric>`` keys of the tasks a run is
  scored on; interval bounds left out), every metric unless ``metrics`` names some: the content of results.csv."""
  rows = []
  for r in results:
    for key, value in r["metrics"].items():
      task, _, metric = key.partition("/")
      if task in r["eval_tasks"] and metric and "/" not in metric and (metrics is None or metric in metrics):
        rows.append(
          {
            "regime": r.get("regime", "full"),
            "focus": r.get("focus", ""),
            "variant": r["variant"],
            "lr": r.get("lr"),
            "seed": r["seed"],
            "task": task,
            "metric": metric,
            "value": float(value),
            "train_seconds": r.get("train_seconds", math.nan),
            "workdir": r.get("workdir", f"{r['variant']}/seed_{r['seed']}"),
          }
        )
  return rows


def write_csv(rows: Sequence[dict], path: Path, fields: Sequence[str] = CSV_FIELDS) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def _float(value) -> float | None:
  return None if value in (None, "") else float(value)


def read_csv(path: Path) -> list[dict]:
  """results.csv back as rows; a file of the older layout (no regime, lr or workdir column) reads as the full
  regime with runs in ``<variant>/seed_<s>``."""
  with open(path, newline="") as f:
    rows = []
    for r in csv.DictReader(f):
      seed = int(r["seed"])
      rows.append(
        {
          "regime": r.get("regime") or "full",
          "focus": r.get("focus") or "",
          "variant": r["variant"],
          "lr": _float(r.get("lr")),
          "seed": seed,
          "task": r["task"],
          "metric": r["metric"],
          "value": float(r["value"]),
          "train_seconds": _float(r.get("train_seconds")),
          "workdir": r.get("workdir") or f"{r['variant']}/seed_{seed}",
        }
      )
    return rows


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): Student-t interval of the mean over seeds (a point when there is one seed)."""
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if len(values) < 2 or np.ptp(values) == 0:
    return mean, mean, mean
  low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=stats.sem(values))
  return mean, float(low), float(high)


def paired_test(mtl: dict[int, float], stl: dict[int, float]) -> tuple[int, float, float]:
  """(pairs, mean difference MTL - STL, p) of the paired t-test over the seeds both sides have; p is nan with
  fewer than 2 pairs, 1 when every difference is 0 and 0 when all differences are equal and non-zero."""
  seeds = sorted(set(mtl) & set(stl))
  diff = np.array([mtl[s] - stl[s] for s in seeds], np.float64)
  mean = float(diff.mean()) if len(diff) else math.nan
  if len(diff) < 2:
    return len(diff), mean, math.nan
  if np.ptp(diff) == 0:
    return len(diff), mean, 1.0 if diff[0] == 0 else 0.0
  return len(diff), mean, float(stats.ttest_rel([mtl[s] for s in seeds], [stl[s] for s in seeds]).pvalue)


def welch_p(mtl: Sequence[float], stl: Sequence[float]) -> float:
  if min(len(mtl), len(stl)) < 2:
    return math.nan
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # zero variance on both sides: nan, as returned
    return float(stats.ttest_ind(mtl, stl, equal_var=False).pvalue)


def verdict(p: float, difference: float, alpha: float = 0.05) -> str:
  if not math.isfinite(p):
    return "untested"
  if p < alpha and difference != 0:
    return "better" if difference > 0 else "worse"
  return "not different"


def _by_seed(rows, regime: str, variant: str, task: str, metric: str) -> dict[int, float]:
  return {
    r["seed"]: r["value"]
    for r in rows
    if r["regime"] == regime and r["variant"] == variant and r["task"] == task and r["metric"] == metric
  }


def transfer_table(rows: Sequence[dict], *, alpha: float = 0.05) -> list[dict]:
  """Per regime, metric and task that has both MTL and STL results: means, intervals, relative change, the paired
  and the Welch p-values, and the paired test's verdict at ``alpha``."""
  rows = [dict(r, regime=r.get("regime", "full")) for r in rows]
  out = []
  for regime in dict.fromkeys(r["regime"] for r in rows):
    mtl_rows = [r for r in rows if r["regime"] == regime and r["variant"] == "mtl"]
    for metric in dict.fromkeys(r["metric"] for r in mtl_rows):
      for task in dict.fromkeys(r["task"] for r in mtl_rows if r["metric"] == metric):
        mtl, stl = (_by_seed(rows, regime, v, task, metric) for v in ("mtl", f"stl-{task}"))
        if not stl:
          continue
        (m_mean, m_low, m_high), (s_mean, s_low, s_high) = (
          mean_interval(list(mtl.values())),
          mean_interval(list(stl.values())),
        )
        n_paired, difference, p_paired = paired_test(mtl, stl)
        label = verdict(p_paired, difference, alpha)
        out.append(
          {
            "regime": regime,
            "task": task,
            "metric": metric,
            "n_mtl": len(mtl),
            "mtl_mean": m_mean,
            "mtl_ci_low": m_low,
            "mtl_ci_high": m_high,
            "n_stl": len(stl),
            "stl_mean": s_mean,
            "stl_ci_low": s_low,
            "stl_ci_high": s_high,
            "relative_change": (m_mean - s_mean) / s_mean if s_mean else math.nan,
            "n_paired": n_paired,
            "mean_difference": difference,
            "p_paired": p_paired,
            "p_welch": welch_p(list(mtl.values()), list(stl.values())),
            "significant": label in ("better", "worse"),
            "verdict": label,
          }
        )
  return out


def transfer_summary(table: Sequence[dict]) -> list[dict]:
  """Per regime and metric: tasks compared, mean relative change, and how many are significantly better, not
  different, significantly worse (or untested, with fewer than 2 seed pairs)."""
  out = []
  for regime, metric in dict.fromkeys((r["regime"], r["metric"]) for r in table):
    part = [r for r in table if r["regime"] == regime and r["metric"] == metric]
    counts = {v: sum(r["verdict"] == v for r in part) for v in VERDICTS}
    out.append(
      {
        "regime": regime,
        "metric": metric,
        "tasks": len(part),
        "mean_relative_change": float(np.mean([r["relative_change"] for r in part])),
        "better": counts["better"],
        "not_different": counts["not different"],
        "worse": counts["worse"],
        "untested": counts["untested"],
      }
    )
  return out


def pick(table: Sequence[dict], regime: str, metric: str) -> list[dict]:
  return [r for r in table if r["regime"] == regime and r["metric"] == metric]


def leave_one_out_matrix(rows: Sequence[dict], tasks: Sequence[str]) -> np.ndarray | None:
  """[k, j] = (MTL_j - LOTO(-k)_j) / LOTO(-k)_j for rows of one regime and metric: how much having task k in the
  mix helps task j (nan on the diagonal); None without leave-one-task-out runs."""
  if not any(r["variant"].startswith("loto-") for r in rows):
    return None

  def values(variant, task):
    return [r["value"] for r in rows if r["variant"] == variant and r["task"] == task]

  out = np.full((len(tasks), len(tasks)), np.nan)
  for k, left_out in enumerate(tasks):
    for j, task in enumerate(tasks):
      mtl, loto = values("mtl", task), values(f"loto-{left_out}", task)
      if j != k and mtl and loto:
        out[k, j] = (np.mean(mtl) - np.mean(loto)) / np.mean(loto)
  return out


def mean_affinity(mtl_workdirs: Sequence[Path]) -> tuple[list[str], np.ndarray, int] | None:
  """The lookahead affinity averaged over the MTL runs' logged steps (None if none was logged)."""
  found = [a for a in map(affinity_lib.read_affinity, mtl_workdirs) if a is not None]
  if not found:
    return None
  labels = found[0][0]
  same = [a for a in found if a[0] == labels]
  return labels, np.mean([a[1] for a in same], axis=0), sum(a[2] for a in same)


def mtl_workdirs(rows: Sequence[dict], root: Path, regime: str) -> list[Path]:
  """The MTL runs' directories of one regime, from results rows."""
  return [
    Path(root) / w for w in dict.fromkeys(r["workdir"] for r in rows if r["regime"] == regime and r["variant"] == "mtl")
  ]


def incoming_affinity(labels: Sequence[str], matrix: np.ndarray) -> dict[str, float]:
  """Per task j, the mean affinity of a step on each other task i to j: the in-run prediction of transfer into j."""
  off = ~np.eye(len(labels), dtype=bool)
  return {t: float(matrix[:, j][off[:, j]].mean()) for j, t in enumerate(labels)}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Rank correlation (nan with fewer than 3 points or no variation)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  keep = np.isfinite(x) & np.isfinite(y)
  if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
    return float("nan")
  return float(stats.spearmanr(x[keep], y[keep]).statistic)


def selection_rows(selection: Sequence[dict]) -> list[dict]:
  """One row per learning-rate selection run: its best validation value of the selection metric (selection.csv)."""
  return [
    {
      "regime": r["regime"],
      "focus": r.get("focus", ""),
      "variant": r["variant"],
      "lr": r["lr"],
      "seed": r["seed"],
      "selection_metric": r["selection_metric"],
      "value": r["selection_value"],
      "best_step": r.get("best_step"),
      "steps": r.get("steps"),
      "train_seconds": r.get("train_seconds"),
      "chosen": bool(r["chosen"]),
    }
    for r in selection
  ]


def _typed(path: Path, ints: Sequence[str], floats: Sequence[str], flags: Sequence[str] = ()) -> list[dict]:
  if not Path(path).exists():
    return []
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    for k in ints:
      r[k] = None if r[k] in ("", "None") else int(r[k])
    for k in floats:
      r[k] = _float(r[k])
    for k in flags:
      r[k] = r[k] == "True"
  return rows


def read_selection(path: Path) -> list[dict]:
  """selection.csv back as ``selection_rows`` ([] when there was no selection)."""
  return _typed(path, ("seed", "best_step", "steps"), ("lr", "value", "train_seconds"), ("chosen",))


def read_runs(path: Path) -> list[dict]:
  """runs.csv back as ``run_rows``."""
  return _typed(path, ("seed", "steps", "best_step"), ("lr", "train_seconds", "eval_seconds", "total_seconds"))


def run_rows(runs: Sequence[dict]) -> list[dict]:
  """One row per trained run with its steps and seconds (runs.csv)."""
  out = []
  for r in runs:
    train, test = float(r.get("train_seconds") or 0.0), float(r.get("eval_seconds") or 0.0)
    out.append(
      {
        "run": r.get("name", r.get("workdir")),
        "phase": r.get("phase", "final"),
        "regime": r.get("regime"),
        "focus": r.get("focus", ""),
        "variant": r["variant"],
        "lr": r.get("lr"),
        "seed": r["seed"],
        "steps": r.get("steps"),
        "best_step": r.get("best_step"),
        "train_seconds": train,
        "eval_seconds": test,
        "total_seconds": train + test,
      }
    )
  return out
