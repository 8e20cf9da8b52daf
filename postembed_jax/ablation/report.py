"""The ablation's statistics, tables and plots: does multi-task training transfer positively to each task?

Per task: the multi-task (MTL) and single-task (STL) means over seeds with t-based 95% intervals, the relative
change (MTL - STL) / STL, and Welch's t-test across seeds (seeds are independent runs, variances may differ). With
leave-one-task-out runs, also how much adding task k helps each other task j. Beside them, the lookahead affinity the
MTL runs logged, and how well it ranks the measured transfer (Spearman), so a user can judge the cheap signal.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats

from postembed_jax.ablation import affinity as affinity_lib

CSV_FIELDS = ("variant", "seed", "task", "metric", "value", "train_seconds")
TRANSFER_FIELDS = ("task", "n_mtl", "mtl_mean", "mtl_ci_low", "mtl_ci_high", "n_stl", "stl_mean", "stl_ci_low",
                   "stl_ci_high", "relative_change", "p_value", "significant")


def result_rows(results: Sequence[dict], metric: str) -> list[dict]:
  """One row per (run, task) with the run's ``<task>/<metric>`` on the test split: the content of results.csv."""
  rows = []
  for r in results:
    for task in r["eval_tasks"]:
      key = f"{task}/{metric}"
      if key in r["metrics"]:
        rows.append({"variant": r["variant"], "seed": r["seed"], "task": task, "metric": metric,
                     "value": r["metrics"][key], "train_seconds": r["train_seconds"]})
  return rows


