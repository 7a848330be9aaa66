"""Compare meta-training runs by their validation curves, read from their optimizer files.

    python scripts/estimator_runs.py                       # the two from-scratch two_moons runs
    python scripts/estimator_runs.py A.zarr B.zarr ...     # any optimizer files with validation

For each file: estimator, meta-learning rate, meta-batch, truncation, iterations run, wall time
and seconds per iteration (the whole command: steps, validation and checkpoints, on whatever
machine and load it ran), then the validation meta-objective (mean_k f_k / f_0 over the whole
horizon on the held-back validation problems) at every checkpoint, and the iteration and wall
time (pro rata) at which each run first reached a few thresholds. docs/metatrain.md prints this.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [ROOT / "training" / "two_moons-bptt.zarr", ROOT / "data" / "optimizers" / "two_moons.zarr"]


def load(path: Path) -> dict:
    tree = xr.open_datatree(path, engine="zarr", chunks={})
    m = dict(tree.attrs.get("metatrain") or {})
    hist = tree["meta_train"].to_dataset()
    done = int(m.get("iterations_done", hist.sizes["iteration"]))
    wall = m.get("wall_time_s")
    return {"name": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "estimator": m.get("estimator", "bptt"), "lr": m.get("learning_rate"), "batch": m.get("batch"),
            "truncation": m.get("truncation"), "done": done, "wall": wall,
            "per_it": wall / done if wall and done else float("nan"),
            "its": np.asarray(hist["checkpoint"].values, int),
            "val": np.asarray(hist["validation"].values, float)}


def first_reach(run: dict, level: float) -> str:
    hit = np.flatnonzero(run["val"] <= level)
    if not len(hit):
        return "not reached"
    it = int(run["its"][hit[0]])
    return f"it. {it} ({it * run['per_it'] / 60:.0f} min)"


def main(argv: list[str]) -> int:
    runs = [load(Path(p).resolve()) for p in (argv or DEFAULT)]
    best = min(np.nanmin(r["val"][1:]) for r in runs)
    worst_best = max(np.nanmin(r["val"][1:]) for r in runs)
    levels = sorted({round(float(x), 4) for x in (worst_best, 1.25 * best, 1.1 * best, 1.02 * best)},
                    reverse=True)
    print("| file | estimator | meta-lr | batch | truncation | iterations | wall min | s / it | best validation (it.) | "
          + " | ".join(f"first ≤ {v:g}" for v in levels) + " |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in levels) + " |")
    for r in runs:
        i = int(np.nanargmin(r["val"]))
        wall = f"{r['wall'] / 60:.0f}" if r["wall"] else "—"
        print(f"| `{r['name']}` | {r['estimator']} | {r['lr']:g} | {r['batch']} | {r['truncation']} | {r['done']} | "
              f"{wall} | {r['per_it']:.1f} | {r['val'][i]:.4f} ({r['its'][i]}) | "
              + " | ".join(first_reach(r, v) for v in levels) + " |")
    print()
    print("validation at each checkpoint (iteration: value)")
    for r in runs:
        print(f"- {r['estimator']}: " + "; ".join(f"{it} {v:.4f}" for it, v in zip(r["its"], r["val"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
