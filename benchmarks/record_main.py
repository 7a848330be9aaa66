"""The main job, ``lopt-trace record --task mnist``, against the same runs without recording.

Four child processes, in this order, each timed from its start to its end (imports, data loading
and compilation included) and, inside, over the computation alone:

1. ``record`` with an empty compilation cache (a first run on a fresh machine);
2. ``record`` again, in a new process, with the cache the first one filled (the second run);
3. ``unrecorded`` with an empty cache of its own: the same jitted blocks of the recorder
   (``make_block_fn``), the same optimizers, problems and runs, outputs fetched to the host and
   discarded, nothing written;
4. ``unrecorded`` again, with its cache warm.

Ratios: (1)/(3) and (2)/(4), the cost of recording (target ≤ 1.25×), and (2)/(1), what the
persistent cache saves. Absolute seconds on a shared machine are noise; the ratios come from one
run. ``--task``, ``--runs`` and ``--steps`` shrink it for a quick look.

    nice python benchmarks/record_main.py                 # the README's first command
    python benchmarks/record_main.py --task two_moons --runs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args) -> None:
    t0 = time.perf_counter()
    from lopt_trace import compile_cache
    from lopt_trace.recorder import RecordConfig, record, resolve_optimizers
    from lopt_trace.tasks import get_task

    from _unrecorded import run_unrecorded  # benchmarks/ is the script's folder

    compile_cache.enable()
    task = get_task(args.task, **({"steps": args.steps} if args.steps else {}))
    cfg = RecordConfig(runs=args.runs, steps=args.steps)
    entries = resolve_optimizers(args.task, None)
    t1 = time.perf_counter()
    if args.mode == "record":
        record(task, entries, cfg, args.out, progress=False)
    else:
        run_unrecorded(task, cfg, entries)
    t2 = time.perf_counter()
    print(json.dumps({"setup_s": t1 - t0, "compute_s": t2 - t1}))


def run_child(mode: str, cache: Path, args, out: Path) -> dict:
    env = {**os.environ, "LOPT_TRACE_COMPILE_CACHE": str(cache)}
    cmd = [sys.executable, __file__, "--child", mode, "--task", args.task, "--runs", str(args.runs),
           "--out", str(out)] + (["--steps", str(args.steps)] if args.steps else [])
    t = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode:
        sys.exit(f"{mode} failed:\n{res.stderr[-2000:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["wall_s"] = wall
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mnist")
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--child", choices=("record", "unrecorded"), dest="mode")
    p.add_argument("--out")
    args = p.parse_args()
    if args.mode:
        return child(args)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = {}
        for name, mode, cache, i in (("record, first run", "record", "rec", 1),
                                     ("record, second run", "record", "rec", 2),
                                     ("unrecorded, first run", "unrecorded", "plain", 1),
                                     ("unrecorded, second run", "unrecorded", "plain", 2)):
            rows[name] = run_child(mode, tmp / cache, args, tmp / f"{mode}{i}.zarr")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}: lopt-trace record --task {args.task} --runs {args.runs}"
          f"{f' --steps {args.steps}' if args.steps else ''}; load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at the end, {os.cpu_count()} CPUs")
    print("| process | wall s | compute s (after imports and data) |")
    print("| --- | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['wall_s']:.1f} | {r['compute_s']:.1f} |")
    rec1, rec2 = rows["record, first run"], rows["record, second run"]
    pl1, pl2 = rows["unrecorded, first run"], rows["unrecorded, second run"]
    print()
    print(f"recording cost, first run:  wall {rec1['wall_s'] / pl1['wall_s']:.2f}x, "
          f"compute {rec1['compute_s'] / pl1['compute_s']:.2f}x   (target <= 1.25x)")
    print(f"recording cost, second run: wall {rec2['wall_s'] / pl2['wall_s']:.2f}x, "
          f"compute {rec2['compute_s'] / pl2['compute_s']:.2f}x   (target <= 1.25x)")
    print(f"second run / first run (persistent compilation cache): record wall "
          f"{rec2['wall_s'] / rec1['wall_s']:.2f}x, compute {rec2['compute_s'] / rec1['compute_s']:.2f}x")


if __name__ == "__main__":
    main()