def write_csv(rows: Sequence[dict], path: Path) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
  with open(path, newline="") as f:
    return [dict(r, seed=int(r["seed"]), value=float(r["value"]), train_seconds=float(r["train_seconds"]))
            for r in csv.DictReader(f)]


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): Student-t interval of the mean over seeds (a point when there is one seed)."""
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if len(values) < 2:
    return mean, mean, mean
  low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=stats.sem(values))
  return mean, float(low), float(high)


def _values(rows, variant: str, task: str) -> list[float]:
  return [r["value"] for r in rows if r["variant"] == variant and r["task"] == task]


def transfer_table(rows: Sequence[dict], *, alpha: float = 0.05) -> list[dict]:
  """Per task, MTL against STL: means, intervals, relative change, Welch p-value and significance at ``alpha``."""
  out = []
  for task in dict.fromkeys(r["task"] for r in rows if r["variant"] == "mtl"):
    mtl, stl = _values(rows, "mtl", task), _values(rows, f"stl-{task}", task)
    if not stl:
      continue
    (m_mean, m_low, m_high), (s_mean, s_low, s_high) = mean_interval(mtl), mean_interval(stl)
    p_value = float(stats.ttest_ind(mtl, stl, equal_var=False).pvalue) if min(len(mtl), len(stl)) > 1 else np.nan
    out.append({"task": task, "n_mtl": len(mtl), "mtl_mean": m_mean, "mtl_ci_low": m_low, "mtl_ci_high": m_high,
                "n_stl": len(stl), "stl_mean": s_mean, "stl_ci_low": s_low, "stl_ci_high": s_high,
                "relative_change": (m_mean - s_mean) / s_mean, "p_value": p_value,
                "significant": bool(p_value < alpha)})
  return out


def transfer_summary(table: Sequence[dict]) -> dict:
  changes = [r["relative_change"] for r in table]
  return {"tasks": len(table), "mean_relative_change": float(np.mean(changes)) if changes else np.nan,
          "significant_positive": sum(r["significant"] and r["relative_change"] > 0 for r in table),
          "significant_negative": sum(r["significant"] and r["relative_change"] < 0 for r in table)}


def leave_one_out_matrix(rows: Sequence[dict], tasks: Sequence[str]) -> np.ndarray | None:
  """[k, j] = (MTL_j - LOTO(-k)_j) / LOTO(-k)_j: how much having task k in the mix helps task j (nan on the
  diagonal); None without leave-one-task-out runs."""
  if not any(r["variant"].startswith("loto-") for r in rows):
    return None
  out = np.full((len(tasks), len(tasks)), np.nan)
  for k, left_out in enumerate(tasks):
    for j, task in enumerate(tasks):
      mtl, loto = _values(rows, "mtl", task), _values(rows, f"loto-{left_out}", task)
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


# ---------------------------------------------------------------------------------------------------------------
# Plots and the Markdown report.
# ---------------------------------------------------------------------------------------------------------------

def plot_transfer(table: Sequence[dict], metric: str, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tasks = [r["task"] for r in table]
  x = np.arange(len(tasks))
  fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(11, 4))
  for offset, variant, color in ((-0.2, "mtl", "tab:blue"), (0.2, "stl", "tab:orange")):
    means = np.array([r[f"{variant}_mean"] for r in table])
    err = np.array([[m - r[f"{variant}_ci_low"], r[f"{variant}_ci_high"] - m] for m, r in zip(means, table)]).T
    ax_abs.bar(x + offset, means, 0.4, yerr=err, capsize=3, label=variant.upper(), color=color)
  ax_abs.set_xticks(x, tasks, rotation=30)
  ax_abs.set_ylabel(f"test {metric} (mean, 95% CI over seeds)")
  lows = min(min(r["mtl_ci_low"], r["stl_ci_low"]) for r in table)
  ax_abs.set_ylim(max(0.0, lows - 0.05), None)
  ax_abs.legend()
  changes = [100 * r["relative_change"] for r in table]
  colors = ["tab:green" if r["significant"] and c > 0 else "tab:red" if r["significant"] else "tab:gray"
            for r, c in zip(table, changes)]
  ax_rel.bar(x, changes, color=colors)
  ax_rel.axhline(0, color="black", linewidth=0.8)
  ax_rel.set_xticks(x, tasks, rotation=30)
  ax_rel.set_ylabel("relative change MTL vs STL (%)\ngreen/red: significant, gray: not")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_affinity(labels: Sequence[str], matrix: np.ndarray, path: Path, *, transfer: dict[str, float] | None,
                  title: str = "lookahead affinity\nrow: task stepped on, column: loss measured") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2 if transfer else 1, figsize=(11 if transfer else 5.5, 4.5), squeeze=False)
  ax = axes[0, 0]
  bound = float(np.nanmax(np.abs(matrix))) or 1.0
  image = ax.imshow(matrix, cmap="RdBu", vmin=-bound, vmax=bound)
  ax.set_xticks(range(len(labels)), labels, rotation=30)
  ax.set_yticks(range(len(labels)), labels)
  for i in range(len(labels)):
    for j in range(len(labels)):
      if np.isfinite(matrix[i, j]):
        ax.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax)
  if transfer:
    incoming = incoming_affinity(labels, matrix)
    shown = [t for t in labels if t in transfer]
    ax = axes[0, 1]
    ax.scatter([incoming[t] for t in shown], [100 * transfer[t] for t in shown])
    for i, t in enumerate(shown):  # labels above and below in turn, so neighbouring points stay readable
      ax.annotate(t, (incoming[t], 100 * transfer[t]), xytext=(4, 5 if i % 2 else -11),
                  textcoords="offset points", fontsize=8)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))  # affinities are ~1e-3: plain ticks collide
    ax.locator_params(axis="x", nbins=5)
    ax.set_xlabel("mean affinity from the other tasks")
    ax.set_ylabel("measured relative change MTL vs STL (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _fmt_interval(mean: float, low: float, high: float) -> str:
  return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def markdown_report(table: Sequence[dict], summary: dict, *, metric: str, command: str | None,
                    affinity: tuple[list[str], np.ndarray, int] | None, loto: np.ndarray | None,
                    tasks: Sequence[str], timings: dict[str, tuple[int, float]], plots: Sequence[str]) -> str:
  lines = ["# Transfer ablation", ""]
  if command:
    lines += ["Produced by:", "", f"    {command}", ""]
  lines += [f"Metric: test-split `{metric}` per task. Means over seeds with t-based 95% intervals; significance by "
            "Welch's t-test across seeds at p < 0.05.", "",
            "| task | MTL | STL | relative change | p | significant |", "|---|---|---|---|---|---|"]
  for r in table:
    lines.append(f"| {r['task']} | {_fmt_interval(r['mtl_mean'], r['mtl_ci_low'], r['mtl_ci_high'])} (n={r['n_mtl']})"
                 f" | {_fmt_interval(r['stl_mean'], r['stl_ci_low'], r['stl_ci_high'])} (n={r['n_stl']})"
                 f" | {100 * r['relative_change']:+.2f}% | {r['p_value']:.3g} | {'yes' if r['significant'] else 'no'} |")
  lines += ["", f"Mean relative change: {100 * summary['mean_relative_change']:+.2f}% over {summary['tasks']} tasks; "
            f"significant positive transfer on {summary['significant_positive']}, significant negative transfer on "
            f"{summary['significant_negative']}.", ""]
  if loto is not None:
    lines += ["## Leave one task out", "", "Row k, column j: relative change of task j when task k is added to the "
              "other tasks, (MTL_j - without-k_j) / without-k_j.", "",
              "| with \\ on | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    lines += [f"| {k} | " + " | ".join("" if not np.isfinite(v) else f"{100 * v:+.2f}%" for v in loto[i]) + " |"
              for i, k in enumerate(tasks)]
    lines.append("")
  if affinity is not None:
    labels, matrix, steps = affinity
    transfer = {r["task"]: r["relative_change"] for r in table}
    incoming = incoming_affinity(labels, matrix)
    lines += ["## Lookahead task affinity inside the multi-task runs", "",
              f"Mean over {steps} logged steps of the MTL runs. Row i, column j: 1 - L_j(after a step on i) / L_j "
              "(before); positive means a step on i lowers j's loss.", "",
              "| step on \\ loss of | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    lines += [f"| {t} | " + " | ".join(f"{v:.4f}" for v in matrix[i]) + " |" for i, t in enumerate(labels)]
    shown = [t for t in labels if t in transfer]
    rho = spearman([incoming[t] for t in shown], [transfer[t] for t in shown])
    lines += ["", "| task | mean affinity from the others | measured change MTL vs STL |", "|---|---|---|"]
    lines += [f"| {t} | {incoming[t]:.4f} | {100 * transfer[t]:+.2f}% |" for t in shown]
    lines += ["", f"Spearman rank correlation of in-run affinity with measured transfer: {rho:.2f} "
              f"(over {len(shown)} tasks)."]
    if loto is not None:
      index = [labels.index(t) for t in tasks]
      off = ~np.eye(len(tasks), dtype=bool)
      rho_pairs = spearman(matrix[np.ix_(index, index)][off], loto[off])
      lines.append(f"Spearman correlation of affinity[i, j] with the leave-one-out gain of j from i: "
                   f"{rho_pairs:.2f} (over {int(off.sum())} task pairs).")
    lines.append("")
  lines += ["## Time", "", "| variant | runs | mean train + eval seconds per run |", "|---|---|---|"]
  lines += [f"| {v} | {n} | {s:.0f} |" for v, (n, s) in timings.items()]
  lines += ["", *[f"![{Path(p).stem}]({Path(p).name})" for p in plots], ""]
  return "\n".join(lines)


def _timings(results: Sequence[dict]) -> dict[str, tuple[int, float]]:
  by_family: dict[str, list[float]] = {}
  for r in results:
    by_family.setdefault(r["variant"].split("-")[0], []).append(r["train_seconds"] + r["eval_seconds"])
  return {k: (len(v), float(np.mean(v))) for k, v in by_family.items()}


def write_report(results: Sequence[dict], out_dir: Path, *, metric: str, tasks: Sequence[str],
                 command: str | None = None) -> dict:
  """results.csv, transfer.csv, report.md and the PNG plots in ``out_dir``; returns the summary."""
  out_dir = Path(out_dir)
  rows = result_rows(results, metric)
  write_csv(rows, out_dir / "results.csv")
  table = transfer_table(rows)
  with open(out_dir / "transfer.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=TRANSFER_FIELDS)
    writer.writeheader()
    writer.writerows(table)
  summary = transfer_summary(table)
  affinity = mean_affinity([out_dir / "mtl" / f"seed_{r['seed']}" for r in results if r["variant"] == "mtl"])
  loto = leave_one_out_matrix(rows, tasks)
  plots = []
  if table:
    plots.append(str(out_dir / "transfer.png"))
    plot_transfer(table, metric, out_dir / "transfer.png")
  if affinity is not None:
    plots.append(str(out_dir / "affinity.png"))
    plot_affinity(affinity[0], affinity[1], out_dir / "affinity.png",
                  transfer={r["task"]: r["relative_change"] for r in table})
  (out_dir / "report.md").write_text(markdown_report(
      table, summary, metric=metric, command=command, affinity=affinity, loto=loto, tasks=tasks,
      timings=_timings(results), plots=plots))
  return summary
