#!/usr/bin/env bash
# Make the stores docs/findings.md is generated from, then regenerate it.
#
# Usage: scripts/findings_stores.sh [TASK ...]   (default: all four; STORES=dir, default stores/)
#        scripts/findings_stores.sh --doc-only    (only regenerate docs/findings.md from the stores)
#
# Per task: `lopt-trace record` of the bundled `learned` optimizer with tuned momentum into
# STORES/<task>.zarr (and of `learned-warm`, where one is bundled, into STORES/<task>-warm.zarr:
# an analysis result belongs to one group per store), `analyze all`, and `distill` on DISTILL_PROBLEMS held-out problems (default 64; MNIST_DISTILL_PROBLEMS for
# mnist, default 16, because each MNIST problem is ~9 s of this CPU per variant). Then
# scripts/findings.py writes docs/findings.md. Hours on a 2-core CPU for mnist, minutes otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
STORES=${STORES:-stores}
mkdir -p "$STORES"
declare -A WARM=([two_moons]=1 [mnist]=1)
ALL=(linear_regression rosenbrock two_moons mnist)

tasks=()
doc_only=0
for a in "$@"; do [ "$a" = --doc-only ] && doc_only=1 || tasks+=("$a"); done
[ ${#tasks[@]} -eq 0 ] && tasks=("${ALL[@]}")

if [ $doc_only = 0 ]; then
  for task in "${tasks[@]}"; do
    groups=(learned)
    [ -n "${WARM[$task]:-}" ] && groups+=(learned-warm)
    problems=${DISTILL_PROBLEMS:-64}
    [ "$task" = mnist ] && problems=${MNIST_DISTILL_PROBLEMS:-16}
    for g in "${groups[@]}"; do
      store="$STORES/$task${g#learned}.zarr"
      echo "== $task: record $g and momentum -> $store"
      lopt-trace record --task "$task" --optimizer "$g" --optimizer momentum --out "$store" --overwrite
      lopt-trace analyze all "$store" --optimizer "$g"
      lopt-trace distill "$store" --optimizer "$g" --problems "$problems" --no-progress
    done
  done
fi

args=() ; distill=()
for task in "${ALL[@]}"; do
  if [ ! -e "$STORES/$task.zarr" ]; then  # never write a docs/findings.md that lacks a task
    echo "no $STORES/$task.zarr yet: docs/findings.md left as it is (scripts/findings_stores.sh $task)"
    exit 0
  fi
  args+=(--store "$task=$STORES/$task.zarr")
  distill+=(--distill "$task=$STORES/$task.zarr")
  [ -e "$STORES/$task-warm.zarr" ] && distill+=(--distill "$task=$STORES/$task-warm.zarr")
done
python scripts/findings.py "${args[@]}" "${distill[@]}" > docs/findings.md
echo "wrote docs/findings.md"
