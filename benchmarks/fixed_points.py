"""Fixed-point finders compared, on the bundled trained optimizers and on random GRUs.

Part 1 (``--part sweep``, issue #16): for every bundled optimizer in ``data/optimizers/`` (starts
sampled from a 2-run store recorded with it on its task) and for a random GRU with slow
dynamics and ``--big-units`` units, at g* = 0 and over a sweep of ``--sweep`` values of g*
(±linspace over (0, g_max], g_max the 99th percentile of the recorded |g|, as the adaptation
recipe uses), it runs

- ``forward``: forward iteration of F from every start (``--forward-steps`` steps), the ground
  truth: the distinct points where orbits settle are the attractors the dynamics reach;
- ``lm``: the library's finder (``find_fixed_points`` + ``merge_fixed_points``: iterates kept in
  the state's range, forward warm-up, compiled once, frozen per start);
- ``lm as before #16``: the solver before issue #16 — plain Levenberg–Marquardt (no geodesic
  acceleration) straight from the starts, no range, no stall rule, 100 iterations — merged
  with the old outlier rule (a box around the starts); the old code also compiled on every
  call, so here the cache is cleared before each of the first three calls and "later" is the
  median of calls 2 and 3;
- ``lm projected``: the library's finder with ``project=True`` (iterates projected onto the
  range instead of stopped beyond a margin);
- ``adam on q``: the usual reference, Adam on q = ½‖h − F(h, g*)‖² from the same starts, stopped
  at the same tolerance (``--adam-steps`` steps at most), at g* = 0 and every ``--adam-every``-th
  g* of the sweep;

and prints the wall time of the first call (compilation included) and of later calls, the starts
that converged, and how many of forward iteration's attractors each reported (runaways: reported
fixed points outside the state's range).

Part 2 (``--part methods``): Levenberg–Marquardt and Gauss–Newton against gradient descent with
step sizes from a small grid on a 16-unit GRU with |λ_max| ≈ 0.94 (the table in docs/analysis.md).

    python benchmarks/fixed_points.py [--starts 1024] [--sweep 64] [--big-units 256]
    python benchmarks/fixed_points.py --part methods [--units 16] [--method-starts 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.analysis._common import float64, theta64
from lopt_trace.analysis.fixed_points import (
    CONVERGED,
    DEFAULT_WARMUP,
    _clusters,
    clear_solver_cache,
    default_merge_tol,
    find_fixed_points,
    forward_iterate,
    free_mask,
    hold_at_median,
    make_solver,
    merge_fixed_points,
    solve_starts,
    state_bounds,
)
from lopt_trace.optimizers import LearnedGRU

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-9


def slow_gru(units: int, seed: int = 0):
    """A GRU with random weights, slow update gates and a nonzero candidate bias."""
    gru = LearnedGRU(units=units)
    theta = gru.init_theta(jax.random.PRNGKey(seed))
    key = jax.random.PRNGKey(seed + 1)
    theta = {**theta, "b_z": jnp.full((units,), -2.0),
             "b_h": 0.5 * jax.random.normal(key, (units,)), "U_h": 1.2 * theta["U_h"]}
    return gru, theta


# -- part 1: the finders on bundled optimizers --------------------------------------------------

def _same_optimizer(path, trained) -> bool:
    from lopt_trace.analysis import open_for_analysis, rebuild

    try:
        opt, theta = rebuild(open_for_analysis(path), "learned")
    except Exception:
        return False
    return opt.config() == trained.optimizer.config() and all(
        np.array_equal(np.asarray(theta[k]), np.asarray(v)) for k, v in trained.theta.items())


def bundled_cases(names, n_starts: int, tmp: str, store_dir: str | None = None):
    """(label, optimizer, θ, starts (n, d), g_max, None) for each bundled optimizer file
    ``data/optimizers/<name>.zarr``: starts sampled from a 2-run store recorded with it on its
    task (``store_dir/<name>.zarr`` is reused when it holds this optimizer as ``learned``)."""
    from lopt_trace.analysis import open_for_analysis, run_group, sample_states
    from lopt_trace.analysis.sampling import gradient_quantile
    from lopt_trace.optimizers.io import load_optimizer
    from lopt_trace.recorder import OptimizerEntry, RecordConfig, record
    from lopt_trace.tasks import get_task

    for name in names:
        trained = load_optimizer(ROOT / "data" / "optimizers" / f"{name}.zarr")
        path = os.path.join(store_dir or tmp, f"{name}.zarr")
        if not (os.path.exists(path) and _same_optimizer(path, trained)):
            entry = OptimizerEntry("learned", trained.optimizer,
                                   {k: np.asarray(v) for k, v in trained.theta.items()}, "bundled",
                                   "learned")
            task = get_task((trained.task or {}).get("name", name))
            record(task, [entry], RecordConfig(runs=2, params=64), path, overwrite=True,
                   progress=False)
        ds = run_group(open_for_analysis(path), "learned")
        starts = sample_states(ds["state"], n_starts, 0)
        g_max = gradient_quantile(ds, 0.99)
        yield name, trained.optimizer, trained.theta, starts, float(g_max), None


def forward_attractors(opt, theta, starts, g, steps, radius):
    """Distinct settled end points of forward iteration from every start (the ground truth)."""
    low, high = state_bounds(opt, theta)
    h0 = np.where(free_mask(opt) > 0, np.clip(starts, low, high), starts)
    x, r = forward_iterate(opt, theta, h0, g, steps)
    settled = r <= 1e-8 * (1 + np.abs(x).max(axis=1))
    ends = x[settled]
    if not len(ends):
        return ends, int(settled.sum())
    labels = _clusters(ends, radius)
    return np.stack([ends[labels == k][0] for k in range(labels.max() + 1)]), int(settled.sum())


def n_found(reported, truth, radius):
    if not len(truth) or not len(reported):
        return 0
    dist = np.sqrt(((truth[:, None] - reported[None]) ** 2).sum(-1))
    return int((dist.min(axis=1) <= radius).sum())


def adam_on_q(opt, steps, lr=1e-2, tol=TOL):
    """Adam on q = ½‖F(h) − h‖² from every start, each stopping at the library's tolerance:
    a jitted ``solve(theta, starts (n, d), g) -> (h, converged, steps)``."""
    import optax

    free_np = free_mask(opt)
    tx = optax.adam(lr)

    def solve(theta, starts, g):
        free = jnp.asarray(free_np, starts.dtype)

        def res(h):
            return (opt.F(theta, h, jnp.asarray(g, h.dtype)) - h) * free

        def q(h):
            r = res(h)
            return 0.5 * jnp.sum(r * r)

        def done(h):
            r = res(h)
            return jnp.max(jnp.abs(r)) <= tol * (1 + jnp.max(jnp.abs(h)))

        def one(h0):
            def body(c):
                h, s, k, _ = c
                upd, s = tx.update(jax.grad(q)(h) * free, s)  # held components stay put
                h = optax.apply_updates(h, upd)
                return h, s, k + 1, done(h)

            h, _, k, ok = jax.lax.while_loop(lambda c: (~c[3]) & (c[2] < steps), body,
                                             (h0, tx.init(h0), 0, done(h0)))
            return h, ok, k

        return jax.vmap(one)(starts)

    return jax.jit(solve)


RECOMPILED_CALLS = 3  # the old solver compiled on every call: timed on this many calls


def run_finder(kind, opt, theta, starts_da, gs, radius, fwd, adam_steps):
    """One finder over the g* values ``gs``: (first call s, later calls s (median), compiled
    solve alone s (median; library finders), converged, attractors found, runaways)."""
    times, solve_times, conv, found, runaways = [], [], 0, 0, 0
    low, high = state_bounds(opt, theta)
    free = free_mask(opt) > 0
    with float64():
        th = theta64(theta)
    h0 = hold_at_median(opt, np.asarray(starts_da.values, np.float64))
    adam = adam_on_q(opt, adam_steps) if kind == "adam on q" else None
    for i in range(max(len(gs), 2)):  # a single g* is solved twice: the first and a later call
        g = gs[min(i, len(gs) - 1)]
        t = time.perf_counter()
        if adam is not None:
            with float64():
                h, ok, _ = jax.block_until_ready(adam(th, jnp.asarray(h0), g))
            h, ok = np.asarray(h), np.asarray(ok)
            n_ok = int(ok.sum())
            reps = h[ok][np.unique(_clusters(h[ok], radius), return_index=True)[1]] if ok.any() else h[:0]
        elif kind in ("lm", "lm projected"):
            raw = find_fixed_points(opt, theta, starts_da, g, project=kind == "lm projected")
            merged = merge_fixed_points(raw, radius, opt=opt, theta=theta)
        else:  # the solver before issue #16: compiled per call, no range, no warm-up, box rule
            if i < RECOMPILED_CALLS:
                clear_solver_cache()
            raw = find_fixed_points(opt, theta, starts_da, g, max_iter=100, patience=10**9,
                                    range_margin=None, warmup=0, accel=0.0)
            merged = merge_fixed_points(raw, radius, outlier_margin=1.0)
        times.append(time.perf_counter() - t)
        if i >= len(gs):
            continue
        if adam is None:
            conv += int((raw["status"] == CONVERGED).sum())
            keep = merged["count"].values[0] > 0
            reps = merged["fixed_point_state"].values[0][keep]
        else:
            conv += n_ok
        if kind in ("lm", "lm projected"):  # the compiled solve alone, same starts
            with float64():
                t = time.perf_counter()
                solve_starts(opt, th, h0, [g], project=kind == "lm projected", warmup=DEFAULT_WARMUP)
                solve_times.append(time.perf_counter() - t)
        found += n_found(reps, fwd[i], radius)
        runaways += int(np.any(((reps < low - 1e-9) | (reps > high + 1e-9)) & free, axis=1).sum())
    later = times[1:RECOMPILED_CALLS] if kind == "lm as before #16" else times[1:]

    def med(x):
        return float(np.median(x)) if len(x) else float("nan")

    return times[0], med(later), med(solve_times), conv, found, runaways


def sweep_part(args):
    tmp = tempfile.mkdtemp(prefix="lopt-trace-bench-")
    cases = []
    try:
        names = [n for n in args.optimizers.split(",") if n]
        cases += list(bundled_cases(names, args.starts, tmp, args.store_dir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.big_units:
        gru, theta = slow_gru(args.big_units)
        values = np.random.default_rng(0).normal(size=(args.big_starts, args.big_units)) * 0.5
        starts = xr.DataArray(values, dims=("start", "unit"), coords={"unit": list(gru.state_names)})
        cases.append((f"random GRU {args.big_units}", gru, theta, starts, 1.0, args.big_sweep))
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.2f} "
          f"({os.cpu_count()} CPUs); tolerance {TOL:g} (float64); forward iteration "
          f"{args.forward_steps} steps; Adam on q at most {args.adam_steps} steps (lr 1e-2)")
    header = (f"{'optimizer':20s} {'g*':>9s} {'finder':24s} {'first s':>8s} {'later s':>8s} "
              f"{'solve s':>8s} {'converged':>15s} {'attractors':>11s} {'runaways':>8s}")
    print(header)
    for label, opt, theta, starts, g_max, n_sweep in cases:
        n = starts.sizes["start"]
        g_max = g_max if np.isfinite(g_max) and g_max > 0 else 1.0
        half = np.linspace(0, g_max, (n_sweep or args.sweep) // 2 + 1)[1:]
        sweep = np.concatenate([-half[::-1], half])
        radius = default_merge_tol(np.asarray(starts.values, np.float64))
        for gname, gs in (("0", np.array([0.0])), (f"±{g_max:.3g} ({len(sweep)})", sweep)):
            with float64():
                th = theta64(theta)
                h0 = hold_at_median(opt, np.asarray(starts.values, np.float64))
                fwd, settled = [], 0
                for g in gs:
                    ends, s = forward_attractors(opt, th, h0, g, args.forward_steps, radius)
                    fwd.append(ends)
                    settled += s
            n_truth = sum(len(f) for f in fwd)
            print(f"{label:20s} {gname:>9s} {'forward iteration':24s} {'':>8s} {'':>8s} {'':>8s} "
                  f"{settled:>7d}/{n * len(gs):<7d} {n_truth:>5d}")
            kinds = ["lm", "lm projected", "lm as before #16"]
            if args.adam_steps:
                kinds.append("adam on q")
            kinds = [k for k in kinds if k in args.finders]
            for kind in kinds:
                g_use = gs if kind != "adam on q" else gs[:: max(1, args.adam_every)]
                f_use = fwd if kind != "adam on q" else fwd[:: max(1, args.adam_every)]
                first, later, solve, conv, found, runaways = run_finder(
                    kind, opt, theta, starts, g_use, radius, f_use, args.adam_steps)
                truth = sum(len(f) for f in f_use)
                print(f"{'':20s} {'' if len(g_use) == len(gs) else f'{len(g_use)} of them':>9s} "
                      f"{kind:24s} {first:8.3f} {later:8.3f} {solve:8.3f} {conv:>7d}/{n * len(g_use):<7d} "
                      f"{found:>5d}/{truth:<5d} {runaways:>8d}", flush=True)


# -- part 2: second order against first order ---------------------------------------------------

def bench(gru, theta, starts, method, max_iter, **kw):
    solve = make_solver(gru, theta, method, tol=TOL, max_iter=max_iter, **kw)
    g = jnp.zeros(1)
    jax.block_until_ready(solve(starts, g))  # compile
    t = time.perf_counter()
    _h, _q, conv, it = jax.block_until_ready(solve(starts, g))
    dt = time.perf_counter() - t
    return float(np.mean(conv)), float(np.median(it)), int(np.max(it)), dt


def methods_part(args):
    with float64():
        gru, theta = slow_gru(args.units)
        theta = theta64(theta)
        starts = jnp.asarray(np.random.default_rng(0).normal(size=(args.method_starts, args.units)) * 0.5)
        rows = [("levenberg-marquardt", *bench(gru, theta, starts, "lm", 100)),
                ("gauss-newton", *bench(gru, theta, starts, "gn", 100))]
        for lr in (0.5, 2.0, 5.0, 8.0):
            rows.append((f"gradient descent lr={lr:g}", *bench(gru, theta, starts, "gd",
                                                                args.gd_iterations, learning_rate=lr)))
    print(f"GRU with {args.units} units, {args.method_starts} starts, tolerance 1e-9 (float64)")
    print(f"{'method':28s} {'converged':>9s} {'median it':>10s} {'max it':>8s} {'time s':>8s}")
    for name, conv, med, mx, dt in rows:
        print(f"{name:28s} {100 * conv:8.0f}% {med:10.0f} {mx:8d} {dt:8.3f}")


def main(argv=None):  # noqa: D103
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("sweep", "methods", "all"), default="sweep")
    p.add_argument("--optimizers", default=",".join(sorted(
        q.name[:-5] for q in (ROOT / "data" / "optimizers").glob("*.zarr"))),
                   help="bundled optimizer files in data/optimizers (comma-separated names; "
                        "default all; empty for none)")
    p.add_argument("--starts", type=int, default=1024, help="starts per bundled optimizer")
    p.add_argument("--store-dir", help="reuse (or keep) the recorded stores <dir>/<task>.zarr")
    p.add_argument("--sweep", type=int, default=64, help="g* values in the sweep")
    p.add_argument("--big-units", type=int, default=256, help="units of the random GRU (0: skip)")
    p.add_argument("--big-starts", type=int, default=64)
    p.add_argument("--big-sweep", type=int, default=64, help="g* values in the random GRU's sweep")
    p.add_argument("--forward-steps", type=int, default=5000)
    p.add_argument("--adam-steps", type=int, default=5000, help="0: skip Adam on q")
    p.add_argument("--adam-every", type=int, default=8)
    p.add_argument("--finders", type=lambda t: [k.strip() for k in t.split(",")],
                   default=["lm", "lm projected", "lm as before #16", "adam on q"],
                   help="comma-separated finders to run against forward iteration (default all: "
                        "'lm,lm projected,lm as before #16,adam on q')")
    p.add_argument("--units", type=int, default=16, help="(methods) GRU units")
    p.add_argument("--method-starts", type=int, default=256, help="(methods) starts")
    p.add_argument("--gd-iterations", type=int, default=20000, help="(methods)")
    args = p.parse_args(argv)
    if args.part in ("sweep", "all"):
        sweep_part(args)
    if args.part in ("methods", "all"):
        methods_part(args)


if __name__ == "__main__":
    main()
