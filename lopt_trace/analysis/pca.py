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

import dask
import numpy as np
import xarray as xr

from lopt_trace.analysis._common import UNIT, attrs

COMPONENT = "component"


def _sample_dims(states: xr.DataArray, sample_dims, unit: str) -> tuple[str, ...]:
    if sample_dims is None:
        return tuple(d for d in states.dims if d != unit)
    return tuple(sample_dims)


def moments(states: xr.DataArray, sample_dims=None, unit: str = UNIT) -> dict:
    """Lazy sufficient statistics of ``states`` over ``sample_dims`` (default: all but ``unit``).

    Returns ``{"shift": c (unit), "n": (), "s1": (unit), "s2": (unit, unit_)}`` where the sums are
    of y = x − c over finite samples; c is one sample (it only improves the numerics). Compute
    them together with other lazy results in one ``dask.compute`` to share the pass over the data.
    """
    dims = _sample_dims(states, sample_dims, unit)
    shift = states.isel({d: 0 for d in dims}).astype(np.float64)
    shift = shift.where(np.isfinite(shift), 0.0).compute()
    x = states.astype(np.float64)
    valid = np.isfinite(x).all(unit)
    y = (x - shift).where(valid, 0.0)
    other = f"{unit}_"
    return {
        "shift": shift,
        "n": valid.sum(dims),
        "s1": y.sum(dims),
        "s2": xr.dot(y, y.rename({unit: other}), dim=list(dims)),
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
    (m,) = dask.compute(moments(states, sample_dims, unit))
    return pca_from_moments(m, n_components, unit)


def project(states: xr.DataArray, pcs: xr.Dataset, n_components: int | None = None,
            unit: str = UNIT) -> xr.DataArray:
    """Coordinates of any states ``(..., unit)`` along the principal components (lazy for Dask)."""
    comps = pcs["components"]
    if n_components is not None:
        comps = comps.isel({COMPONENT: slice(0, int(n_components))})
    centred = states - pcs["pca_mean"].values
    out = xr.dot(centred, comps.drop_vars(unit, errors="ignore"), dim=unit)
    return out.assign_attrs(attrs("projection on the principal components"))


def total_variance(states: xr.DataArray, across: str = "run", keep: str = "step",
                   unit: str = UNIT) -> xr.DataArray:
    """Total variance of the state across ``across`` (runs) at each ``keep`` (step), lazily.

    For every step, parameter and unit the variance over runs is taken (population variance, no
    n − 1), summed over units and averaged over the remaining dims (parameters). It is zero when
    every run's states agree and grows as runs spread apart.
    """
    var = states.astype(np.float64).var(across)
    rest = [d for d in var.dims if d not in (keep, unit)]
    out = var.sum(unit).mean(rest) if rest else var.sum(unit)
    return out.assign_attrs(attrs(f"total state variance across {across}s"))
