#!/usr/bin/env bash
# Recipe choices of the main job, each measured on the VALIDATION split only (issue: the paper's protocol):
# every task in every step, 5 pair tasks, 16 pairs per task and step, max length 64, at most 80 steps (the default ablation's
# budget and learning rate), validation every 20 steps on 300 examples per task, on the real corpus.
# Usage: bash docs/recipes/sweep.sh [variant ...]   (default: all). It prints a table of every variant in workdirs/recipes
# and writes it to workdirs/recipes/table.md; docs/recipes/results.md is written by hand from it, with its reading.
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON=(--config configs/mtl.py --config.data.task_mixing=all_tasks_per_step --config.data.batch_size=16
        --config.data.max_length=64 "--config.data.bucket_lengths=(32,64)" --config.total_steps=80
        --config.optim.warmup_steps=8 --config.eval.every_steps=20 --config.eval.max_examples=300
        --config.eval.evaluators=pair_auc,hard_negatives --config.checkpoint.every_steps=20 --config.log_every_steps=10
        # the losses and weights these runs had: BCE on every task at weight 1 (the main job's defaults since 6e0fda4
        # differ; docs/recipes/retrieval_sweep.sh)
        --config.task_losses.search=bce --config.task_losses.storyline=bce --config.task_losses.translation=bce
        --config.loss_weights.interest=1.0 --config.loss_weights.hashtag=1.0)
declare -A VARIANT=(
  [base]="--config.projection_init=random"   # the main job now starts from PCA; base is the recipe before it
  [pca_init]="--config.projection_init=pca"
  [infonce]="--config.projection_init=random --config.task_losses.search=infonce --config.task_losses.storyline=infonce --config.task_losses.translation=infonce"
  [matryoshka]="--config.projection_init=pca --config.matryoshka_dims=16,32"     # on top of pca_init, as adopted
  [initial_loss]="--config.projection_init=pca --config.task_weighting=initial_loss"
)
ORDER=(base pca_init infonce initial_loss matryoshka)
for name in "${@:-${ORDER[@]}}"; do
  start=$(date +%s)
  # shellcheck disable=SC2086
  python launch/train.py "${COMMON[@]}" ${VARIANT[$name]} --workdir "workdirs/recipes/$name" > "workdirs/recipes_$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s" | tee -a workdirs/recipes_times.txt
done
python - <<'PY'
import json, pathlib
rows = []
for d in sorted(p for p in pathlib.Path("workdirs/recipes").iterdir() if p.is_dir()):
  meta = json.loads((d / "export" / "postembed.json").read_text())
  rows.append((d.name, meta["step"], meta["validation"]))
keys = sorted({k for _, _, v in rows for k in v if k.endswith(("pair_auc", "pair_auc_hard", "triplet_accuracy_hard"))})
lines = ["| metric (validation) | " + " | ".join(n for n, _, _ in rows) + " |", "|---" * (len(rows) + 1) + "|",
         "| best step | " + " | ".join(str(s) for _, s, _ in rows) + " |"]
lines += [f"| {k} | " + " | ".join(f"{v.get(k, float('nan')):.3f}" for _, _, v in rows) + " |" for k in keys]
pathlib.Path("workdirs/recipes/table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
