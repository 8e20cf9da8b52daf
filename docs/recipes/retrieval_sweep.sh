#!/usr/bin/env bash
# Loss and task-weight choices at the main job's own scale (configs/mtl.py: every task in every step, 32 pairs per
# task and step, 64 tokens, the PCA start, 120 steps, best validation checkpoint exported), each scored on the
# VALIDATION split with retrieval against the whole pool next to pair AUC, beside the main job, the 384-d base model
# and its 50-d PCA (evaluate.py :quick suite, 300 examples per task).
# Usage: bash docs/recipes/retrieval_sweep.sh [variant ...]   (default: all). Writes workdirs/retrieval_sweep/.
# docs/recipes/results.md is written by hand from workdirs/retrieval_sweep/evaluate/results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=workdirs/retrieval_sweep
INFONCE="--config.task_losses.search=infonce --config.task_losses.storyline=infonce --config.task_losses.translation=infonce"
LABELS2="--config.loss_weights.interest=2.0 --config.loss_weights.hashtag=2.0"
declare -A VARIANT=(
  [bce]=""                                              # the main job as it is
  [infonce]="$INFONCE"                                  # InfoNCE on the three text-to-text tasks
  [infonce_search]="--config.task_losses.search=infonce"  # InfoNCE on search only
  [infonce_labels2]="$INFONCE $LABELS2"                 # ... and the two label tasks weighted 2
  [bce_labels2]="$LABELS2"                              # the control: label tasks weighted 2 under BCE
)
ORDER=(bce infonce infonce_search infonce_labels2 bce_labels2)
mkdir -p "$OUT"
models=()
for name in "${@:-${ORDER[@]}}"; do
  start=$(date +%s)
  # shellcheck disable=SC2086
  python launch/train.py --config configs/mtl.py ${VARIANT[$name]} --workdir "$OUT/$name" > "$OUT/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s" | tee -a "$OUT/times.txt"
  models+=("$OUT/$name")
done
IFS=,
python launch/evaluate.py --config configs/evaluate.py:quick --config.split=validation \
  --config.evaluators=pair_auc,retrieval,zero_shot "--config.model=all-MiniLM-L6-v2,pca50:all-MiniLM-L6-v2,${models[*]}" \
  --config.output_dir="$OUT/evaluate"
