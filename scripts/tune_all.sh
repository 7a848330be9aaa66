#!/usr/bin/env bash
# Reproduce data/tuned/<task>.json: one random search per task over sgd, momentum, rmsprop and adam.
#
# Usage: scripts/tune_all.sh [TASK ...]        (default: linear_regression rosenbrock two_moons)
#
# Each task's search writes its store to training/<task>-tune.zarr (dims sample, problem per
# optimizer, with selection, validation and what the tuning curves need) and merges the selected
# configurations into data/tuned/<task>.json (--bundle). Sizes are issue #17's (docs/tuning.md).
# A search checkpoints after every batch; when training/<task>-tune.zarr.checkpoint exists the
# script resumes it (no candidate is evaluated twice). The seeds are fixed, so the files are
# reproduced exactly (up to floating-point differences between machines).
# mnist is not in the default list: 256 candidates x 4 problems x 200 steps per baseline is many
# hours of this 2-core CPU, so it runs in the background across sessions (training/README.md):
#   TIME_BUDGET=2h scripts/tune_all.sh mnist
set -euo pipefail
cd "$(dirname "$0")/.."

# task -> "problems samples validation-problems" (cheap tasks validate on many problems: a step size
# at the edge of stability can diverge on 1 problem in 64, which 16 validation problems would miss)
declare -A PLAN=(
  [linear_regression]="256 10000 256"
  [rosenbrock]="256 10000 256"
  [two_moons]="8 512 16"
  [mnist]="4 256 16"
)
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=(linear_regression rosenbrock two_moons)

for task in "${tasks[@]}"; do
  read -r problems samples validation <<<"${PLAN[$task]:?unknown task $task}"
  out="training/$task-tune.zarr"
  resume=(--overwrite)
  [ -e "$out.checkpoint" ] && resume=(--resume)
  budget=()
  [ -n "${TIME_BUDGET:-}" ] && budget=(--time-budget "$TIME_BUDGET")
  echo "== $task: $samples candidates x $problems problems per baseline -> $out"
  nice -n 10 lopt-trace tune --task "$task" --optimizer all --samples "$samples" --seeds "$problems" --validation-problems "$validation" \
    --checkpoint-every 1 "${budget[@]}" "${resume[@]}" --out "$out" --bundle "data/tuned/$task.json" --no-progress \
    >> "training/$task-tune.log" 2>&1
done
