"""Merging solver results into unique fixed points per g*: the state-range rule, grid-hashed
clustering, and the stability of each fixed point (see :mod:`lopt_trace.analysis.fixed_points`)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from lopt_trace.analysis._common import UNIT, attrs, float64, theta64
from lopt_trace.analysis.fixed_point_solver import (CONVERGED, FIXED_POINT, G_STAR, free_mask,
                                                   state_bounds)
from lopt_trace.analysis.fixed_point_stability import check_attractors

def _clusters(points: np.ndarray, radius: float) -> np.ndarray:
    """Cluster labels: points that share a grid cell of side ``radius``, or whose cells'
    representatives are within ``radius`` of each other, are one cluster (connected components).

    Hashing to the grid first makes tight clusters of many solutions cost O(n log n): only one
    representative per occupied cell enters the k-d tree's neighbour search.
    """
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


def default_merge_tol(starts: np.ndarray, free: np.ndarray | None = None) -> float:
    """1e-3 × the spread of the starts ``(n, d)`` (root of the summed per-unit variance), at least
    1e-9. With ``free`` (a (d,) mask), only those components count: held ones (a step count, which
    runs from 0 to the horizon) say nothing about the scale of the solved ones."""
    starts = np.asarray(starts)
    if free is not None and np.any(free) and starts.ndim == 2:
        starts = starts[:, np.asarray(free, bool)]
    spread = float(np.sqrt(np.sum(np.var(starts, axis=0))))
    scale = max(spread, 1e-6 * (1.0 + float(np.max(np.abs(starts)))) if starts.size else 1.0)
    return max(1e-3 * scale, 1e-9)


def _range_of(ds, opt, theta, d):
    if "state_low" in ds and "state_high" in ds:
        return (np.asarray(ds["state_low"].values, dtype=np.float64),
                np.asarray(ds["state_high"].values, dtype=np.float64))
    if opt is not None:
        return state_bounds(opt, theta)
    return np.full(d, -np.inf), np.full(d, np.inf)


def merge_fixed_points(ds: xr.DataArray | xr.Dataset, merge_tol: float | None = None,
                       outlier_margin: float | None = None,
                       reference: xr.DataArray | None = None, opt=None, theta=None, *,
                       confirm_steps: int = 20000, n_directions: int = 8) -> xr.Dataset:
    """Unique fixed points for each g* from :func:`find_fixed_points` results.

    A solution counts if the solver converged (q within tolerance) and it lies in the state's
    range (``state_low``/``state_high`` of ``ds``, else ``opt.state_bounds``, else unbounded).
    Where the starts were does not matter, unless ``outlier_margin`` is given: then solutions
    outside the box spanned by ``reference`` (default: the starts) widened by ``outlier_margin``
    times its width on each side are also left out (the default before issue #16; it threw away
    real fixed points, so it is off by default).

    Returns ``fixed_point_state (g_star, fixed_point, unit)``, ``fixed_point_q`` and ``count``
    (starts that reached it; padded entries have count 0 and NaN states, sorted by count), the
    per-start ``cluster`` (−1: not converged or rejected) and ``outlier`` (converged but
    rejected) flags, ``n_converged`` and ``n_fixed_points`` per g*. Given ``opt`` and ``theta``,
    also ``spectral_radius``, ``stable``, ``attractor`` (confirmed by forward iteration, see
    :func:`check_attractors`) and ``pull`` per fixed point, and ``n_attractors`` per g*.
    """
    start_dim = next(d for d in ds["start_state"].dims if d != UNIT)
    d = ds.sizes[UNIT]
    ref = ds["start_state"] if reference is None else reference
    ref = np.asarray(ref.transpose(..., UNIT).values, dtype=np.float64).reshape(-1, d)
    low, high = _range_of(ds, opt, theta, d)
    held = set(ds.attrs.get("held", ()) or ())
    if opt is not None:
        checked = free_mask(opt) > 0
    elif UNIT in ds.coords:
        checked = np.array([str(u) not in held for u in ds[UNIT].values])
    else:
        checked = np.ones(d, bool)
    tol = default_merge_tol(ref, checked) if merge_tol is None else float(merge_tol)
    states = ds["state"].transpose(G_STAR, start_dim, UNIT).values
    q = ds["q"].transpose(G_STAR, start_dim).values
    if "status" in ds:
        conv = ds["status"].transpose(G_STAR, start_dim).values == CONVERGED
    else:
        conv = ds["converged"].transpose(G_STAR, start_dim).values.astype(bool)
    m, n, _ = states.shape
    slack_lo = np.where(np.isfinite(low), 1e-12 * (1 + np.abs(low)), 0.0)
    slack_hi = np.where(np.isfinite(high), 1e-12 * (1 + np.abs(high)), 0.0)
    outside = checked & ((states < low - slack_lo) | (states > high + slack_hi))
    outlier = conv & outside.any(axis=-1)
    if outlier_margin is not None:
        lo, hi = ref.min(axis=0), ref.max(axis=0)
        width = np.where(hi > lo, hi - lo, 1.0 + np.abs(lo))
        far = (states < lo - outlier_margin * width) | (states > hi + outlier_margin * width)
        outlier |= conv & far.any(axis=-1)
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
    found = pad_count > 0
    data = {
        "fixed_point_state": ((G_STAR, FIXED_POINT, UNIT), pad_states, attrs("unique fixed point")),
        "fixed_point_q": ((G_STAR, FIXED_POINT), pad_q, attrs("½‖F − h‖² at the fixed point")),
        "count": ((G_STAR, FIXED_POINT), pad_count, attrs("starts that converged to it", "count")),
        "cluster": ((G_STAR, start_dim), cluster, attrs("fixed point reached (−1: none)")),
        "outlier": ((G_STAR, start_dim), outlier,
                    attrs("converged but rejected: outside the state's range (or, with "
                          "outlier_margin, far outside the reference states)")),
        "n_converged": ((G_STAR,), conv.sum(axis=1), attrs("starts that converged", "count")),
        "n_fixed_points": ((G_STAR,), found.sum(axis=1), attrs("unique fixed points", "count")),
    }
    if opt is not None:
        with float64():
            th = theta64(theta)
            ii, kk = np.nonzero(found)
            gvals = np.asarray(ds[G_STAR].values, dtype=np.float64)
            rho, stable, attractor, pull = check_attractors(
                opt, th, pad_states[ii, kk], gvals[ii], confirm_steps, n_directions)
        full = {name: np.full((m, kmax), fill, dtype=type(fill))
                for name, fill in (("rho", np.nan), ("stable", False), ("attractor", False),
                                   ("pull", np.nan))}
        for name, v in (("rho", rho), ("stable", stable), ("attractor", attractor), ("pull", pull)):
            full[name][ii, kk] = v
        data.update({
            "spectral_radius": ((G_STAR, FIXED_POINT), full["rho"],
                                attrs("largest |λ| of ∂F/∂h (solved components) at the fixed point")),
            "stable": ((G_STAR, FIXED_POINT), full["stable"], attrs("spectral radius below 1")),
            "attractor": ((G_STAR, FIXED_POINT), full["attractor"],
                          attrs("forward iteration pulls perturbations back (confirmed)")),
            "pull": ((G_STAR, FIXED_POINT), full["pull"],
                     attrs("largest final / initial distance of perturbed forward iterations")),
            "n_attractors": ((G_STAR,), full["attractor"].sum(axis=1),
                             attrs("fixed points confirmed as attractors", "count")),
        })
    return xr.Dataset(
        data, coords=coords,
        attrs={"merge_tol": tol,
               "outlier_margin": -1.0 if outlier_margin is None else float(outlier_margin),
               "outlier_rule": "state range" if outlier_margin is None else "state range and box"},
    )
