"""Streaming PCA (``lopt_trace.analysis.pca``) against one raw Dask pass over the same ``state``
array, and against scikit-learn's PCA on a store that fits in memory; peak memory of each.

For each size in ``--sizes`` (MB of float32 ``state``), a store holding one ``state (run, step,
param, unit)`` array is written (``--source synthetic``, the default: Gaussian states with the
recorder's chunking, about 4 MiB per chunk, and its codec, ``lopt_trace.store.zarr_io.COMPRESSORS``;
the tables in docs/performance.md dated before 2026-12-03 11:30 used zstd level 3; or ``--source
record``: ``lopt-trace record --task mnist --params all`` with a fresh GRU of ``--units``, sized by
``--steps``, slow). Then each of these runs in its own fresh
process, which reports its wall time and its peak resident memory (``ru_maxrss``):

- ``import + open``: opening the store only (the floor every process pays; its time is the
  opening's);
- ``dask sum``: ``state.sum().compute()``, one raw pass over the data (the reference);
- ``streaming pca``: ``lopt_trace.analysis.pca.pca(state)`` (one pass, O(units²) memory);
- ``sklearn pca``: ``state.values`` loaded and ``sklearn.decomposition.PCA().fit`` (only for sizes
  up to ``--sklearn-max`` MB).

Targets (issue #13): streaming PCA throughput ≥ 50% of the raw pass; peak memory flat, below
2 GB at every size (1, 4 and 16 GB stores: ``--sizes 1000 4000 16000``).

    nice -n 5 python benchmarks/pca_stream.py --sizes 1000 4000 16000 --dir /big/disk
    python benchmarks/pca_stream.py --quick        # a small check that it runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the job each child process runs; prints one JSON line {"seconds", "peak_rss"}
CHILD = r'''
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, xarray as xr
path, job = sys.argv[1], sys.argv[2]
if job == "streaming pca":
    from lopt_trace.analysis.pca import pca  # imports are not timed
elif job == "sklearn pca":
    from sklearn.decomposition import PCA
t = time.perf_counter()
tree = xr.open_datatree(path, engine="zarr", chunks={})
node = tree["runs"][list(tree["runs"].children)[0]]
state = node["state"]
opened = time.perf_counter() - t
t = time.perf_counter()
if job == "dask sum":
    out = float(state.sum().compute())
elif job == "streaming pca":
    out = float(pca(state)["explained_variance"].values[0])
elif job == "sklearn pca":
    x = state.transpose(..., "unit").values.reshape(-1, state.sizes["unit"])
    x = x[np.isfinite(x).all(axis=1)]
    out = float(PCA().fit(x).explained_variance_[0])
else:
    out = 0.0
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds if job != "import + open" else opened, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "value": out}))
'''

JOBS = ("import + open", "dask sum", "streaming pca", "sklearn pca")


def synthetic_store(path: Path, megabytes: float, units: int, runs: int = 4) -> dict:
    """A store with one ``/runs/synthetic`` group holding ``state (run, step, param, unit)`` of about
    ``megabytes`` MB float32, chunked like the recorder's (4 runs, 64 steps, ~4 MiB chunks)."""
    import dask.array as da
    import numpy as np
    import xarray as xr

    steps = 64
    params = max(1, int(megabytes * 1e6 / (4 * runs * steps * units)))
    param_chunk = max(1, min(params, (4 << 20) // (4 * runs * steps * units)))
    chunks = (runs, steps, param_chunk, units)
    rs = da.random.default_rng(0)
    # a few strong directions plus noise, so the PCA has structure to find
    state = rs.standard_normal((runs, steps, params, units), chunks=chunks, dtype=np.float32)
    state = state * np.linspace(2.0, 0.1, units, dtype=np.float32)
    ds = xr.Dataset({"state": (("run", "step", "param", "unit"), state)},
                    coords={"unit": np.array([f"u{i}" for i in range(units)], dtype=object)})
    from lopt_trace.store.zarr_io import COMPRESSORS, quiet_zarr_writes

    enc = {"state": {"chunks": chunks, "compressors": COMPRESSORS}}

    with quiet_zarr_writes():
        xr.DataTree.from_dict({"/": xr.Dataset(), "/runs/synthetic": ds}).to_zarr(
            str(path), mode="w", zarr_format=3, consolidated=True, encoding={"/runs/synthetic": enc})
    return {"shape": (runs, steps, params, units), "bytes": runs * steps * params * units * 4}


def recorded_store(path: Path, steps: int, units: int) -> dict:
    """``lopt-trace record --task mnist --params all`` with a fresh ``units``-wide GRU."""
    from lopt_trace.optimizers import LearnedGRU
    from lopt_trace.recorder import OptimizerEntry, RecordConfig, record
    from lopt_trace.tasks import get_task

    import numpy as np

    opt = LearnedGRU(units=units)
    theta = {k: np.asarray(v) for k, v in opt.init_theta().items()}
    entry = OptimizerEntry("learned", opt, theta, "benchmark", "fresh GRU")
    task = get_task("mnist", steps=steps)
    record(task, [entry], RecordConfig(runs=1, steps=steps, params=None), str(path), overwrite=True,
           progress=False)
    n = task.num_params
    return {"shape": (1, steps, n, units), "bytes": steps * n * units * 4}


def child(path: Path, job: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), job], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{job} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_store(path: Path, source: str, size: float, units: int) -> dict:
    """Write the store in a child process, so this one stays small: a child started with
    ``subprocess`` (vfork, then exec) inherits the parent's peak RSS in its ``ru_maxrss`` on Linux,
    and a parent that had recorded in-process (1.6 GB) reported that for every job."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, __file__, "--make-store", str(path), source, str(size), str(units)],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"writing {path} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _make_store_child(path: str, source: str, size: str, units: str) -> None:
    size_mb, units_n = float(size), int(units)
    if source == "synthetic":
        info = synthetic_store(Path(path), size_mb, units_n)
    else:
        steps = max(1, int(size_mb * 1e6 / (82_250 * units_n * 4)))
        info = recorded_store(Path(path), steps, units_n)
    print(json.dumps({"shape": list(info["shape"]), "bytes": info["bytes"]}))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--make-store"]:
        _make_store_child(*argv[1:5])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=float, default=[64, 256],
                   help="MB of float32 state per store (default 64 256; the issue's: 1000 4000 16000)")
    p.add_argument("--units", type=int, default=256, help="state components (default 256)")
    p.add_argument("--source", choices=("synthetic", "record"), default="synthetic")
    p.add_argument("--sklearn-max", type=float, default=512,
                   help="run scikit-learn's PCA up to this many MB (it loads everything; default 512)")
    p.add_argument("--dir", default=None, help="where the stores are written (default a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--quick", action="store_true", help="a check that it runs: sizes 16 and 64 MB, 64 units")
    a = p.parse_args(argv)
    if a.quick:
        a.sizes, a.units = [16, 64], 64
    import psutil

    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.node()}; {os.cpu_count()} CPUs; "
          f"{psutil.virtual_memory().total / 1e9:.0f} GB memory; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{a.source} stores, {a.units} units; each job in a fresh process; throughput = uncompressed "
          "state bytes / job seconds (imports and opening excluded); peak RSS of the whole process")
    print("| store MB (uncompressed) | on disk MB | job | seconds | MB/s | × dask sum throughput | peak RSS MB |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="lopt-trace-pca-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        for size in a.sizes:
            path = base / f"state-{size:g}MB.zarr"
            info = make_store(path, a.source, size, a.units)
            disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            mb = info["bytes"] / 1e6
            ref = None
            for job in JOBS:
                if job == "sklearn pca" and mb > a.sklearn_max:
                    continue
                r = child(path, job)
                if job == "import + open":
                    print(f"| {mb:,.0f} | {disk / 1e6:,.0f} | {job} | {r['seconds']:.2f} | | | "
                          f"{r['peak_rss'] / 1e6:,.0f} |", flush=True)
                    continue
                rate = mb / r["seconds"]
                ref = rate if job == "dask sum" else ref
                print(f"| {mb:,.0f} | {disk / 1e6:,.0f} | {job} | {r['seconds']:.2f} | {rate:,.0f} | "
                      f"{rate / ref:.2f} | {r['peak_rss'] / 1e6:,.0f} |", flush=True)
            if not a.keep:
                shutil.rmtree(path, ignore_errors=True)
    finally:
        if not a.dir and not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
