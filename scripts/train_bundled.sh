#!/usr/bin/env bash
# Reproduce the bundled learned optimizers in data/optimizers/ from scratch (see docs/bundled.md).
#
# Usage: scripts/train_bundled.sh [NAME ...]     (default: the four `learned` ones; OUT=dir to write elsewhere)
# NAME: linear_regression rosenbrock two_moons mnist two_moons-warm mnist-warm two_moons-bptt mnist-pes
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
      lopt-trace train --task linear_regression --estimator bptt --units 32 --iterations 3000 --batch 64 --lr 2e-3 \
        --output-scale 1.0 --seed 1 --out "$OUT/linear_regression.zarr" --overwrite ;;
    rosenbrock)
      lopt-trace train --task rosenbrock --estimator bptt --units 32 --iterations 3000 --batch 32 \
        --input-scale 0.01 --output-scale 0.05 --out "$OUT/rosenbrock.zarr" --overwrite ;;
    two_moons)  # from random weights, raw gradients, PES (the default `learned`). The bundled file is
                # this command stopped at iteration 200 (validation flat since ~70) and its best
                # validated θ (iteration 100) exported: python -m lopt_trace.export
                # training/two_moons-pes.zarr.checkpoint data/optimizers/two_moons.zarr --overwrite
      lopt-trace train --task two_moons --estimator pes --pes-std 0.01 --pes-pairs 2 --units 32 \
        --iterations 400 --batch 8 --truncation 50 --lr 3e-3 --input-scale 100 --output-scale 0.1 \
        --validation 8 --checkpoint-every 10 --out training/two_moons-pes.zarr ;;
    two_moons-bptt)  # the same by backpropagation (training/two_moons-bptt.zarr; docs/metatrain.md)
      lopt-trace train --task two_moons --estimator bptt --units 32 --iterations 160 --batch 8 --truncation 50 \
        --lr 1.5e-3 --input-scale 100 --output-scale 0.1 --validation 8 --checkpoint-every 10 \
        --out training/two_moons-bptt.zarr --overwrite ;;
    two_moons-warm)  # hand-set soft-sign-momentum warm start (`learned-warm`)
      lopt-trace train --task two_moons --estimator bptt --units 16 --iterations 150 --batch 4 --lr 5e-4 \
        --warm-start sign-momentum --validation 8 --checkpoint-every 10 \
        --out "$OUT/two_moons-warm.zarr" --overwrite ;;
    mnist)  # from random weights, raw gradients (the default `learned`); hours on 2 cores, so it
            # continues across sessions with --resume (training/README.md). The bundled file is the
            # best validated θ (iteration 10) of this command with --lr 3e-3 --iterations 400
            # --checkpoint-every 10, stopped at iteration 42 as it got worse; hence 1e-3 here
      lopt-trace train --task mnist --estimator bptt --units 32 --iterations 200 --batch 4 --truncation 20 \
        --first-order --lr 1e-3 --input-scale 100 --output-scale 0.01 --validation 4 \
        --checkpoint-every 5 --out training/mnist-scratch.zarr ;;
    mnist-pes)  # issue #11: PES from random weights on raw gradients; continues across sessions (resumes
                # when its checkpoint exists; TIME_BUDGET bounds one piece, default 2h40m)
      resume=(); [ -e training/mnist-pes.zarr.checkpoint ] && resume=(--resume)
      nice -n 10 lopt-trace train --task mnist --estimator pes --pes-std 0.01 --pes-pairs 2 --units 32 \
        --iterations 300 --batch 4 --truncation 20 --lr 3e-3 --input-scale 100 --output-scale 0.01 \
        --validation 4 --checkpoint-every 5 --time-budget "${TIME_BUDGET:-2h40m}" "${resume[@]}" \
        --out training/mnist-pes.zarr >> training/mnist-pes.log 2>&1 ;;
    mnist-warm)  # input-normalised, warm-started (`learned-warm`)
      lopt-trace train --task mnist --estimator bptt --units 16 --input-norm 0.9999 --iterations 100 --batch 2 \
        --truncation 20 --first-order --lr 5e-4 --validation 4 --warm-start sign-momentum \
        --warm-start-samples 32 --warm-start-seeds 2 --warm-start-lr-range 1e-3 3e-2 \
        --checkpoint-every 10 --out "$OUT/mnist-warm.zarr" --overwrite ;;
    *) echo "unknown task $task" >&2; exit 2 ;;
  esac
done
