"""Shared helpers: float64 evaluation, θ conversion, and batches of states as xarray objects."""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.analysis.conventions import UNIT, attrs, strings  # noqa: F401 - re-exported


@contextlib.contextmanager
def float64():
    """Evaluate JAX code in float64 (analyses need more precision than training does)."""
    with jax.enable_x64(True):
        yield


def in_float64(fn):
    """Decorator: run ``fn`` inside :func:`float64`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with float64():
            return fn(*args, **kwargs)

    return wrapper


def theta64(theta: dict) -> dict:
    """θ as float64 JAX arrays (call inside :func:`float64`)."""
    return {k: jnp.asarray(np.asarray(v), dtype=jnp.float64) for k, v in theta.items()}


def theta_for_batch(theta: dict, dims, shape, theta_dim: str | None):
    """θ for a flattened batch of B states, and the ``vmap`` axis to map it over.

    Without ``theta_dim``: θ as float64 arrays and axis None (one θ for every state). With it, each
    θ entry has a leading axis along the batch dim ``theta_dim`` (a stack of θ, e.g. meta-training
    checkpoints along ``checkpoint``), and each of the B states gets the θ of its index along that
    dim: entries of shape (B, ...) and axis 0. Call inside :func:`float64`.
    """
    if theta_dim is None:
        return theta64(theta), None
    dims = tuple(dims)
    if theta_dim not in dims:
        raise ValueError(f"theta_dim {theta_dim!r} is not a batch dim of the states {dims}")
    n = shape[dims.index(theta_dim)]
    idx = np.indices(tuple(shape))[dims.index(theta_dim)].ravel() if len(shape) else np.zeros(1, int)
    out = {}
    for k, v in theta.items():
        v = np.asarray(v, dtype=np.float64)
        if v.ndim == 0 or v.shape[0] != n:
            raise ValueError(f"θ entry {k!r} has shape {v.shape}; with theta_dim={theta_dim!r} it needs a "
                             f"leading axis of length {n}")
        out[k] = jnp.asarray(v[idx])
    return out, 0


def batch_of_states(states: xr.DataArray, unit: str = UNIT):
    """Split a DataArray of states ``(*batch, unit)`` into a (B, d) float64 NumPy array and
    the pieces needed to put results back: ``(array, batch_dims, batch_shape, batch_coords)``.

    The states are loaded (a batch of states is small by construction).
    """
    if unit not in states.dims:
        raise ValueError(f"states need a {unit!r} dimension, got dims {states.dims}")
    states = states.transpose(..., unit)
    batch_dims = states.dims[:-1]
    shape = tuple(states.sizes[d] for d in batch_dims)
    values = np.asarray(states.values, dtype=np.float64).reshape(-1, states.sizes[unit])
    coords = {k: v for k, v in states.coords.items() if unit not in v.dims}
    return values, batch_dims, shape, coords


def unbatch(values, batch_dims, shape, coords, extra_dims=(), extra_coords=None, name=None,
            attrs=None) -> xr.DataArray:
    """Inverse of :func:`batch_of_states` for a result of shape (B, *extra)."""
    values = np.asarray(values)
    values = values.reshape(tuple(shape) + values.shape[1:])
    coords = dict(coords)
    coords.update(extra_coords or {})
    return xr.DataArray(values, dims=tuple(batch_dims) + tuple(extra_dims), coords=coords,
                        name=name, attrs=attrs or {})


def as_vector(x, dim: str) -> xr.DataArray:
    """A scalar or 1-D array as a 1-D DataArray along ``dim``."""
    if isinstance(x, xr.DataArray):
        return x if x.ndim == 1 and x.dims == (dim,) else x.rename({x.dims[0]: dim})
    arr = np.atleast_1d(np.asarray(x, dtype=np.float64))
    return xr.DataArray(arr, dims=(dim,), coords={dim: arr})
