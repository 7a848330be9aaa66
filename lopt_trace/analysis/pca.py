"""Principal components of optimizer states, in one streaming pass.

The states ``state (run, step, param, unit)`` of a store can be far larger than memory. The PCA
here never loads them: it accumulates, with Dask, the count, the sum and the matrix of sums of
products of the (shifted) states over every sample, chunk by chunk, so memory is O(units²) plus
one chunk. The covariance follows, then its eigendecomposition (``numpy.linalg.eigh``).

Conventions follow scikit-learn's ``PCA``: the covariance has the n − 1 normalisation, components
are sorted by decreasing explained variance, and each component's sign makes its largest-magnitude
entry positive. Samples with a non-finite entry (a diverged run) are skipped.
"""

from __future__ import annotations

import contextlib
import weakref

import dask
import dask.array as da
import numpy as np
import xarray as xr

from lopt_trace.analysis._common import UNIT, attrs
from lopt_trace.analysis.rebuild import run_group

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
    threadpool_limits = None

COMPONENT = "component"


def _sample_dims(states: xr.DataArray, sample_dims, unit: str) -> tuple[str, ...]:
    if sample_dims is None:
        return tuple(d for d in states.dims if d != unit)
    return tuple(sample_dims)


#: float64 values converted at a time inside a block: ROW_VALUES // d samples (temporaries of
#: ~16 MB, which stay in cache better than larger ones)
ROW_VALUES = 1 << 21


def one_blas_thread():
    """A context in which NumPy's BLAS uses one thread (``threadpoolctl``; a no-op without it).

    The moments' cost is one float64 ``y.T @ y`` per block, and Dask already runs one block per
    core. Letting OpenBLAS start its own threads in every Dask thread as well oversubscribes the
    cores: measured on 2 loaded cores, a 65536 × 256 product took 0.52 s with OpenBLAS's 2
    threads against 0.16 s with one, and the streaming PCA of a 256-unit store ran at 0.11× the
    rate of a plain Dask sum over the same array (``benchmarks/pca_stream.py``). Enter it around
    the ``dask.compute`` of :func:`moments` (the limit is process-wide, so it is set once, from
    the calling thread, not inside each task). ``dask.distributed``'s workers already start with
    one BLAS thread each.
    """
    if threadpool_limits is None:  # pragma: no cover - scikit-learn depends on threadpoolctl
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _as_dask(states: xr.DataArray, dims: tuple[str, ...], unit: str):
    """The states as a Dask array with axes ``dims + (unit,)``, ``unit`` in one chunk."""
    data = states.transpose(*dims, unit).data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks="auto")
    return data.rechunk({data.ndim - 1: -1})


