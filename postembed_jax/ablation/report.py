"""The ablation's statistics, tables and plots: does multi-task training transfer positively to each task?

Per regime, task and every test metric the evaluators produced: the multi-task (MTL) and single-task (STL) means over
seeds with t-based 95% intervals, the relative change (MTL - STL) / STL, and a paired t-test over seed-matched runs
(seed s of MTL against seed s of STL); Welch's unpaired test is a second column, since where the seeds share little
between the arms the pairing buys nothing and costs degrees of freedom. A metric is significantly better or worse
at p < 0.05 of the paired test. Beside them: the lookahead affinity the MTL runs logged and how well it ranks the
measured transfer (Spearman), the learning-rate selection on validation (every grid run, the losers too), and every
run's wall time.
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


# ---------------------------------------------------------------------------------------------------------------
# Plots and the Markdown report.
# ---------------------------------------------------------------------------------------------------------------


def plot_transfer(table: Sequence[dict], metric: str, path: Path) -> None:
  """MTL and STL per task with intervals, and the relative change coloured by the paired test (rows of one regime
  and metric)."""
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
  colors = [
    "tab:green" if r["significant"] and c > 0 else "tab:red" if r["significant"] else "tab:gray"
    for r, c in zip(table, changes)
  ]
  ax_rel.bar(x, changes, color=colors)
  ax_rel.axhline(0, color="black", linewidth=0.8)
  ax_rel.set_xticks(x, tasks, rotation=30)
  ax_rel.set_ylabel("relative change MTL vs STL (%)\ngreen/red: significant (paired), gray: not")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_affinity(
  labels: Sequence[str],
  matrix: np.ndarray,
  path: Path,
  *,
  transfer: dict[str, float] | None,
  title: str = "lookahead affinity\nrow: task stepped on, column: loss measured",
) -> None:
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
      ax.annotate(
        t, (incoming[t], 100 * transfer[t]), xytext=(4, 5 if i % 2 else -11), textcoords="offset points", fontsize=8
      )
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))  # affinities are ~1e-3: plain ticks collide
    ax.locator_params(axis="x", nbins=5)
    ax.set_xlabel("mean affinity from the other tasks")
    ax.set_ylabel("measured relative change MTL vs STL (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def fmt_interval(mean: float, low: float, high: float) -> str:
  return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def _p(p: float) -> str:
  return f"{p:.3g}" if math.isfinite(p) else "n/a"


def transfer_lines(table: Sequence[dict]) -> list[str]:
  """The Markdown table of one regime and metric."""
  lines = ["| task | MTL | STL | relative change | paired p | Welch p | verdict |", "|---|---|---|---|---|---|---|"]
  for r in table:
    lines.append(
      f"| {r['task']} | {fmt_interval(r['mtl_mean'], r['mtl_ci_low'], r['mtl_ci_high'])} (n={r['n_mtl']})"
      f" | {fmt_interval(r['stl_mean'], r['stl_ci_low'], r['stl_ci_high'])} (n={r['n_stl']})"
      f" | {100 * r['relative_change']:+.2f}%{' *' if r['significant'] else ''} | {_p(r['p_paired'])}"
      f" (n={r['n_paired']}) | {_p(r['p_welch'])} | {r['verdict']} |"
    )
  return lines


def summary_lines(summary: Sequence[dict]) -> list[str]:
  lines = [
    "| regime | metric | tasks | mean relative change | significantly better | not different | "
    "significantly worse | untested |",
    "|---|---|---|---|---|---|---|---|",
  ]
  lines += [
    f"| {s['regime']} | {s['metric']} | {s['tasks']} | {100 * s['mean_relative_change']:+.2f}% | "
    f"{s['better']} | {s['not_different']} | {s['worse']} | {s['untested']} |"
    for s in summary
  ]
  return lines


def selection_lines(selection: Sequence[dict]) -> list[str]:
  """Per arm, each learning rate's best validation value (best step / steps trained) and the choice, from
  ``selection_rows`` (or ``read_selection``)."""
  if not selection:
    return []
  grid = list(dict.fromkeys(r["lr"] for r in selection))
  lines = [
    "| regime | arm | selection metric | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |",
    "|---|---|---|" + "---|" * len(grid) + "---|",
  ]
  for arm in dict.fromkeys((r["regime"], r["focus"], r["variant"]) for r in selection):
    part = {r["lr"]: r for r in selection if (r["regime"], r["focus"], r["variant"]) == arm}
    cells = [
      f"{part[lr]['value']:.4f} (best {part[lr]['best_step']} / {part[lr]['steps']})" if lr in part else ""
      for lr in grid
    ]
    chosen = next((f"{lr:g}" for lr, r in part.items() if r["chosen"]), "")
    regime, focus, variant = arm
    label = f"{regime} ({focus} scarce)" if focus else regime
    metric = next(iter(part.values()))["selection_metric"]
    lines.append(f"| {label} | {variant} | `{metric}` | " + " | ".join(cells) + f" | {chosen} |")
  return lines


def time_lines(runs: Sequence[dict], wall_seconds: float | None = None) -> list[str]:
  """Every run's steps and seconds, the mean per kind of arm and the total, from ``run_rows`` (or ``read_runs``)."""
  lines = ["| run | phase | steps | best step | train s | test s |", "|---|---|---|---|---|---|"]
  lines += [
    f"| {r['run']} | {r['phase']} | {r['steps']} | {r['best_step']} | {r['train_seconds']:.0f} | "
    f"{r['eval_seconds']:.0f} |"
    for r in runs
  ]
  kinds: dict[str, list[float]] = {}
  for r in runs:
    kinds.setdefault(r["variant"].split("-")[0].upper(), []).append(r["total_seconds"])
  total = sum(r["total_seconds"] for r in runs)
  lines += [
    "",
    "Mean seconds per run (training and test scoring): "
    + ", ".join(f"{k} {np.mean(v):.0f} ({len(v)} runs)" for k, v in kinds.items())
    + ".",
    f"Sum over {len(runs)} runs: {total:.0f} s ({total / 60:.1f} min) of run time (a resumed run counts the "
    "invocation that finished it).",
  ]
  if wall_seconds is not None:
    lines.append(
      f"Wall clock of the invocation that wrote this report: {wall_seconds:.0f} s ({wall_seconds / 60:.1f} min)."
    )
  return lines


