"""The recorder at full size: every mnist parameter with a 256-unit GRU, against its two floors,
then the streaming PCA and the momentum recipe on the store it wrote.

No trained 256-unit GRU is bundled, so the optimizer is a freshly initialised ``LearnedGRU(units=
--units)`` (``init_theta``, the same one ``benchmarks/pca_stream.py --source record`` records).
Each job runs in its own process; the parent takes its wall time and its peak resident memory
(``ru_maxrss`` from ``os.wait4``), and the child reports its compute time (after imports, the task
and its data) and the CPU time of all its threads over it (``time.process_time``; CPU / compute is
how many cores were busy):

1. ``unrecorded``: the recorder's jitted blocks (``make_block_fn``) for the same runs, outputs
   fetched to the host and discarded, nothing written (as ``benchmarks/record_main.py``);
2. ``record``: ``lopt_trace.recorder.record(task, [fresh GRU], RecordConfig(runs, steps,
   params=None))`` into ``--dir``;
3. ``disk write``: the store's bytes on disk written again with NumPy into as many files of the
   same sizes, no fsync (as the recorder, which leaves flushing to the kernel); then ``sync``'s
   time is reported apart (what was still in the page cache);
4. ``streaming pca``: ``lopt_trace.analysis.pca.pca(state)``, one pass;
5. ``analyze momentum``: ``python -m lopt_trace.cli analyze momentum STORE``.

With ``--repeat 2`` (the default) jobs 1 and 2 run twice, each with its own persistent compilation
cache (empty before the first run), and the ratio uses the second runs (compilation loaded from
the cache). Target (issue #13): recording ≤ 1.25× the larger floor, max(unrecorded, disk write);
peak memory of the PCA and the recipe flat, below 2 GB.

    nice -n 5 python benchmarks/record_full.py --dir /big/disk          # 50 steps, 256 units
    python benchmarks/record_full.py --quick                            # a check that it runs
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _entry(units: int):
    import numpy as np

    from lopt_trace.optimizers import LearnedGRU
    from lopt_trace.recorder import OptimizerEntry

    opt = LearnedGRU(units=units)
    theta = {k: np.asarray(v, dtype=np.float32) for k, v in opt.init_theta().items()}
    return OptimizerEntry("learned", opt, theta, "benchmark", f"fresh {units}-unit GRU")


def child(args) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    if args.job in ("record", "unrecorded"):
        from lopt_trace import compile_cache
        from lopt_trace.recorder import RecordConfig, record
        from lopt_trace.tasks import get_task

        from _unrecorded import run_unrecorded  # benchmarks/ is the script's folder

        compile_cache.enable()
        task = get_task(args.task, steps=args.steps)
        if hasattr(task, "_data"):
            task._data  # load the data set before the clock starts
        entry = _entry(args.units)
        cfg = RecordConfig(runs=args.runs, steps=args.steps, params=None)
        t, cpu = time.perf_counter(), time.process_time()
        if args.job == "record":
            record(task, [entry], cfg, args.store, overwrite=True, progress=False)
        else:
            run_unrecorded(task, cfg, [entry])
        print(json.dumps({"compute_s": time.perf_counter() - t, "cpu_s": time.process_time() - cpu}))
    elif args.job == "streaming pca":
        import xarray as xr

        from lopt_trace.analysis.pca import pca

        t = time.perf_counter()
        tree = xr.open_datatree(args.store, engine="zarr", chunks={})
        state = tree["runs"]["learned"]["state"]
        ev = float(pca(state)["explained_variance_ratio"].values[0])
        print(json.dumps({"compute_s": time.perf_counter() - t, "value": ev}))


def run(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; its wall seconds, peak RSS (bytes, ``ru_maxrss``) and its last JSON line."""
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage (ru_maxrss)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0), err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    info = {"wall_s": wall, "peak_rss": usage.ru_maxrss * 1024, "stdout": out}
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            info.update(json.loads(line))
            break
    return info


def child_cmd(job: str, args, store: Path) -> list[str]:
    return [sys.executable, __file__, "--child", job, "--task", args.task, "--runs", str(args.runs),
            "--steps", str(args.steps), "--units", str(args.units), "--store", str(store)]


def files_of(path: Path) -> list[int]:
    return [f.stat().st_size for f in path.rglob("*") if f.is_file()]


