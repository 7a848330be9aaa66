"""Tuning: candidates per second, vmapped batch against one candidate at a time, in the same run.

Both sides score the same candidates of the same random search (``lopt_trace.tune.plan_search``)
on the same problems with the same evaluator (``make_evaluator``, vmapped over problems):

- ``vmapped``: the search's batch (``--batch``, default the search's own choice), as
  ``lopt-trace tune`` runs it;
- ``one at a time``: batches of one candidate.

The first call of each side compiles and is left out; candidates per second = candidates of the
other calls / their wall time (``evaluate_batches``' own timings, padding included as it costs the
same). The scores of the two sides are compared too. With several JAX devices the batch is split
across them (``ShardedEvaluator``).

    nice -n 5 python benchmarks/tune_vmap.py [--tasks two_moons mnist] [--optimizer adam]
        [--samples 256] [--seeds 4] [--steps 100]
    python benchmarks/tune_vmap.py --quick        # a small check that it runs
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import jax
import numpy as np

from lopt_trace.tasks import get_task
from lopt_trace.tune import evaluate_batches, make_evaluator, plan_search, sample_problems, tuning_setup


def rate(fn, plan, problems, batch: int) -> tuple[float, np.ndarray, int]:
    """(candidates per second after the first call, all scores, batch used)."""
    from lopt_trace.tune import equal_batches

    batch, _ = equal_batches(plan.samples, batch)
    scores = np.empty((plan.samples, len(plan.seeds)), np.float32)
    seconds, done = 0.0, 0
    for i, lo, hi, s, t in evaluate_batches(fn, plan.thetas, problems, batch):
        scores[lo:hi] = s
        if i > 0:
            seconds += t
            done += batch
    return (done / seconds if seconds > 0 else float("nan")), scores, batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["two_moons", "mnist"])
    p.add_argument("--optimizer", default="adam", help="baseline whose search is timed (default adam)")
    p.add_argument("--samples", type=int, default=256, help="candidates (default 256)")
    p.add_argument("--seeds", type=int, default=4, help="problems per candidate (default 4)")
    p.add_argument("--steps", type=int, default=100, help="inner steps (default 100)")
    p.add_argument("--batch", type=int, default=None, help="vmapped batch (default: the search's)")
    p.add_argument("--quick", action="store_true",
                   help="a check that it runs: two_moons, 24 candidates, 2 problems, 20 steps, batch 8")
    a = p.parse_args(argv)
    if a.quick:
        a.tasks, a.samples, a.seeds, a.steps, a.batch = ["two_moons"], 24, 2, 20, a.batch or 8
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.node()}; devices {jax.devices()}; "
          f"jax {jax.__version__}; {os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{a.optimizer}: {a.samples} candidates × {a.seeds} problems × {a.steps} steps; first call "
          "(compilation) left out")
    print("| task | n | batch | vmapped cand/s | one at a time cand/s | vmapped / one at a time | rel. score difference, median / max |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in a.tasks:
        task = get_task(name, steps=a.steps)
        opt, space, to_theta, _ = tuning_setup(a.optimizer)
        plan = plan_search(task, space, to_theta, a.samples, a.seeds, a.steps, a.batch)
        problems = sample_problems(task, plan.seeds)
        fn = make_evaluator(task, opt, plan.steps)
        vm, s_vm, batch = rate(fn, plan, problems, plan.batch)
        one, s_one, _ = rate(fn, plan, problems, 1)
        ok = np.isfinite(s_vm) & np.isfinite(s_one)
        rel = np.abs(s_vm[ok] - s_one[ok]) / np.maximum(np.abs(s_one[ok]), 1e-30)
        diff = f"{np.median(rel):.1e} / {np.max(rel):.1e}" if ok.any() else "n/a"
        print(f"| {name} | {task.num_params:,} | {batch} | {vm:.2f} | {one:.2f} | {vm / one:.2f}× | {diff} |",
              flush=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