def affinity_lines(
  affinity: tuple[list[str], np.ndarray, int], transfer: dict[str, float], loto: np.ndarray | None, tasks: Sequence[str]
) -> list[str]:
  labels, matrix, steps = affinity
  incoming = incoming_affinity(labels, matrix)
  lines = [
    f"Mean over {steps} logged steps of the MTL runs. Row i, column j: 1 - L_j(after a step on i) / L_j "
    "(before); positive means a step on i lowers j's loss.",
    "",
    "| step on \\ loss of | " + " | ".join(labels) + " |",
    "|---|" + "---|" * len(labels),
  ]
  lines += [f"| {t} | " + " | ".join(f"{v:.4f}" for v in matrix[i]) + " |" for i, t in enumerate(labels)]
  shown = [t for t in labels if t in transfer]
  rho = spearman([incoming[t] for t in shown], [transfer[t] for t in shown])
  lines += ["", "| task | mean affinity from the others | measured change MTL vs STL |", "|---|---|---|"]
  lines += [f"| {t} | {incoming[t]:.4f} | {100 * transfer[t]:+.2f}% |" for t in shown]
  lines += [
    "",
    f"Spearman rank correlation of in-run affinity with measured transfer: {rho:.2f} (over {len(shown)} tasks).",
  ]
  if loto is not None and all(t in labels for t in tasks):
    index = [labels.index(t) for t in tasks]
    off = ~np.eye(len(tasks), dtype=bool)
    rho_pairs = spearman(matrix[np.ix_(index, index)][off], loto[off])
    lines.append(
      f"Spearman correlation of affinity[i, j] with the leave-one-out gain of j from i: "
      f"{rho_pairs:.2f} (over {int(off.sum())} task pairs)."
    )
  return lines