def disk_write(sizes: list[int], where: Path) -> tuple[float, float]:
    """Write files of ``sizes`` bytes under ``where`` (no fsync); seconds, then ``sync``'s seconds."""
    import numpy as np

    buf = np.random.default_rng(0).integers(0, 256, max(sizes), dtype=np.uint8)
    where.mkdir(parents=True)
    t = time.perf_counter()
    for i, n in enumerate(sizes):
        with open(where / f"{i}.bin", "wb") as f:
            f.write(memoryview(buf)[:n])
    write = time.perf_counter() - t
    t = time.perf_counter()
    os.sync()
    return write, time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="mnist")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--units", type=int, default=256)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--repeat", type=int, choices=(1, 2), default=2,
                   help="runs of record and unrecorded, each with its own compilation cache (default 2: "
                        "the ratio uses the second, cache-warm runs)")
    p.add_argument("--dir", default=None, help="where the store is written (default a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the store")
    p.add_argument("--no-analysis", action="store_true", help="skip the PCA and the momentum recipe")
    p.add_argument("--quick", action="store_true", help="a check that it runs: two_moons, 8 steps, 32 units")
    p.add_argument("--child", dest="job", help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.job:
        child(a)
        return 0
    if a.quick:
        a.task, a.steps, a.units = "two_moons", 8, 32
    import psutil

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = datetime.datetime.now()
    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="lopt-trace-record-full-"))
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="record-full-", dir=base))
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    store = work / "store.zarr"
    rows: dict[str, dict] = {}
    try:
        for i in range(1, a.repeat + 1):
            for job in ("unrecorded", "record"):
                cache = {"LOPT_TRACE_COMPILE_CACHE": str(work / f"cache-{job}")}
                rows[f"{job}, run {i}"] = run(child_cmd(job, a, store), {**env, **cache})
        sizes = files_of(store)
        disk_bytes = sum(sizes)
        write_s, sync_s = disk_write(sizes, work / "disk-floor")
        shutil.rmtree(work / "disk-floor")
        rows["disk write"] = {"wall_s": write_s, "compute_s": write_s, "peak_rss": 0}
        rows["sync after it"] = {"wall_s": sync_s, "compute_s": sync_s, "peak_rss": 0}
        if not a.no_analysis:
            rows["streaming pca"] = run(child_cmd("streaming pca", a, store), env)
            rows["analyze momentum"] = run([sys.executable, "-m", "lopt_trace.cli", "analyze", "momentum",
                                            str(store)], env)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        if not a.dir:
            shutil.rmtree(base, ignore_errors=True)

    from lopt_trace.tasks import get_task

    n = get_task(a.task, steps=a.steps).num_params
    state_bytes = a.runs * a.steps * n * a.units * 4
    print(f"{started:%Y-%m-%d %H:%M}; {platform.node()}; {os.cpu_count()} CPUs; "
          f"{psutil.virtual_memory().total / 1e9:.0f} GB memory; load average {load}")
    print(f"{a.task} --params all ({n:,} parameters), {a.runs} run(s) x {a.steps} steps, fresh {a.units}-unit GRU; "
          f"state {state_bytes / 1e9:.2f} GB uncompressed, store {disk_bytes / 1e9:.2f} GB on disk "
          f"in {len(sizes):,} files; each job in a fresh process")
    print("| job | wall s | compute s | CPU s (all threads, compute) | cores busy | store MB/s (compute) | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        rate = disk_bytes / 1e6 / r["compute_s"] if r.get("compute_s") else float("nan")
        rss = f"{r['peak_rss'] / 1e6:,.0f}" if r["peak_rss"] else ""
        comp = f"{r['compute_s']:.1f}" if "compute_s" in r else ""
        rate_s = f"{rate:,.0f}" if name.startswith(("record", "disk")) else ""
        cpu = f"{r['cpu_s']:.1f}" if "cpu_s" in r else ""
        busy = f"{r['cpu_s'] / r['compute_s']:.2f}" if "cpu_s" in r else ""
        print(f"| {name} | {r['wall_s']:.1f} | {comp} | {cpu} | {busy} | {rate_s} | {rss} |")
    last = a.repeat
    rec, plain = rows[f"record, run {last}"], rows[f"unrecorded, run {last}"]
    floor = max(plain["compute_s"], write_s)
    print()
    which = "second (cache-warm)" if last == 2 else "first"
    print(f"{which} runs, compute: record / unrecorded {rec['compute_s'] / plain['compute_s']:.2f}x, "
          f"record / disk write {rec['compute_s'] / write_s:.2f}x, record / larger floor "
          f"{rec['compute_s'] / floor:.2f}x   (target <= 1.25x)")
    if last == 2:
        r1, p1 = rows["record, run 1"], rows["unrecorded, run 1"]
        print(f"first runs (compilation included), wall: record / unrecorded {r1['wall_s'] / p1['wall_s']:.2f}x")
    if "streaming pca" in rows:
        print(f"streaming pca: first component {rows['streaming pca']['value']:.3f} of the variance; "
              f"peak RSS {rows['streaming pca']['peak_rss'] / 1e9:.2f} GB, analyze momentum "
              f"{rows['analyze momentum']['peak_rss'] / 1e9:.2f} GB   (target < 2 GB)")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