def _block_moments(block, shift, ndim):
    """(1, ..., 1, 1 + d + d²) partial count, sum and sum of products of one block."""
    d = block.shape[-1]
    x = block.reshape(-1, d)
    rows = max(256, ROW_VALUES // d)
    n, s1, s2 = 0.0, np.zeros(d), np.zeros((d, d))
    for start in range(0, len(x), rows):
        xs = x[start:start + rows]
        finite = np.isfinite(xs).all(axis=1)  # on the stored dtype: half the bytes of float64
        y = xs.astype(np.float64)
        y -= shift  # in place: one float64 temporary per slice, not two
        if not finite.all():  # copy only when a sample must be dropped
            y = y[finite]
        n += len(y)
        s1 += y.sum(axis=0)
        s2 += y.T @ y
    out = np.concatenate([[n], s1, s2.ravel()])
    return out.reshape((1,) * (ndim - 1) + (-1,))


def moments(states: xr.DataArray, sample_dims=None, unit: str = UNIT) -> dict:
    """Lazy sufficient statistics of ``states`` over ``sample_dims`` (default: all but ``unit``).

    Returns ``{"shift": c (unit), "n": (), "s1": (unit), "s2": (unit, unit_)}`` where the sums are
    of y = x − c over finite samples; c is one sample (it only improves the numerics). Each Dask
    block is reduced on its own (in float64, ``ROW_VALUES // d`` samples at a time) to 1 + d + d²
    numbers, which are then summed. Compute them together with other lazy results in one
    ``dask.compute`` to share the pass over the data, inside :func:`one_blas_thread`.
    """
    dims = _sample_dims(states, sample_dims, unit)
    shift = states.isel({d: 0 for d in dims}).astype(np.float64)
    shift = shift.where(np.isfinite(shift), 0.0).compute()
    arr = _as_dask(states, dims, unit)
    d = arr.shape[-1]
    k = 1 + d + d * d
    parts = arr.map_blocks(_block_moments, np.asarray(shift.values, dtype=np.float64), arr.ndim,
                           dtype=np.float64, chunks=tuple((1,) * len(c) for c in arr.chunks[:-1]) + ((k,),))
    total = parts.sum(axis=tuple(range(arr.ndim - 1)))
    coords = {unit: states[unit].values} if unit in states.coords else {}
    other = f"{unit}_"
    return {
        "shift": shift,
        "n": xr.DataArray(total[0]),
        "s1": xr.DataArray(total[1:1 + d], dims=(unit,), coords=coords),
        "s2": xr.DataArray(total[1 + d:].reshape(d, d), dims=(unit, other)),
    }


def pca_from_moments(m: dict, n_components: int | None = None, unit: str = UNIT) -> xr.Dataset:
    """Mean, components and explained variance from computed :func:`moments`."""
    n = float(m["n"])
    if n < 2:
        raise ValueError("PCA needs at least two finite samples")
    s1 = np.asarray(m["s1"], dtype=np.float64)
    s2 = np.asarray(m["s2"], dtype=np.float64)
    mean = np.asarray(m["shift"], dtype=np.float64) + s1 / n
    cov = (s2 - np.outer(s1, s1) / n) / (n - 1.0)
    cov = 0.5 * (cov + cov.T)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
    comps = evecs.T  # (component, unit)
    signs = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    k = len(evals) if n_components is None else min(int(n_components), len(evals))
    total = evals.sum()
    unit_coord = m["s1"][unit].values if unit in m["s1"].coords else np.arange(len(s1))
    return xr.Dataset(
        {
            "pca_mean": ((unit,), mean, attrs("mean optimizer state")),
            "components": ((COMPONENT, unit), comps[:k], attrs("principal component (unit vector)")),
            "explained_variance": ((COMPONENT,), evals[:k], attrs("variance along the component")),
            "explained_variance_ratio": ((COMPONENT,), evals[:k] / total if total > 0 else evals[:k] * 0,
                                         attrs("fraction of the total variance")),
        },
        coords={COMPONENT: np.arange(k), unit: unit_coord},
        attrs={"n_samples": int(n), "total_variance": float(total)},
    )


def pca(states: xr.DataArray, n_components: int | None = None, sample_dims=None,
        unit: str = UNIT) -> xr.Dataset:
    """PCA of the states over ``sample_dims`` (default: every dim but ``unit``), one pass."""
    with one_blas_thread():  # the eigendecomposition too: a 256 × 256 eigh is faster on one
        (m,) = dask.compute(moments(states, sample_dims, unit))
        return pca_from_moments(m, n_components, unit)


def project(states: xr.DataArray, pcs: xr.Dataset, n_components: int | None = None,
            unit: str = UNIT) -> xr.DataArray:
    """Coordinates of any states ``(..., unit)`` along the principal components (lazy for Dask)."""
    comps = pcs["components"]
    if n_components is not None:
        comps = comps.isel({COMPONENT: slice(0, int(n_components))})
    centred = (states - pcs["pca_mean"].variable).drop_vars(unit, errors="ignore")  # by dim name
    out = xr.dot(centred, comps.drop_vars(unit, errors="ignore"), dim=unit)
    return out.assign_attrs(attrs("projection on the principal components"))


def _block_run_variance(block, ndim):
    """Per step of one (run, step, ..., unit) block holding every run: the variance over finite
    runs summed over units and the trailing dims, and the number of (param) elements; shape
    (1, steps, 1, ..., 2)."""
    steps = block.shape[1]
    out = np.zeros((steps, 2))
    for s in range(steps):
        x = block[:, s].astype(np.float64)
        ok = np.isfinite(x)
        n = ok.sum(axis=0)
        x = np.where(ok, x, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = x.sum(axis=0) / n
            var = np.where(ok, (x - mean) ** 2, 0.0).sum(axis=0) / n
        var = var.reshape(-1, block.shape[-1])  # (elements, unit)
        out[s] = [np.nansum(var), var.shape[0]]
    return out.reshape((1, steps) + (1,) * (ndim - 3) + (2,))


def total_variance(states: xr.DataArray, across: str = "run", keep: str = "step",
                   unit: str = UNIT) -> xr.DataArray:
    """Total variance of the state across ``across`` (runs) at each ``keep`` (step), lazily.

    For every step, parameter and unit the variance over runs is taken (population variance, no
    n − 1; non-finite values, from diverged runs, are left out), summed over units and averaged
    over the remaining dims (parameters). It is zero when every run's states agree and grows as
    runs spread apart. Blocks are reduced one step at a time in float64, so memory stays at a
    block's size.
    """
    rest = [d for d in states.dims if d not in (across, keep, unit)]
    dims = (across, keep, *rest)
    arr = _as_dask(states, dims, unit).rechunk({0: -1})
    ndim = arr.ndim
    chunks = ((1,), arr.chunks[1]) + tuple((1,) * len(c) for c in arr.chunks[2:-1]) + ((2,),)
    parts = arr.map_blocks(_block_run_variance, ndim, dtype=np.float64, chunks=chunks)
    total = parts.sum(axis=(0,) + tuple(range(2, ndim - 1)))  # (step, 2)
    out = xr.DataArray(total[:, 0] / total[:, 1], dims=(keep,),
                       coords={keep: states[keep].values} if keep in states.coords else {})
    return out.assign_attrs(attrs(f"total state variance across {across}s"))


_CACHE: dict = {}


def group_pca(tree: xr.DataTree, name: str, n_components: int | None = None, complete_only: bool = True):
    """PCA and total variance across runs of the states of ``/runs/<name>``, in one pass.

    The one PCA of a group's states, for the recipes (``momentum``, ``adaptation``, ``layers``,
    ``clipping``) and for the dashboard's State space tab when ``/analysis/momentum`` lacks it.
    ``complete_only`` leaves out runs an interrupted recording did not finish, as the recipes do
    (:func:`lopt_trace.analysis.rebuild.run_group`); the dashboard shows every recorded run.

    The result is kept for as long as ``tree`` lives, so several recipes run on the same opened
    tree (``lopt-trace analyze all``) read the states once. Returns ``(pcs, total_variance)``.
    """
    key = (id(tree), name, bool(complete_only))
    hit = _CACHE.get(key)
    if hit is None or hit[0]() is not tree:
        state = run_group(tree, name, complete_only=complete_only)["state"]
        with one_blas_thread():
            m, tv = dask.compute(moments(state), total_variance(state))
            pcs = pca_from_moments(m)
        for k in [k for k, v in _CACHE.items() if v[0]() is None]:
            del _CACHE[k]
        _CACHE[key] = hit = (weakref.ref(tree), pcs, tv)
    pcs, tv = hit[1], hit[2]
    if n_components is not None:
        pcs = pcs.isel({COMPONENT: slice(0, int(n_components))})
    return pcs, tv
