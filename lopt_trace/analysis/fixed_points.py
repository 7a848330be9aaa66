"""Fixed points of the optimizer's state dynamics: states with F(θ, h*, g*) = h*.

A batched solver minimises q(h) = ½‖r(h)‖² with the residual r(h) = F(θ, h, g*) − h, from many
starting states at once (``vmap`` over starts and over g* values). The default method is
Levenberg–Marquardt on the residual: each iteration solves (JᵀJ + μI) δ = −Jᵀr with the exact
Jacobian J = ∂F/∂h − I (``jax.jacfwd``), accepts the step if q falls (then μ ← μ/3) and otherwise
raises μ ← 4μ. Near a fixed point that is not degenerate this is Newton's method and converges
quadratically; first-order descent on q (``method="gd"``) needs thousands of iterations on the
same problems because q is badly conditioned where the dynamics are slow (see
benchmarks/fixed_points.py).

Tolerance (documented): a start has **converged** when

    max_i |r_i(h)| ≤ tol · (1 + max_i |h_i|),      tol = 1e-9 by default (float64).

The error in h* itself is about the residual divided by 1 − |λ_max| (the slowest mode).

**Held components.** State components an optimizer lists in ``held_state`` (a gradient
normaliser such as the input-normalised GRU's ``gmax``, which decays to 0 without gradients) are
not solved for: they keep their starting value, and the solver finds fixed points of the other
components *given* them. :func:`find_fixed_points` sets them to their median over the starts, so
all starts solve the same system.

:func:`merge_fixed_points` merges converged solutions within about ``merge_tol`` of each other
(grid hashing, then connected components of a k-d-tree's neighbour graph of the occupied cells;
no Python loop over pairs), keeps for each the
solution with the smallest q and the number of starts that reached it, and excludes outliers:
solutions outside the box spanned by the reference states (by default the starts) widened by
``outlier_margin`` times its width on each side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.analysis._common import UNIT, attrs, float64, in_float64, theta64

START = "start"
G_STAR = "g_star"
FIXED_POINT = "fixed_point"
METHODS = ("lm", "gn", "gd")


def solve_one_fn(opt, theta, method: str = "lm", tol: float = 1e-9, max_iter: int = 100,
                 learning_rate: float = 0.5, mu0: float = 1e-3):
    """The solver for one start and one g*: ``solve(h0 (d,), g ()) -> (h, q, converged, iters)``.

    ``method`` is ``"lm"`` (Levenberg–Marquardt), ``"gn"`` (plain Gauss–Newton, every step
    accepted) or ``"gd"`` (gradient descent on q with step ``learning_rate``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")

    free = jnp.asarray(free_mask(opt))

    def res(h, g):  # held components: zero residual, and (below) zero Jacobian columns
        return (opt.F(theta, h, g) - h) * free

    def done(h, r):
        return jnp.max(jnp.abs(r)) <= tol * (1.0 + jnp.max(jnp.abs(h)))

    def solve_one(h0, g):
        d = h0.shape[-1]
        eye = jnp.eye(d, dtype=h0.dtype)
        r0 = res(h0, g)
        carry0 = (h0, r0, jnp.asarray(mu0, h0.dtype), jnp.asarray(0), done(h0, r0))

        def cond(c):
            return (~c[4]) & (c[3] < max_iter)

        def body(c):
            h, r, mu, it, _ = c
            if method == "gd":
                _, vjp = jax.vjp(lambda hh: res(hh, g), h)
                h_new = h - learning_rate * vjp(r)[0] * free
                r_new = res(h_new, g)
                return h_new, r_new, mu, it + 1, done(h_new, r_new)
            jac = jax.jacfwd(res)(h, g) * free  # held columns zero: steps leave them alone
            if method == "gn":
                step = -jnp.linalg.lstsq(jac, r)[0]
            else:
                step = -jnp.linalg.solve(jac.T @ jac + mu * eye, jac.T @ r)
            h_new = h + step
            r_new = res(h_new, g)
            if method == "gn":
                better = jnp.all(jnp.isfinite(r_new))
            else:
                better = jnp.isfinite(r_new).all() & (jnp.sum(r_new * r_new) < jnp.sum(r * r))
            h = jnp.where(better, h_new, h)
            r = jnp.where(better, r_new, r)
            mu = jnp.where(better, jnp.maximum(mu / 3.0, 1e-15), jnp.minimum(mu * 4.0, 1e15))
            return h, r, mu, it + 1, done(h, r)

        h, r, _, it, conv = jax.lax.while_loop(cond, body, carry0)
        return h, 0.5 * jnp.sum(r * r), conv, it

    return solve_one


def free_mask(opt) -> np.ndarray:
    """(d,) float mask: 1 for the state components the solver solves for, 0 for held ones."""
    held = set(getattr(opt, "held_state", ()))
    return np.array([0.0 if n in held else 1.0 for n in opt.state_names], dtype=np.float64)


def hold_at_median(opt, h0: np.ndarray) -> np.ndarray:
    """Starts ``(n, d)`` with every held component set to its median over the starts."""
    free = free_mask(opt).astype(bool)
    if free.all() or len(h0) == 0:
        return h0
    return np.where(free, h0, np.nanmedian(h0, axis=0))


def make_solver(opt, theta, method: str = "lm", tol: float = 1e-9, max_iter: int = 100,
                learning_rate: float = 0.5, mu0: float = 1e-3):
    """A jitted ``solve(starts (n, d), g_star (m,)) -> (h (m, n, d), q, converged, iterations)``,
    batched with ``vmap`` over starts and g* (see :func:`solve_one_fn`).

    Call it inside :func:`lopt_trace.analysis._common.float64` for float64 results.
    """
    solve_one = solve_one_fn(opt, theta, method, tol, max_iter, learning_rate, mu0)
    batched = jax.vmap(jax.vmap(solve_one, in_axes=(0, None)), in_axes=(None, 0))
    return jax.jit(batched)


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


@in_float64
def find_fixed_points(opt, theta, starts: xr.DataArray, g_star=0.0, noise: float = 0.0,
                      seed: int = 0, method: str = "lm", tol: float = 1e-9,
                      max_iter: int = 100, learning_rate: float = 0.5) -> xr.Dataset:
    """Solve F(θ, h, g*) = h from every start (``(start, unit)``) for every g* value.

    ``noise`` adds Gaussian noise to the starts, scaled by each unit's standard deviation over
    the starts. Components in ``opt.held_state`` are set to their median over the starts and
    held there. Returns a Dataset over ``(g_star, start, unit)`` with ``start_state``, ``state``
    (the solution), ``q`` (½‖F − h‖²), ``converged`` and ``iterations``.
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
    solve = make_solver(opt, theta64(theta), method, tol, max_iter, learning_rate)
    h, q, conv, it = (np.asarray(a) for a in solve(jnp.asarray(h0), jnp.asarray(gs)))
    coords = {k: v for k, v in starts.coords.items() if UNIT not in v.dims}
    coords[G_STAR] = gs
    if UNIT in starts.coords:
        coords[UNIT] = starts[UNIT].values
    return xr.Dataset(
        {
            "start_state": ((start_dim, UNIT), h0, attrs("starting state")),
            "state": ((G_STAR, start_dim, UNIT), h, attrs("fixed point h* with F(θ, h*, g*) = h*")),
            "q": ((G_STAR, start_dim), q, attrs("½‖F(θ, h, g*) − h‖² at the solution")),
            "converged": ((G_STAR, start_dim), conv, attrs("reached the tolerance")),
            "iterations": ((G_STAR, start_dim), it, attrs("solver iterations", "count")),
        },
        coords=coords,
        attrs={"method": method, "tol": float(tol), "max_iter": int(max_iter),
               "noise": float(noise), "held": list(opt.held_state)},
    )


def _clusters(points: np.ndarray, radius: float) -> np.ndarray:
    """Cluster labels: points that share a grid cell of side ``radius``, or whose cells'
    representatives are within ``radius`` of each other, are one cluster (connected components).

    Hashing to the grid first makes tight clusters of many solutions cost O(n log n): only one
    representative per occupied cell enters the k-d tree's neighbour search.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=int)
    keys = np.floor(points / radius).astype(np.int64)
    _, first, cell = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    cell = cell.ravel()
    reps = points[first]
    pairs = cKDTree(reps).query_pairs(radius, output_type="ndarray")
    m = len(reps)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    return connected_components(graph, directed=False)[1][cell]


def default_merge_tol(starts: np.ndarray) -> float:
    """1e-3 × the spread of the starts (root of the summed per-unit variance), at least 1e-9."""
    spread = float(np.sqrt(np.sum(np.var(starts, axis=0))))
    scale = max(spread, 1e-6 * (1.0 + float(np.max(np.abs(starts)))) if starts.size else 1.0)
    return max(1e-3 * scale, 1e-9)


def merge_fixed_points(ds: xr.DataArray | xr.Dataset, merge_tol: float | None = None,
                       outlier_margin: float | None = 1.0,
                       reference: xr.DataArray | None = None) -> xr.Dataset:
    """Unique fixed points for each g* from :func:`find_fixed_points` results.

    Returns ``state (g_star, fixed_point, unit)``, ``q`` and ``count`` (starts that reached it;
    padded entries have count 0 and NaN states, sorted by count), the per-start ``cluster``
    (−1: not converged or outlier) and ``outlier`` flags, and ``n_converged`` per g*.
    """
    start_dim = next(d for d in ds["start_state"].dims if d != UNIT)
    ref = ds["start_state"] if reference is None else reference
    ref = np.asarray(ref.transpose(..., UNIT).values, dtype=np.float64).reshape(-1, ds.sizes[UNIT])
    tol = default_merge_tol(ref) if merge_tol is None else float(merge_tol)
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    width = np.where(hi > lo, hi - lo, 1.0 + np.abs(lo))
    states = ds["state"].transpose(G_STAR, start_dim, UNIT).values
    q = ds["q"].transpose(G_STAR, start_dim).values
    conv = ds["converged"].transpose(G_STAR, start_dim).values
    m, n, d = states.shape
    if outlier_margin is None:
        outlier = np.zeros((m, n), dtype=bool)
    else:
        outside = (states < lo - outlier_margin * width) | (states > hi + outlier_margin * width)
        outlier = conv & outside.any(axis=-1)
    cluster = np.full((m, n), -1, dtype=np.int64)
    reps, counts, qs = [], [], []
    for i in range(m):  # one vectorised merge per g* value
        ok = np.flatnonzero(conv[i] & ~outlier[i])
        labels = _clusters(states[i, ok], tol)
        k = labels.max() + 1 if len(labels) else 0
        count = np.bincount(labels, minlength=k)
        order = np.argsort(-count, kind="stable")  # biggest basin first
        rank = np.empty(k, dtype=np.int64)
        rank[order] = np.arange(k)
        cluster[i, ok] = rank[labels]
        # representative: the member with the smallest q in each cluster
        best = np.full(k, -1)
        order_q = np.lexsort((q[i, ok], labels))
        first = np.r_[True, labels[order_q][1:] != labels[order_q][:-1]] if len(ok) else np.zeros(0, bool)
        best[labels[order_q][first]] = ok[order_q][first]
        reps.append(states[i, best[order]])
        counts.append(count[order])
        qs.append(q[i, best[order]])
    kmax = max([len(c) for c in counts] + [1])
    pad_states = np.full((m, kmax, d), np.nan)
    pad_q = np.full((m, kmax), np.nan)
    pad_count = np.zeros((m, kmax), dtype=np.int64)
    for i in range(m):
        pad_states[i, : len(counts[i])] = reps[i]
        pad_q[i, : len(counts[i])] = qs[i]
        pad_count[i, : len(counts[i])] = counts[i]
    coords = {G_STAR: ds[G_STAR].values, FIXED_POINT: np.arange(kmax)}
    if UNIT in ds.coords:
        coords[UNIT] = ds[UNIT].values
    return xr.Dataset(
        {
            "fixed_point_state": ((G_STAR, FIXED_POINT, UNIT), pad_states, attrs("unique fixed point")),
            "fixed_point_q": ((G_STAR, FIXED_POINT), pad_q, attrs("½‖F − h‖² at the fixed point")),
            "count": ((G_STAR, FIXED_POINT), pad_count, attrs("starts that converged to it", "count")),
            "cluster": ((G_STAR, start_dim), cluster, attrs("fixed point reached (−1: none)")),
            "outlier": ((G_STAR, start_dim), outlier, attrs("converged far outside the data")),
            "n_converged": ((G_STAR,), conv.sum(axis=1), attrs("starts that converged", "count")),
        },
        coords=coords,
        attrs={"merge_tol": tol, "outlier_margin": -1.0 if outlier_margin is None else float(outlier_margin)},
    )


def fixed_points(opt, theta, starts: xr.DataArray, g_star=0.0, merge_tol: float | None = None,
                 outlier_margin: float | None = 1.0, **solver) -> xr.Dataset:
    """:func:`find_fixed_points` then :func:`merge_fixed_points`, in one Dataset."""
    raw = find_fixed_points(opt, theta, starts, g_star, **solver)
    merged = merge_fixed_points(raw, merge_tol, outlier_margin)
    return xr.merge([raw, merged], combine_attrs="drop_conflicts")


__all__ = [
    "find_fixed_points",
    "fixed_points",
    "free_mask",
    "hold_at_median",
    "float64",
    "make_solver",
    "merge_fixed_points",
    "sample_states",
    "solve_one_fn",
]
