"""Seconds per meta-iteration against the seconds of the forward unroll alone, in the same run.

For each task, on the same meta-batch of problems and the same truncation, this times

- ``forward``: the forward unroll alone (the truncation's meta-objective, no gradient), the unit;
- ``exact``: one meta-iteration with exact meta-gradients (backpropagation, second derivatives);
- ``first-order``: one meta-iteration with first-order meta-gradients (``--first-order``);
- ``pes``: one meta-iteration of PES (``--estimator pes``; 2K forward unrolls per problem);
- ``exact (before)``, ``first-order (before)``: the meta-gradient as it was computed before the
  speed work (JAX's derivative of the GRU step, the whole step rematerialised, the loss
  differentiated through its forward pass), for comparison; ``--no-before`` skips them.

Targets (issue #11): exact ≤ 4× the forward unroll, first-order ≤ 2.5× (reverse mode costs
about 3× a forward pass). The machine may be shared, so every configuration is timed several
times, interleaved, and the minimum is kept, in CPU seconds (``time.process_time``, all threads;
what a shared machine's other load disturbs least) and in wall seconds.

    nice -n 5 python benchmarks/metatrain_speed.py [--units 32] [--truncation 20]
        [--batch two_moons=4 mnist=2] [--repeat 3] [--tasks two_moons mnist]
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from lopt_trace.metatrain import MetaTrainConfig, MetaTrainer
from lopt_trace.optimizers import LearnedGRU
from lopt_trace.tasks import get_task
from lopt_trace.unroll import run

TARGETS = {"exact": 4.0, "first-order": 2.5}


def timed(fn, *args):
    """(CPU seconds, wall seconds) of one call, waiting for the result."""
    cpu, wall = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.process_time() - cpu, time.perf_counter() - wall


def forward_unroll(trainer: MetaTrainer):
    """The forward unroll alone: the truncation's meta-objective for the meta-batch, no gradient."""
    task, opt, cfg = trainer.task, trainer.opt, trainer.cfg

    def meta_loss(theta, pop):
        def one(inner, data, f0):
            _, losses = run(task, opt, theta, data, inner, cfg.truncation)
            return jnp.mean(losses) / f0

        return jnp.mean(jax.vmap(one)(pop.inner, pop.data, pop.f0))

    return jax.jit(meta_loss)


def before_meta_gradient(trainer: MetaTrainer):
    """The meta-gradient as computed before the speed work: per problem ``run(remat=True)`` with
    the optimizer's autodiff step (this is the code path of the previous release)."""
    task, opt, cfg = trainer.task, trainer.opt, trainer.cfg

    def meta_loss(theta, pop):
        def one(inner, data, f0):
            _, losses = run(task, opt, theta, data, inner, cfg.truncation, remat=True,
                            first_order=cfg.first_order)
            return jnp.mean(losses) / f0

        return jnp.mean(jax.vmap(one)(pop.inner, pop.data, pop.f0))

    return jax.jit(jax.grad(meta_loss))


def measure(name: str, units: int, truncation: int, batch: int, repeat: int, before: bool) -> dict:
    task = get_task(name, steps=2 * truncation)  # two truncations: iteration 1 continues
    opt = LearnedGRU(units=units, input_scale=100.0, output_scale=0.01)
    common = dict(iterations=10, batch=batch, truncation=truncation)
    trainers = {
        "exact": MetaTrainer(task, opt, MetaTrainConfig(**common)),
        "first-order": MetaTrainer(task, opt, MetaTrainConfig(**common, first_order=True)),
        "pes": MetaTrainer(task, opt, MetaTrainConfig(**common, estimator="pes")),
    }
    states = {k: t.init() for k, t in trainers.items()}  # the same θ and problems for all
    ref = trainers["exact"]
    theta, pop = states["exact"].theta, states["exact"].population
    forward = forward_unroll(ref)
    calls = {"forward": lambda: forward(theta, pop)}
    for k, t in trainers.items():
        calls[k] = (lambda t=t, s=states[k]: t.step(s, 1)[1]["meta_loss"])
    if before:
        for k in ("exact", "first-order"):
            fn = before_meta_gradient(trainers[k])
            calls[f"{k} (before)"] = (lambda fn=fn: fn(theta, pop))
    best = {k: (np.inf, np.inf) for k in calls}
    for k, call in calls.items():  # compile
        jax.block_until_ready(call())
    for _ in range(repeat):
        for k, call in calls.items():
            cpu, wall = timed(call)
            best[k] = (min(best[k][0], cpu), min(best[k][1], wall))
    return {"task": name, "n": task.num_params, "batch": batch, "times": best}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--truncation", type=int, default=20)
    p.add_argument("--batch", nargs="+", default=["two_moons=4", "mnist=2"],
                   help="TASK=B pairs, or one number for all tasks")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tasks", nargs="+", default=["two_moons", "mnist"])
    p.add_argument("--no-before", action="store_true", help="skip the previous implementation")
    a = p.parse_args()
    batches = {}
    for item in a.batch:
        if "=" in item:
            k, v = item.split("=")
            batches[k] = int(v)
        else:
            batches.update({t: int(item) for t in a.tasks})
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; devices {jax.devices()}; jax {jax.__version__}; "
          f"{os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"GRU {a.units} units, truncation {a.truncation} steps; min of {a.repeat} interleaved "
          f"timings; ratio = seconds / seconds of the forward unroll (CPU; wall)")
    rows = []
    for name in a.tasks:
        res = measure(name, a.units, a.truncation, batches.get(name, 4), a.repeat, not a.no_before)
        fwd_cpu, fwd_wall = res["times"]["forward"]
        for k, (cpu, wall) in res["times"].items():
            target = TARGETS.get(k)
            verdict = "" if target is None else ("meets" if cpu / fwd_cpu <= target else "misses")
            rows.append((name, res["n"], res["batch"], k, cpu, wall, cpu / fwd_cpu, wall / fwd_wall,
                         f"≤ {target:g}× {verdict}" if target else ""))
    print("| task | n | batch | meta-iteration | CPU s | wall s | × forward (CPU) | × forward (wall) | target |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for name, n, b, k, cpu, wall, rc, rw, target in rows:
        print(f"| {name} | {n:,} | {b} | {k} | {cpu:.3f} | {wall:.3f} | {rc:.2f} | {rw:.2f} | {target} |")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
