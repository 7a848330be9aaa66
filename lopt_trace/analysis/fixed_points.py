"""Fixed points of the optimizer's state dynamics: states with F(θ, h*, g*) = h*.

A batched solver minimises q(h) = ½‖r(h)‖² with the residual r(h) = F(θ, h, g*) − h, from many
starting states at once. The default method is Levenberg–Marquardt on the residual: each
iteration solves (JᵀJ + μI) δ = −Jᵀr with the exact Jacobian J = ∂F/∂h − I (``jax.jacfwd``),
adds the geodesic acceleration ½a, (JᵀJ + μI) a = −Jᵀ r''(δ, δ) (Transtrum & Sethna 2012; the
second directional derivative by nested ``jax.jvp``; used when 2‖a‖ ≤ 0.75‖δ‖), accepts the
step if q falls (then μ ← μ/3) and otherwise raises μ ← 4μ. Near a fixed point that is not
degenerate this is Newton's method and converges quadratically; the acceleration keeps it fast
in the long curved valleys of q around nearly saturated, very slow fixed points (the bundled
Rosenbrock GRU at large g*, where plain LM creeps for hundreds of iterations). First-order
descent on q (``method="gd"``) needs thousands of iterations on the same problems because q is
badly conditioned where the dynamics are slow (see benchmarks/fixed_points.py).

Tolerance (documented): a start has **converged** when

    max_i |r_i(h)| ≤ tol · (1 + max_i |h_i|),      tol = 1e-9 by default (float64),

(i over the solved components: held ones, below, have no residual and set no scale) and h lies in the state's range. The error in h* itself is about the residual divided by
1 − |λ_max| (the slowest mode).

**The state's range.** Every optimizer declares a box [low, high] per state component
(:meth:`~lopt_trace.optimizers.base.ComponentwiseOptimizer.state_bounds`: |h| ≤ 1 for GRU units,
non-negative second moments, unbounded otherwise) that holds all its fixed points and that F maps
into itself. Starts are clipped into it. Solutions outside it are never fixed points of the
optimizer: a GRU iterate that runs into the saturated region, where F(h) ≈ h, can pass the
residual tolerance at |h| ≫ 1. By default iterates may leave the range on the way by at most
``range_margin`` (1) times its width; a start that goes further is stopped (``left_range``).
With ``project=True`` every step is projected onto the range instead (components on a bound
that descent pushes outwards are held there). Projection converged fewer starts where fixed
points sit at the edge of the range to float64 precision (``two_moons-warm`` at large g* in
benchmarks/fixed_points.py), so it is not the default.

**Forward warm-up.** Before the solver starts, every start is moved by ``warmup`` forward
iterations of F (default 100 in :func:`find_fixed_points` and the S-curve; 0 in the low-level
:func:`make_solver`). Attractors pull the starts in, out of the saturated corners where q has
minima that are not fixed points: on the bundled linear-regression GRU at g* = 1, Levenberg–
Marquardt straight from the starts converges from almost none of them, after the warm-up from
all (benchmarks/fixed_points.py). The price: starts near an unstable fixed point move away from
it, so use ``warmup=0`` to look for saddles.

**Per-start status** (``status``, see :data:`STATUS`): ``converged``; ``stalled`` (q did not halve
in ``patience`` (40) iterations, μ reached its ceiling, or q is not finite); ``left_range`` (not
converged, and the iterate is outside the range, or on its boundary when projected);
``max_iter`` (still improving at ``max_iter``). Converged and stopped starts are frozen, and the
batch stops as soon as no start is still active.

**Compiled once.** The solver is ``jax.jit``-ed with θ, the starts, g* (a scalar, or one per
start), the bounds and the numeric settings (tolerance, iteration limits, warm-up, range
handling) as arguments, and cached per optimizer configuration and method
(:func:`compiled_solver`), so a sweep over g*, another θ of the same shapes (checkpoints) or
other settings do not compile again. The number of starts is padded to a bucket (a power of two
up to 64, then a multiple of 64), so nearby batch sizes share a compilation too.

**Held components.** State components an optimizer lists in ``held_state`` (a gradient
normaliser such as the input-normalised GRU's ``gmax``, which decays to 0 without gradients) are
not solved for: they keep their starting value, and the solver finds fixed points of the other
components *given* them. :func:`find_fixed_points` sets them to their median over the starts, so
all starts solve the same system; the warm-up and the stability check hold them too.

:func:`merge_fixed_points` keeps the converged solutions inside the state's range, merges those
within about ``merge_tol`` of each other (grid hashing, then connected components of a k-d-tree's
neighbour graph of the occupied cells; no Python loop over pairs), and keeps for each the
solution with the smallest q and the number of starts that reached it. Given the optimizer, it
also gives each fixed point's spectral radius (of ∂F/∂h over the solved components) and checks it
by forward iteration (:func:`check_attractors`): a fixed point is an ``attractor`` if F pulls
small perturbations of it in several random directions back towards it. Where the starts were
does not matter: a fixed point far from every start is as real as one among them (the old
outlier rule, a box around the starts, is only applied when ``outlier_margin`` is given). With
``forward_steps`` > 0, :func:`fixed_points` also iterates F from every start and records which
reported fixed point each orbit settles at (:func:`forward_check`), so a missed attractor would
show (``forward_missed``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis._common import UNIT, attrs, float64, in_float64, theta64
from lopt_trace.analysis.fixed_point_merge import (_clusters, _range_of,  # noqa: F401 - re-exported
                                                  default_merge_tol, merge_fixed_points)
from lopt_trace.analysis.fixed_point_solver import (  # noqa: F401 - re-exported
    ACCEL_RATIO, CACHE_SIZE, CHECK_CHUNK, CONVERGED, DEFAULT_PATIENCE, DEFAULT_WARMUP, FIXED_POINT,
    G_STAR, LEFT_RANGE, MAX_ITER, METHODS, MU_MAX, MU_MIN, PULL, RANGE_MARGIN, STALLED, START, STATUS,
    STATUS_DESCRIPTION, _bucket, _cached, _pad, _settings_args, _solver_fn, clear_solver_cache,
    compiled_solver, free_mask, hold_at_median, make_solver, optimizer_key, solve_one_fn,
    solve_starts, solver_settings, state_bounds)
from lopt_trace.analysis.fixed_point_stability import (_check_fn, _forward_fn,  # noqa: F401 - re-exported
                                                      check_attractors, forward_iterate)


# -- the analysis-level functions ---------------------------------------------------------------

def sample_states(state: xr.DataArray, n: int = 256, seed: int = 0, unit: str = UNIT) -> xr.DataArray:
    """``n`` states picked at random from recorded trajectories ``(..., unit)``: (start, unit).

    Only the picked states are read (pointwise indexing of the Dask array); each start keeps the
    coordinates (run, step, param, ...) it came from. States with non-finite entries are dropped.
    """
    dims = [d for d in state.dims if d != unit]
    rng = np.random.default_rng(seed)
    idx = {d: xr.DataArray(rng.integers(0, state.sizes[d], n), dims=START) for d in dims}
    picked = state.isel(idx).transpose(START, unit).compute()
    keep = np.isfinite(picked.values).all(axis=1)
    picked = picked.isel({START: np.flatnonzero(keep)})
    return picked.assign_coords({START: np.arange(picked.sizes[START])})


def _status_attrs() -> dict:
    return attrs("solver status per start", flag_values=list(range(len(STATUS))),
                 flag_meanings=" ".join(STATUS), description=STATUS_DESCRIPTION)


@in_float64
def find_fixed_points(opt, theta, starts: xr.DataArray, g_star=0.0, noise: float = 0.0,
                      seed: int = 0, method: str = "lm", tol: float = 1e-9,
                      max_iter: int = 200, learning_rate: float = 0.5, *,
                      patience: int | None = None, project: bool = False,
                      range_margin: float | None = RANGE_MARGIN,
                      warmup: int = DEFAULT_WARMUP, accel: float = ACCEL_RATIO) -> xr.Dataset:
    """Solve F(θ, h, g*) = h from every start (``(start, unit)``) for every g* value.

    ``noise`` adds Gaussian noise to the starts, scaled by each unit's standard deviation over
    the starts. Components in ``opt.held_state`` are set to their median over the starts and
    held there. Every start is moved by ``warmup`` forward iterations of F first; iterates may
    leave the optimizer's state range by ``range_margin`` × its width (None: any distance), or
    are projected onto it (``project``); ``patience`` is the stall rule, ``accel`` the geodesic
    acceleration (module doc). The solver is compiled once per optimizer and method. Returns a
    Dataset over ``(g_star, start, unit)`` with ``start_state``, ``state`` (the solution),
    ``q`` (½‖F − h‖²), ``status`` (:data:`STATUS`), ``converged`` (status is converged),
    ``iterations``, and the range ``state_low``, ``state_high`` (unit).
    """
    starts = starts.transpose(..., UNIT)
    if starts.ndim != 2:
        raise ValueError(f"starts must be (start, unit), got dims {starts.dims}")
    start_dim = starts.dims[0]
    h0 = np.asarray(starts.values, dtype=np.float64)
    if noise > 0:
        rng = np.random.default_rng(seed)
        h0 = h0 + noise * h0.std(axis=0, keepdims=True) * rng.standard_normal(h0.shape)
    h0 = hold_at_median(opt, h0)
    gs = np.atleast_1d(np.asarray(g_star, dtype=np.float64))
    th = theta64(theta)
    low, high = state_bounds(opt, th)
    h, q, status, it = solve_starts(opt, th, h0, gs, method, tol, max_iter, learning_rate,
                                    patience=patience, project=project,
                                    range_margin=range_margin, warmup=warmup, accel=accel)
    coords = {k: v for k, v in starts.coords.items() if UNIT not in v.dims}
    coords[G_STAR] = gs
    if UNIT in starts.coords:
        coords[UNIT] = starts[UNIT].values
    return xr.Dataset(
        {
            "start_state": ((start_dim, UNIT), h0, attrs("starting state")),
            "state": ((G_STAR, start_dim, UNIT), h, attrs("fixed point h* with F(θ, h*, g*) = h*")),
            "q": ((G_STAR, start_dim), q, attrs("½‖F(θ, h, g*) − h‖² at the solution")),
            "status": ((G_STAR, start_dim), status.astype(np.int8), _status_attrs()),
            "converged": ((G_STAR, start_dim), status == CONVERGED,
                          attrs("reached the tolerance inside the state's range")),
            "iterations": ((G_STAR, start_dim), it, attrs("solver iterations", "count")),
            "state_low": ((UNIT,), low, attrs("lower end of the state's range")),
            "state_high": ((UNIT,), high, attrs("upper end of the state's range")),
        },
        coords=coords,
        attrs={"method": method, "tol": float(tol), "max_iter": int(max_iter),
               "noise": float(noise), "held": list(opt.held_state), "project": int(project),
               "range_margin": -1.0 if range_margin is None else float(range_margin),
               "warmup": int(warmup), "accel": float(accel),
               "patience": int(DEFAULT_PATIENCE if patience is None and method != "gd"
                               else (max_iter + 1 if patience is None else patience))},
    )


@in_float64
def forward_check(opt, theta, raw: xr.Dataset, merged: xr.Dataset, steps: int = 2000,
                  settle_tol: float = 1e-8) -> xr.Dataset:
    """Forward iteration from every start of ``raw`` (as the solver started: held components at
    their median, projected onto the range) for ``steps`` steps at each g*, matched against the
    fixed points in ``merged``.

    Returns ``forward_state (g_star, start, unit)``, ``forward_fixed_point`` (the reported fixed
    point its orbit settled at, within ``merge_tol`` plus 10 r / (1 − ρ) for an orbit with
    residual r at a fixed point with spectral radius ρ; −1: settled where no fixed point was
    reported, a missed attractor; −2: not settled, max|F(h) − h| > ``settle_tol`` (1 + max|h|)),
    and per g* ``forward_missed`` (starts whose orbit settled at an unreported point) and
    ``forward_settled``.
    """
    start_dim = next(dd for dd in raw["start_state"].dims if dd != UNIT)
    th = theta64(theta)
    low, high = _range_of(raw, opt, th, raw.sizes[UNIT])
    free = free_mask(opt) > 0
    h0 = raw["start_state"].transpose(start_dim, UNIT).values
    h0 = np.where(free, np.clip(h0, low, high), h0)
    gs = np.asarray(raw[G_STAR].values, dtype=np.float64)
    fps = merged["fixed_point_state"].transpose(G_STAR, FIXED_POINT, UNIT).values
    radius = float(merged.attrs["merge_tol"])
    rho = (merged["spectral_radius"].transpose(G_STAR, FIXED_POINT).values
           if "spectral_radius" in merged else None)
    ends, which = [], []
    for i, g in enumerate(gs):
        x, r = forward_iterate(opt, th, h0, g, steps)
        settled = r <= settle_tol * (1.0 + np.max(np.abs(np.where(free, x, 0.0)), axis=1))
        dist = np.sqrt(np.sum((x[:, None, :] - fps[i][None]) ** 2, axis=-1))  # (n, k); NaN pads
        dist = np.where(np.isfinite(dist), dist, np.inf)
        if rho is not None:  # an orbit with residual r is about r / (1 − ρ) from the attractor
            with np.errstate(divide="ignore", invalid="ignore"):
                slack = np.where(rho[i] < 1, 10.0 * r[:, None] / (1.0 - rho[i]), 0.0)
            dist = dist - np.nan_to_num(slack, nan=0.0)
        near = np.argmin(dist, axis=1) if dist.shape[1] else np.zeros(len(x), int)
        hit = dist[np.arange(len(x)), near] <= radius if dist.shape[1] else np.zeros(len(x), bool)
        ends.append(x)
        which.append(np.where(settled, np.where(hit, near, -1), -2))
    which = np.stack(which)
    return xr.Dataset(
        {
            "forward_state": ((G_STAR, start_dim, UNIT), np.stack(ends),
                              attrs(f"state after {steps} forward iterations of F at g*")),
            "forward_fixed_point": ((G_STAR, start_dim), which,
                                    attrs("reported fixed point the forward orbit settled at "
                                          "(−1: an unreported point; −2: not settled)")),
            "forward_missed": ((G_STAR,), (which == -1).sum(axis=1),
                               attrs("starts whose forward orbit settled at an unreported point",
                                     "count")),
            "forward_settled": ((G_STAR,), (which > -2).sum(axis=1),
                                attrs("starts whose forward orbit settled", "count")),
        },
        coords={G_STAR: gs},
        attrs={"forward_steps": int(steps), "settle_tol": float(settle_tol)},
    )


def fixed_points(opt, theta, starts: xr.DataArray, g_star=0.0, merge_tol: float | None = None,
                 outlier_margin: float | None = None, forward_steps: int = 0,
                 **solver) -> xr.Dataset:
    """:func:`find_fixed_points` then :func:`merge_fixed_points` (with the stability check),
    in one Dataset; with ``forward_steps`` > 0 also :func:`forward_check`."""
    raw = find_fixed_points(opt, theta, starts, g_star, **solver)
    merged = merge_fixed_points(raw, merge_tol, outlier_margin, opt=opt, theta=theta)
    parts = [raw, merged]
    if forward_steps:
        parts.append(forward_check(opt, theta, raw, merged, forward_steps))
    return xr.merge(parts, combine_attrs="drop_conflicts")


__all__ = [
    "STATUS",
    "check_attractors",
    "clear_solver_cache",
    "compiled_solver",
    "find_fixed_points",
    "fixed_points",
    "float64",
    "forward_check",
    "forward_iterate",
    "free_mask",
    "hold_at_median",
    "make_solver",
    "merge_fixed_points",
    "sample_states",
    "solve_one_fn",
    "solve_starts",
    "state_bounds",
]
