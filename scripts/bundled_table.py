"""Print the table of bundled learned optimizers for docs/bundled.md, read from the files themselves.

    python scripts/bundled_table.py            # markdown table on stdout

Every number comes from the optimizer files' ``metatrain`` attribute and ``/meta_train`` history
(data/optimizers/*.zarr), so the table cannot drift from what ships.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr

DATA = Path(__file__).resolve().parent.parent / "data" / "optimizers"


def row(path: Path) -> str:
    tree = xr.open_datatree(path, engine="zarr", chunks={})
    a = tree.attrs
    m = dict(a.get("metatrain") or {})
    opt = dict(a.get("optimizer") or {})
    task = (a.get("task") or {}).get("name", path.stem)
    spec = "learned-warm" if path.stem.endswith("-warm") else "learned"
    start = "warm start (soft-sign momentum)" if "warm_start" in m else "random weights"
    inputs = f"g / gmax (input_norm {opt['input_norm']})" if "input_norm" in opt else "raw g"
    hist = tree["meta_train"].to_dataset() if "meta_train" in tree.children else None
    done = m.get("iterations_done", hist.sizes["iteration"] if hist is not None else 0)
    planned = m.get("iterations", done)
    status = "finished" if m.get("finished", True) else f"unfinished ({done} of {planned})"
    estimator = m.get("estimator", "bptt")
    grad = f"{estimator}, {'first order' if m.get('first_order') else 'exact'}" if estimator == "bptt" else estimator
    val = "—"
    if hist is not None and "validation" in hist:
        v = np.asarray(hist["validation"].values, float)
        sel = m.get("selected_checkpoint", int(hist["selected_checkpoint"]) if "selected_checkpoint" in hist else None)
        its = list(hist["checkpoint"].values)
        kept = v[its.index(sel)] if sel in its else np.nanmin(v)
        val = f"{v[0]:.4g} → {kept:.4g} (it. {sel})"
    wall = f"{m['wall_time_s'] / 60:.0f} min" if "wall_time_s" in m else "not recorded"
    return (f"| {task} | `{spec}` | {start} | {inputs} | {opt.get('units')} | "
            f"{opt.get('input_scale'):g}, {opt.get('output_scale'):g} | {m.get('steps')} / "
            f"{m.get('truncation')} | {m.get('batch')} | {m.get('learning_rate'):g} | {grad} | "
            f"{status} | {val} | {wall} |")


def main() -> int:
    print("| task | spec | start | GRU input | units | scales (in, out) | horizon / truncation | "
          "meta-batch | meta-lr | meta-gradient | iterations | validation: start → kept | wall time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in sorted(DATA.glob("*.zarr")):
        print(row(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
