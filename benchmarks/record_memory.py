"""Peak memory of ``lopt-trace record`` as the number of steps grows.

Each recording runs in its own subprocess; the parent samples the child's resident memory with
psutil every 10 ms, and the child reports its own peak (``ru_maxrss``) and its memory just
before recording started (after imports and data loading). Peak memory should be flat in the
number of steps: the recorder holds a bounded number of blocks, never the whole recording.

    python benchmarks/record_memory.py                        # two_moons, all params, steps x4
    python benchmarks/record_memory.py --task mnist --optimizer adam --params 64 --steps 50
    python benchmarks/record_memory.py --json                 # one JSON line (for tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(args) -> None:
    import resource

    import psutil

    from lopt_trace.recorder import Plan, RecordConfig, make_plan, record, resolve_optimizers, subset_indices
    from lopt_trace.tasks import get_task

    task = get_task(args.task, steps=args.steps)
    entries = resolve_optimizers(task.name, args.optimizer)
    params = None if args.params == "all" else int(args.params)
    cfg = RecordConfig(runs=args.runs, steps=args.steps, params=params, every=args.every)
    plan = None
    if args.block_records:
        n = subset_indices(task, params)[0].size
        base = make_plan(task, cfg, args.steps, n, max(e.optimizer.state_size for e in entries))
        plan = Plan(base.run_batch, args.block_records)
    if task.name == "mnist":
        task._data  # load the data set before the baseline is taken
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = record(task, entries, cfg, os.path.join(tmp, "s.zarr"), progress=False, plan=plan)
        size = result.size
    print(json.dumps({"steps": args.steps, "rss_before_mb": before / 2**20,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
                      "seconds": time.perf_counter() - start, "store_mb": size / 2**20}))


def measure(args, steps: int) -> dict:
    import psutil

    cmd = [sys.executable, __file__, "--child", "--task", args.task, "--runs", str(args.runs),
           "--params", str(args.params), "--steps", str(steps), "--every", str(args.every),
           "--block-records", str(args.block_records or 0)]
    for opt in args.optimizer:
        cmd += ["--optimizer", opt]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    row = json.loads(out.strip().splitlines()[-1])
    row["sampled_peak_rss_mb"] = peak / 2**20
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="two_moons")
    p.add_argument("--optimizer", action="append", default=None)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--params", default="all")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--block-records", type=int, default=0,
                   help="override the block size (0: the recorder's choice)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.optimizer = args.optimizer or ["sgd"]
    if args.child:
        return child(args)
    rows = [measure(args, args.steps), measure(args, args.steps * args.factor)]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"task {args.task}, optimizers {args.optimizer}, {args.runs} runs, params {args.params}, every {args.every}")
    print(f"{'steps':>7} {'before MB':>10} {'peak MB':>9} {'sampled MB':>11} {'peak-before':>12} "
          f"{'store MB':>9} {'s':>7}")
    for r in rows:
        print(f"{r['steps']:>7} {r['rss_before_mb']:>10.0f} {r['peak_rss_mb']:>9.0f} {r['sampled_peak_rss_mb']:>11.0f} "
              f"{r['peak_rss_mb'] - r['rss_before_mb']:>12.0f} {r['store_mb']:>9.1f} {r['seconds']:>7.1f}")


if __name__ == "__main__":
    main()
