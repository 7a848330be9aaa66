"""Fixed-point solvers compared: Levenberg–Marquardt and Gauss–Newton against gradient descent.

Finds the fixed points of a GRU optimizer with slow dynamics (|λ_max| ≈ 0.94, the regime of a
trained optimizer's momentum) from many random starts, to the library's default tolerance
max|F(h) − h| ≤ 1e-9 (1 + max|h|), and prints, for each method, the share of starts that
converged, the median and largest iteration count, and the wall time after compilation.
Gradient descent on q = ½‖F(h) − h‖² gets its best step size from a small grid.

    python benchmarks/fixed_points.py [--units 16] [--starts 256]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from lopt_trace.analysis._common import float64, theta64
from lopt_trace.analysis.fixed_points import make_solver
from lopt_trace.optimizers import LearnedGRU


def slow_gru(units: int, seed: int = 0):
    """A GRU with random weights, slow update gates and a nonzero candidate bias."""
    gru = LearnedGRU(units=units)
    theta = gru.init_theta(jax.random.PRNGKey(seed))
    key = jax.random.PRNGKey(seed + 1)
    theta = {**theta, "b_z": jnp.full((units,), -2.0),
             "b_h": 0.5 * jax.random.normal(key, (units,)), "U_h": 1.2 * theta["U_h"]}
    return gru, theta


def bench(gru, theta, starts, method, max_iter, **kw):
    solve = make_solver(gru, theta, method, tol=1e-9, max_iter=max_iter, **kw)
    g = jnp.zeros(1)
    jax.block_until_ready(solve(starts, g))  # compile
    t = time.perf_counter()
    _h, _q, conv, it = jax.block_until_ready(solve(starts, g))
    dt = time.perf_counter() - t
    return float(np.mean(conv)), float(np.median(it)), int(np.max(it)), dt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=16)
    p.add_argument("--starts", type=int, default=256)
    p.add_argument("--gd-iterations", type=int, default=20000)
    args = p.parse_args(argv)
    with float64():
        gru, theta = slow_gru(args.units)
        theta = theta64(theta)
        starts = jnp.asarray(np.random.default_rng(0).normal(size=(args.starts, args.units)) * 0.5)
        rows = [("levenberg-marquardt", *bench(gru, theta, starts, "lm", 100)),
                ("gauss-newton", *bench(gru, theta, starts, "gn", 100))]
        for lr in (0.5, 2.0, 5.0, 8.0):
            rows.append((f"gradient descent lr={lr:g}", *bench(gru, theta, starts, "gd",
                                                                args.gd_iterations, learning_rate=lr)))
    print(f"GRU with {args.units} units, {args.starts} starts, tolerance 1e-9 (float64)")
    print(f"{'method':28s} {'converged':>9s} {'median it':>10s} {'max it':>8s} {'time s':>8s}")
    for name, conv, med, mx, dt in rows:
        print(f"{name:28s} {100 * conv:8.0f}% {med:10.0f} {mx:8d} {dt:8.3f}")


if __name__ == "__main__":
    main()
