"""Lossy storage: what float16 and ``--keep-bits`` save, cost and change, against float32.

Records the same runs (same seeds, the bundled ``learned`` optimizer, two_moons by default) as
float32, float16 and float32 with ``--keep-bits`` 16, 12 and 8, each into its own store, then:

- store size on disk against the float32 store (whole store, and the per-parameter arrays
  ``state``, ``gradient`` and ``update`` alone);
- write time: the wall time of ``record`` against float32's, after a warm-up recording of each
  dtype (so compilation is left out; the steps are computed the same way for every setting, the
  difference is the writing and its codecs);
- the error of ``state`` against the float32 store: max and median of |x - x32| / |x32| over the
  values with |x32| >= 2**-14 (float16's smallest normal number);
- each recipe's headline numbers (momentum: dominant mode |λ| and α, and the first principal
  component's share of the recorded states' variance; clipping: saturation threshold at the
  initial state and median along the trajectories, and the fraction of stored gradients beyond it; schedule: η_end / η_start;
  adaptation: η at ±g_max over η at g* = 0), computed on every store with the recipe functions,
  with the relative change against float32.

    nice -n 5 python benchmarks/record_precision.py [--task two_moons] [--runs 4] [--steps 200]
        [--params 64]
    python benchmarks/record_precision.py --quick    # 2 runs x 60 steps, cheaper recipe settings

Prints Markdown tables with the date, the machine (CPUs) and the load average.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

#: (label, dtype, keep_bits); the first is the reference
SETTINGS = [("float32", "float32", None), ("float16", "float16", None),
            ("keep-bits 16", "float32", 16), ("keep-bits 12", "float32", 12), ("keep-bits 8", "float32", 8)]
PER_PARAM = ("state", "gradient", "update")


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _per_param_bytes(path: Path, group: str) -> int:
    return sum(_bytes(path / "runs" / group / v) for v in PER_PARAM)


def headline(tree, quick: bool) -> dict[str, float]:
    """The recipes' headline numbers on one store (the learned optimizer's group)."""
    from lopt_trace import recipes_loader

    kw = {"momentum": {"n_starts": 32, "forward_steps": 200, "n_error": 128} if quick else {},
          "clipping": {"n_states": 8} if quick else {},
          "adaptation": {"num": 11} if quick else {}}
    out = {}
    m = recipes_loader.load("momentum").compute(tree, **kw["momentum"])
    out["momentum |λ|"], out["momentum α"] = m.attrs["dominant_beta"], m.attrs["dominant_alpha"]
    out["momentum: PC1 share of state variance"] = float(m["explained_variance_ratio"][0])
    a = recipes_loader.load("clipping").compute(tree, **kw["clipping"]).attrs
    out["clipping threshold"], out["clipping threshold, trajectories"] = (
        a["threshold"], a["trajectory_threshold_median"])
    out["clipping: stored gradients beyond it"] = a["fraction_beyond_stored"]
    a = recipes_loader.load("schedule").compute(tree).attrs
    out["schedule η_end/η_start"] = a["eta_end"] / a["eta_start"] if a["eta_start"] else float("nan")
    a = recipes_loader.load("adaptation").compute(tree, **kw["adaptation"]).attrs
    e0 = a["eta_zero"]
    out["adaptation η(+g)/η(0)"] = a["eta_positive"] / e0 if e0 else float("nan")
    out["adaptation η(−g)/η(0)"] = a["eta_negative"] / e0 if e0 else float("nan")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="two_moons")
    p.add_argument("--optimizer", default="learned")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--params", type=int, default=64, help="parameters kept per tensor (default 64)")
    p.add_argument("--quick", action="store_true", help="2 runs x 60 steps, cheaper recipe settings")
    p.add_argument("--dir", default=None, help="where to write the stores (default: a temporary folder)")
    a = p.parse_args(argv)
    if a.quick:
        a.runs, a.steps = 2, 60

    from lopt_trace.analysis import open_for_analysis
    from lopt_trace.recorder import RecordConfig, record, resolve_optimizers
    from lopt_trace.tasks import get_task

    load0 = os.getloadavg()
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.node()}; {os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{x:.2f}' for x in load0)}")
    task = get_task(a.task, steps=a.steps)
    entries = resolve_optimizers(a.task, [a.optimizer])
    group = entries[0].name
    tmp = tempfile.TemporaryDirectory(dir=a.dir)
    root = Path(tmp.name)

    def rec(name, dtype, keep_bits):
        cfg = RecordConfig(runs=a.runs, params=a.params, dtype=dtype, keep_bits=keep_bits)
        out = root / f"{name.replace(' ', '-')}.zarr"
        start = time.perf_counter()
        record(task, entries, cfg, str(out), progress=False, overwrite=out.exists())
        return out, time.perf_counter() - start

    for dtype in ("float32", "float16"):  # compile both dtypes' blocks first
        rec(f"warmup-{dtype}", dtype, None)
    stores = {}
    for name, dtype, keep in SETTINGS:
        stores[name] = rec(name, dtype, keep)
    print(f"{a.task}, {a.optimizer} ({entries[0].optimizer.state_size} state components), {a.runs} runs x "
          f"{a.steps} steps, {a.params} parameters per tensor; compilation left out of the write times")
    print()
    ref_path, ref_time = stores["float32"]
    ref_tree = open_for_analysis(str(ref_path))
    x32 = ref_tree[f"runs/{group}/state"].values.astype(np.float64)
    normal = np.isfinite(x32) & (np.abs(x32) >= 2.0**-14)
    print("| setting | store MB | size / float32 | state+gradient+update / float32 | write time / float32 "
          "| state rel. error, max | median |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    trees = {}
    for name, _, _ in SETTINGS:
        path, seconds = stores[name]
        tree = trees[name] = open_for_analysis(str(path))
        x = tree[f"runs/{group}/state"].values.astype(np.float64)
        rel = np.abs(x[normal] - x32[normal]) / np.abs(x32[normal])
        print(f"| {name} | {_bytes(path) / 1e6:.2f} | {_bytes(path) / _bytes(ref_path):.2f} | "
              f"{_per_param_bytes(path, group) / _per_param_bytes(ref_path, group):.2f} | "
              f"{seconds / ref_time:.2f} | {rel.max():.1e} | {np.median(rel):.1e} |", flush=True)
    print()
    numbers = {name: headline(trees[name], a.quick) for name, _, _ in SETTINGS}
    keys = list(numbers["float32"])
    print("| recipe number | " + " | ".join(name for name, _, _ in SETTINGS) + " |")
    print("| --- | " + " | ".join("---:" for _ in SETTINGS) + " |")
    for k in keys:
        ref = numbers["float32"][k]
        cells = [f"{ref:.4g}"]
        for name, _, _ in SETTINGS[1:]:
            v = numbers[name][k]
            change = abs(v - ref) / abs(ref) if ref and np.isfinite(ref) and np.isfinite(v) else float("nan")
            cells.append(f"{v:.4g} ({change:.1e})")
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)
    print("(in parentheses: |value - float32's| / |float32's|)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
