"""Small, bounded reads from a store group: the states and gradients analyses start from.

Each function reads only what it returns (a few states, a histogram, per-tensor means), never a
whole per-parameter array.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis._common import UNIT
from lopt_trace.analysis.adaptation import gradient_range
from lopt_trace.analysis.fixed_points import free_mask, sample_states


def initial_state(ds: xr.Dataset) -> xr.DataArray:
    """h0 as one ``unit`` vector: the mean of ``initial_state`` over the stored parameters
    (every parameter starts from the same state for all optimizers lopt-trace ships)."""
    return ds["initial_state"].astype(np.float64).mean("param").compute()


def analysis_start(ds: xr.Dataset, opt, n: int = 256, seed: int = 0) -> xr.DataArray:
    """:func:`initial_state`, with the components in ``opt.held_state`` set to their median over
    ``n`` states sampled along the recorded trajectories (for the other components it is h0).

    A held component such as a gradient normaliser starts at 0, where it carries no scale; the
    analyses that start from h0 (S-curve, autonomous schedule, update functions) use the typical
    recorded value instead. Without held components this is exactly :func:`initial_state`.
    """
    h0 = initial_state(ds)
    held = np.flatnonzero(free_mask(opt) == 0)
    if not len(held):
        return h0
    picked = sample_states(ds["state"], n, seed)
    values = h0.values.copy()
    values[held] = np.nanmedian(picked.values[:, held], axis=0)
    return h0.copy(data=values)


def recorded_pairs(ds: xr.Dataset, n: int = 512, seed: int = 0):
    """``n`` random (state, gradient) pairs along recorded trajectories: ``(sample, unit)`` and
    ``(sample,)``.

    The state is the one the optimizer held before the gradient: for the record at step index i
    it is the stored state of index i − 1 (``initial_state`` for i = 0). With ``every`` = 1 the
    pair is exactly consecutive; with ``every`` > 1 it pairs a stored state with the next stored
    gradient. Pairs with non-finite values are dropped.
    """
    rng = np.random.default_rng(seed)
    nr, ns, npar = ds.sizes["run"], ds.sizes["step"], ds.sizes["param"]
    ir, is_, ip = rng.integers(0, nr, n), rng.integers(0, ns, n), rng.integers(0, npar, n)
    pick = lambda a: xr.DataArray(a, dims="sample")
    prev = np.maximum(is_ - 1, 0)
    state = ds["state"].transpose("run", "step", "param", UNIT)
    h = np.asarray(state.isel(run=pick(ir), step=pick(prev), param=pick(ip)).values, np.float64)
    h0 = np.asarray(ds["initial_state"].transpose("param", UNIT).isel(param=pick(ip)).values, np.float64)
    h = np.where((is_ == 0)[:, None], h0, h)
    g = np.asarray(ds["gradient"].isel(run=pick(ir), step=pick(is_), param=pick(ip)).values, np.float64)
    keep = np.isfinite(h).all(axis=1) & np.isfinite(g)
    units = {UNIT: ds[UNIT].values} if UNIT in ds.coords else {}
    h = xr.DataArray(h[keep], dims=("sample", UNIT), coords=units)
    g = xr.DataArray(g[keep], dims=("sample",))
    return h, g


def gradient_quantile(ds: xr.Dataset, quantile: float = 0.99) -> float:
    """The ``quantile`` of |g| over every parameter and step, from ``gradient_hist`` (or, without
    it, from the stored gradients, lazily)."""
    if "gradient_hist" in ds and "bin_edges" in ds:
        return gradient_range(ds["gradient_hist"], ds["bin_edges"].values, quantile)
    g = abs(ds["gradient"]).data.ravel()
    return float(np.nanquantile(np.asarray(g), quantile))


def gradient_max(ds: xr.Dataset) -> float:
    """The largest finite |g| stored (one lazy pass over ``gradient``)."""
    g = abs(ds["gradient"])
    return float(g.where(np.isfinite(g)).max().compute())


def mean_state(ds: xr.Dataset) -> xr.DataArray:
    """The mean state over all parameters (every tensor weighted by its size) and runs, at each
    stored step: ``(step, unit)``, from the exact ``state_mean`` aggregate."""
    sm = ds["state_mean"].astype(np.float64)
    w = ds["tensor_size"].astype(np.float64)
    w = w / w.sum()
    out = (sm * w).sum("tensor").mean("run").compute()
    return out.drop_vars([c for c in out.coords if c not in ("step", UNIT)])


__all__ = ["analysis_start", "gradient_max", "gradient_quantile", "initial_state", "mean_state", "recorded_pairs"]
