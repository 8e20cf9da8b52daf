"""The ablation's report: the plots, the Markdown tables and ``write_report``, which writes the CSVs of
statistics.py, report.md and the PNGs into the ablation's workdir.

Per regime: the summary of better / not different / worse tasks, the transfer table of each metric (MTL and STL with
intervals, relative change, paired and Welch p-values, verdict), its plot, the leave-one-task-out matrix, the
lookahead affinity beside the measured transfer, then the learning-rate selection and every run's time. The numbers
all come from statistics.py; this module only lays them out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from postembed_jax.ablation import statistics


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
    incoming = statistics.incoming_affinity(labels, matrix)
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
  incoming = statistics.incoming_affinity(labels, matrix)
  lines = [
    f"Mean over {steps} logged steps of the MTL runs. Row i, column j: 1 - L_j(after a step on i) / L_j "
    "(before); positive means a step on i lowers j's loss.",
    "",
    "| step on \\ loss of | " + " | ".join(labels) + " |",
    "|---|" + "---|" * len(labels),
  ]
  lines += [f"| {t} | " + " | ".join(f"{v:.4f}" for v in matrix[i]) + " |" for i, t in enumerate(labels)]
  shown = [t for t in labels if t in transfer]
  rho = statistics.spearman([incoming[t] for t in shown], [transfer[t] for t in shown])
  lines += ["", "| task | mean affinity from the others | measured change MTL vs STL |", "|---|---|---|"]
  lines += [f"| {t} | {incoming[t]:.4f} | {100 * transfer[t]:+.2f}% |" for t in shown]
  verdict = (
    f"{rho:.2f} (over {len(shown)} tasks)"
    if np.isfinite(rho)
    else f"not defined over {len(shown)} task(s) (it needs 3 or more with some spread)"
  )
  lines += ["", f"Spearman rank correlation of in-run affinity with measured transfer: {verdict}."]
  if loto is not None and all(t in labels for t in tasks):
    index = [labels.index(t) for t in tasks]
    off = ~np.eye(len(tasks), dtype=bool)
    rho_pairs = statistics.spearman(matrix[np.ix_(index, index)][off], loto[off])
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
  rows = statistics.result_rows(results)
  statistics.write_csv(rows, out_dir / "results.csv")
  table = statistics.transfer_table(rows)
  statistics.write_csv(table, out_dir / "transfer.csv", statistics.TRANSFER_FIELDS)
  summary = statistics.transfer_summary(table)
  statistics.write_csv(summary, out_dir / "summary.csv", statistics.SUMMARY_FIELDS)
  statistics.write_csv(statistics.selection_rows(selection), out_dir / "selection.csv", statistics.SELECTION_FIELDS)
  statistics.write_csv(statistics.run_rows(runs), out_dir / "runs.csv", statistics.RUN_FIELDS)

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
        "share of its examples, both scored on it.",
        "",
      ]
    for name in dict.fromkeys(r["metric"] for r in table if r["regime"] == regime):
      lines += [f"### {name}", "", *transfer_lines(statistics.pick(table, regime, name)), ""]
    shown = statistics.pick(table, regime, metric)
    if shown:
      plot_transfer(shown, metric, out_dir / f"transfer_{regime}.png")
      lines += [f"![MTL vs STL, {regime}](transfer_{regime}.png)", ""]
    loto = statistics.leave_one_out_matrix([r for r in rows if r["regime"] == regime and r["metric"] == metric], tasks)
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
    affinity = statistics.mean_affinity(statistics.mtl_workdirs(rows, out_dir, regime))
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
      *selection_lines(statistics.selection_rows(selection)),
      "",
    ]
  lines += ["## Time", "", *time_lines(statistics.run_rows(runs), wall_seconds), ""]
  (out_dir / "report.md").write_text("\n".join(lines))
  first = next((s for s in summary if s["metric"] == metric), summary[0] if summary else {})
  return dict(first)
