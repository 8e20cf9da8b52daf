#!/usr/bin/env bash
# Loss and task-weight choices at the main job's own scale (configs/mtl.py: every task in every step, 32 pairs per
# task and step, 64 tokens, the PCA start, 120 steps, best validation checkpoint exported), each scored on the
# VALIDATION split with retrieval against the whole pool next to pair AUC, beside the 384-d base model and its 50-d
# PCA (evaluate.py :quick suite, 300 examples per task). Every variant sets its losses and weights in full, so the
# script reproduces the 2026-12-08 runs whatever the main job's defaults (infonce_labels2 became them).
# Usage: bash docs/recipes/retrieval_sweep.sh [variant ...]   (default: all). Writes workdirs/retrieval_sweep/:
# evaluate/results.md (every metric) and in_run.md (each run's in-run validation mean pair AUC at its export).
# The 2026-12-08 runs were made one at a time with these flags into workdirs/mtl_* (docs/recipes/results.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=workdirs/retrieval_sweep
bce="--config.task_losses.search=bce --config.task_losses.storyline=bce --config.task_losses.translation=bce"
infonce="--config.task_losses.search=infonce --config.task_losses.storyline=infonce"
infonce="$infonce --config.task_losses.translation=infonce"
w1="--config.loss_weights.interest=1.0 --config.loss_weights.hashtag=1.0"
w2="--config.loss_weights.interest=2.0 --config.loss_weights.hashtag=2.0"
declare -A VARIANT=(
  [bce]="$bce $w1"                                          # the main job before 6e0fda4
  [infonce]="$infonce $w1"                                  # InfoNCE on the three text-to-text tasks
  [infonce_search]="$bce --config.task_losses.search=infonce $w1"  # InfoNCE on search only
  [infonce_labels2]="$infonce $w2"                          # ... and the two label tasks weighted 2: chosen
  [bce_labels2]="$bce $w2"                                  # the control: label tasks weighted 2 under BCE
)
ORDER=(bce infonce infonce_search infonce_labels2 bce_labels2)
for name in "${@:-${ORDER[@]}}"; do
  [[ -v "VARIANT[$name]" ]] || { echo "unknown variant $name; valid: ${ORDER[*]}" >&2; exit 2; }
done
mkdir -p "$OUT"
models=()
for name in "${@:-${ORDER[@]}}"; do
  start=$(date +%s)
  # shellcheck disable=SC2086
  python launch/train.py --config configs/mtl.py ${VARIANT[$name]} --workdir "$OUT/$name" > "$OUT/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
  models+=("$OUT/$name")
done
python - "${models[@]}" > "$OUT/in_run.md" <<'PY'
import json, pathlib, sys
print("| run | export step | in-run validation mean pair AUC |\n|---|---|---|")
for d in sys.argv[1:]:
  meta = json.loads((pathlib.Path(d) / "export" / "postembed.json").read_text())
  print(f"| {pathlib.Path(d).name} | {meta['step']} | {meta['validation']['val/mean_pair_auc']:.4f} |")
PY
cat "$OUT/in_run.md"
IFS=,
python launch/evaluate.py --config configs/evaluate.py:quick --config.split=validation \
  --config.evaluators=pair_auc,retrieval,zero_shot --config.output_dir="$OUT/evaluate" \
  "--config.model=all-MiniLM-L6-v2,pca50:all-MiniLM-L6-v2,${models[*]}"
