#!/usr/bin/env bash
# Reproduce the bundled learned optimizers in data/optimizers/ from scratch (see docs/bundled.md).
#
# Usage: scripts/train_bundled.sh [TASK ...]     (default: all four; OUT=dir to write elsewhere)
# Each command is exactly the one used for the bundled file; its settings are also stored in the
# file itself (attrs "metatrain"), so `lopt-trace info` / xarray show them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-data/optimizers}
mkdir -p "$OUT"
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(linear_regression rosenbrock two_moons mnist)
for task in "${tasks[@]}"; do
  case "$task" in
    linear_regression)
      lopt-trace train --task linear_regression --units 32 --iterations 3000 --batch 64 --lr 2e-3 \
        --output-scale 1.0 --seed 1 --out "$OUT/linear_regression.zarr" --overwrite ;;
    rosenbrock)
      lopt-trace train --task rosenbrock --units 32 --iterations 3000 --batch 32 \
        --input-scale 0.01 --output-scale 0.05 --out "$OUT/rosenbrock.zarr" --overwrite ;;
    two_moons)
      lopt-trace train --task two_moons --units 16 --iterations 150 --batch 4 --lr 5e-4 \
        --warm-start sign-momentum --validation 8 --checkpoint-every 10 \
        --out "$OUT/two_moons.zarr" --overwrite ;;
    mnist)
      lopt-trace train --task mnist --units 16 --input-norm 0.9999 --iterations 100 --batch 2 \
        --truncation 20 --first-order --lr 5e-4 --validation 4 --warm-start sign-momentum \
        --warm-start-samples 32 --warm-start-seeds 2 --warm-start-lr-range 1e-3 3e-2 \
        --checkpoint-every 10 --out "$OUT/mnist.zarr" --overwrite ;;
    *) echo "unknown task $task" >&2; exit 2 ;;
  esac
done