def write_report(
  results: Sequence[dict],
  out_dir: Path,
  *,
  metric: str,
  tasks: Sequence[str],
  selection: Sequence[dict] = (),
  runs: Sequence[dict] | None = None,
  command: str | None = None,
  protocol: Sequence[str] = (),
  wall_seconds: float | None = None,
) -> dict:
  """results.csv, transfer.csv, summary.csv, selection.csv, runs.csv, report.md and the plots (per regime:
  transfer_<regime>.png for ``metric``, affinity_<regime>.png) in ``out_dir``; returns the summary of the first
  regime at ``metric``. ``results`` are the scored final runs, ``selection`` the learning-rate grid's training
  records (with "chosen"), ``runs`` every trained run once (default: ``results``)."""
  out_dir = Path(out_dir)
  runs = list(results) if runs is None else runs
  rows = result_rows(results)
  write_csv(rows, out_dir / "results.csv")
  table = transfer_table(rows)
  write_csv(table, out_dir / "transfer.csv", TRANSFER_FIELDS)
  summary = transfer_summary(table)
  write_csv(summary, out_dir / "summary.csv", SUMMARY_FIELDS)
  write_csv(selection_rows(selection), out_dir / "selection.csv", SELECTION_FIELDS)
  write_csv(run_rows(runs), out_dir / "runs.csv", RUN_FIELDS)

  lines = ["# Transfer ablation", ""]
  if command:
    lines += ["Produced by:", "", f"    {command}", ""]
  if protocol:
    lines += [*(f"* {line}" for line in protocol), ""]
  lines += [
    "Test-split metrics per task: means over seeds with t-based 95% intervals; relative change (MTL - STL) / "
    "STL; the verdict is the paired t-test over seed-matched runs (`scipy.stats.ttest_rel`) at p < 0.05 "
    "(`*` in the change column); Welch's t-test beside it.",
    "",
    "## Summary",
    "",
    *summary_lines(summary),
    "",
  ]
  for regime in dict.fromkeys(r["regime"] for r in table):
    lines += [f"## Regime `{regime}`", ""]
    if regime == "scarce":
      lines += [
        "Each task's row: MTL on all tasks with that task scarce against STL on that task at the same "
        "fraction, both scored on it.",
        "",
      ]
    for name in dict.fromkeys(r["metric"] for r in table if r["regime"] == regime):
      lines += [f"### {name}", "", *transfer_lines(pick(table, regime, name)), ""]
    shown = pick(table, regime, metric)
    if shown:
      plot_transfer(shown, metric, out_dir / f"transfer_{regime}.png")
      lines += [f"![MTL vs STL, {regime}](transfer_{regime}.png)", ""]
    loto = leave_one_out_matrix([r for r in rows if r["regime"] == regime and r["metric"] == metric], tasks)
    if loto is not None:
      lines += [
        f"### Leave one task out ({metric})",
        "",
        "Row k, column j: relative change of task j when task k is "
        "added to the other tasks, (MTL_j - without-k_j) / without-k_j.",
        "",
        "| with \\ on | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
      ]
      lines += [
        f"| {k} | " + " | ".join("" if not np.isfinite(v) else f"{100 * v:+.2f}%" for v in loto[i]) + " |"
        for i, k in enumerate(tasks)
      ]
      lines.append("")
    affinity = mean_affinity(mtl_workdirs(rows, out_dir, regime))
    if affinity is not None:
      transfer = {r["task"]: r["relative_change"] for r in shown}
      lines += [
        f"### Lookahead task affinity inside the multi-task runs ({regime})",
        "",
        *affinity_lines(affinity, transfer, loto, tasks),
        "",
      ]
      plot_affinity(affinity[0], affinity[1], out_dir / f"affinity_{regime}.png", transfer=transfer)
      lines += [f"![affinity, {regime}](affinity_{regime}.png)", ""]
  if selection:
    lines += [
      "## Learning-rate selection (validation only)",
      "",
      "Each arm's selection runs (seed "
      + ", ".join(str(s) for s in sorted({r["seed"] for r in selection}))
      + "): the best validation value of the selection metric (best step / steps trained), and the rate "
      "chosen; the test split is read only when the final runs are scored.",
      "",
      *selection_lines(selection_rows(selection)),
      "",
    ]
  lines += ["## Time", "", *time_lines(run_rows(runs), wall_seconds), ""]
  (out_dir / "report.md").write_text("\n".join(lines))
  first = next((s for s in summary if s["metric"] == metric), summary[0] if summary else {})
  return dict(first)
