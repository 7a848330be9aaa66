"""Update functions: the parameter update as a function of the gradient, at a fixed state.

For a state h the update function is Δx(g) = readout(θ, F(θ, h, g)). Its slope at g = 0 gives
the **effective learning rate** η(h) = −∂Δx/∂g |_{g=0}, computed exactly by autodiff. Where the
update stops growing in proportion to g the optimizer **saturates** (it clips, in effect).

Saturation threshold (documented definition). With the linear part
L(g) = Δx(0) − η g, the relative deviation is

    dev(g) = |Δx(g) − L(g)| / (η |g|)

and the threshold on each side (g > 0, g < 0) is the smallest |g| with dev(g) > ``tol``
(default 0.1: the update is 10% below its linear part), found on a grid and refined by
bisection. ``threshold`` is the smaller of the two sides. For SGD with element-wise clipping at c
this is c / (1 − tol). The **clip equivalent** is the largest |Δx(g) − Δx(0)| reached on the grid,
divided by η: for clipped SGD it is exactly c, for an unsaturated update it is the grid's end.

All functions take a batch of states as a DataArray with a ``unit`` dim (any other dims are the
batch) and return DataArrays with the batch's dims and coordinates. They evaluate in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.analysis._common import (UNIT, attrs, batch_of_states, float64, in_float64, theta64,
                                         theta_for_batch, unbatch)

GRADIENT = "g"
SIDE = "side"
SIDES = np.array(["negative", "positive"], dtype=object)


def _delta_x(opt, theta):
    """Δx(h, g) for one state (d,) and one gradient ()."""
    return lambda h, g: opt.readout(theta, opt.F(theta, h, jnp.asarray(g, h.dtype)))


def _eta(opt, theta):
    """η(h, g) = −∂Δx/∂g for one state and gradient."""
    return jax.grad(lambda h, g: -_delta_x(opt, theta)(h, g), argnums=1)


@in_float64
def update_function(opt, theta, states: xr.DataArray, gradients) -> xr.DataArray:
    """Δx(g) for every state in the batch and every gradient in ``gradients``: (*batch, g)."""
    h, dims, shape, coords = batch_of_states(states)
    g = np.asarray(gradients, dtype=np.float64).ravel()
    th = theta64(theta)
    f = jax.jit(jax.vmap(jax.vmap(_delta_x(opt, th), in_axes=(None, 0)), in_axes=(0, None)))
    out = f(jnp.asarray(h), jnp.asarray(g))
    return unbatch(out, dims, shape, coords, (GRADIENT,), {GRADIENT: g}, name="update",
                   attrs=attrs("parameter update Δx(g) = readout(θ, F(θ, h, g))"))


@in_float64
def effective_learning_rate(opt, theta, states: xr.DataArray, at=0.0,
                            theta_dim: str | None = None) -> xr.DataArray:
    """η(h) = −∂Δx/∂g at g = ``at`` (default 0) for every state in the batch, by autodiff.

    ``at`` may be a scalar or a DataArray broadcastable against the batch (one g per state).
    With ``theta_dim`` (a batch dim of ``states``), θ is a stack along that dim and each state is
    evaluated with its own θ (one ``vmap``; see :func:`lopt_trace.analysis._common.theta_for_batch`).
    """
    h, dims, shape, coords = batch_of_states(states)
    if isinstance(at, xr.DataArray):
        at = at.broadcast_like(states.isel({UNIT: 0}, drop=True)).transpose(*dims).values
    g = np.broadcast_to(np.asarray(at, dtype=np.float64), shape).ravel()
    if theta_dim is None:
        th = theta64(theta)
        out = jax.jit(jax.vmap(_eta(opt, th)))(jnp.asarray(h), jnp.asarray(g))
    else:
        th, ax = theta_for_batch(theta, dims, shape, theta_dim)
        out = jax.jit(jax.vmap(lambda t, hh, gg: _eta(opt, t)(hh, gg), in_axes=(ax, 0, 0)))(
            th, jnp.asarray(h), jnp.asarray(g))
    return unbatch(out, dims, shape, coords, name="effective_learning_rate",
                   attrs=attrs("effective learning rate −∂Δx/∂g"))


def _saturation_state(opt, theta, hh, g_max, tol, num, bisect_steps):
    """(η, threshold per side, update limit per side) at one state ``hh`` (d,)."""
    delta = _delta_x(opt, theta)
    eta_fn = _eta(opt, theta)
    grid = jnp.linspace(0.0, g_max, num)[1:]  # magnitudes > 0

    d0 = delta(hh, 0.0)
    eta = eta_fn(hh, 0.0)

    def dev(g):
        return jnp.abs(delta(hh, g) - (d0 - eta * g)) / jnp.abs(eta * g)

    def side(sign):
        vals = jax.vmap(lambda a: delta(hh, sign * a))(grid)
        devs = jax.vmap(lambda a: dev(sign * a))(grid)
        over = devs > tol
        found = jnp.any(over)
        j = jnp.argmax(over)
        hi = grid[j]
        lo = jnp.where(j > 0, grid[jnp.maximum(j - 1, 0)], 0.0)

        def body(_, bracket):
            lo, hi = bracket
            mid = 0.5 * (lo + hi)
            above = dev(sign * mid) > tol
            return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

        lo, hi = jax.lax.fori_loop(0, bisect_steps, body, (lo, hi))
        thr = jnp.where(found, hi, jnp.inf)
        limit = jnp.max(jnp.abs(vals - d0))
        return thr, limit

    thr, limit = jax.vmap(side)(jnp.array([-1.0, 1.0]))
    return eta, thr, limit


def _saturation_arrays(opt, theta, h, g_max, tol, num, bisect_steps, theta_axis=None):
    """:func:`_saturation_state` for every state of ``h`` (B, d); θ shared (``theta_axis`` None)
    or one per state (``theta_axis`` 0, entries of shape (B, ...))."""
    if theta_axis is None:
        return jax.jit(jax.vmap(lambda hh: _saturation_state(opt, theta, hh, g_max, tol, num,
                                                              bisect_steps)))(h)
    return jax.jit(jax.vmap(lambda t, hh: _saturation_state(opt, t, hh, g_max, tol, num, bisect_steps),
                            in_axes=(theta_axis, 0)))(theta, h)


@in_float64
def saturation(opt, theta, states: xr.DataArray, g_max: float, tol: float = 0.1,
               num: int = 1001, bisect_steps: int = 60, theta_dim: str | None = None) -> xr.Dataset:
    """Saturation of the update function at each state, for |g| ≤ ``g_max`` (see module doc).

    Returns ``effective_learning_rate``, ``threshold`` (the smaller side; inf when the update
    stays within ``tol`` of linear up to ``g_max``), ``threshold_side`` and ``update_limit`` per
    side, and ``clip_equivalent``. With ``theta_dim``, θ is a stack along that batch dim of
    ``states`` and each state is evaluated with its own θ (see :func:`effective_learning_rate`).
    """
    if not g_max > 0:
        raise ValueError(f"g_max must be positive, got {g_max}")
    h, dims, shape, coords = batch_of_states(states)
    if theta_dim is None:
        th, ax = theta64(theta), None
    else:
        th, ax = theta_for_batch(theta, dims, shape, theta_dim)
    eta, thr, limit = _saturation_arrays(opt, th, jnp.asarray(h), float(g_max),
                                         float(tol), int(num), int(bisect_steps), ax)
    eta, thr, limit = np.asarray(eta), np.asarray(thr), np.asarray(limit)
    side = {SIDE: SIDES}
    with np.errstate(divide="ignore", invalid="ignore"):
        clip_eq = limit.min(axis=1) / np.abs(eta)
    return xr.Dataset(
        {
            "effective_learning_rate": unbatch(eta, dims, shape, coords,
                                               attrs=attrs("effective learning rate −∂Δx/∂g at g = 0")),
            "threshold": unbatch(thr.min(axis=1), dims, shape, coords,
                                 attrs=attrs(f"gradient magnitude where the update falls {tol:g} "
                                             "below linear")),
            "threshold_side": unbatch(thr, dims, shape, coords, (SIDE,), side,
                                      attrs=attrs("saturation threshold for g < 0 and g > 0")),
            "update_limit": unbatch(limit, dims, shape, coords, (SIDE,), side,
                                    attrs=attrs("largest |Δx(g) − Δx(0)| for |g| ≤ g_max")),
            "clip_equivalent": unbatch(clip_eq, dims, shape, coords,
                                       attrs=attrs("gradient clip that gives the same largest update")),
        },
        attrs={"tol": float(tol), "g_max": float(g_max)},
    )


def displaced(state: xr.DataArray, direction: xr.DataArray, amounts) -> xr.DataArray:
    """States ``state + a · direction`` for each a in ``amounts``: ``(displacement, unit)``.

    ``state`` and ``direction`` are ``unit`` vectors (e.g. the initial state and a principal
    component scaled by its standard deviation).
    """
    amounts = np.asarray(amounts, dtype=np.float64)
    h = np.asarray(state.transpose(UNIT).values, np.float64)
    v = np.asarray(direction.transpose(UNIT).values, np.float64)
    coords = {"displacement": amounts}
    if UNIT in state.coords:
        coords[UNIT] = state[UNIT].values
    return xr.DataArray(h[None, :] + amounts[:, None] * v[None, :], dims=("displacement", UNIT),
                        coords=coords, attrs=attrs("state displaced along a direction"))


def fraction_beyond(gradients: xr.DataArray, threshold) -> xr.DataArray:
    """Fraction of the (recorded, possibly Dask-backed) gradients with |g| > ``threshold``; lazy.

    Non-finite gradients are not counted.
    """
    g = abs(gradients)
    finite = np.isfinite(g)
    return ((g > threshold) & finite).sum() / finite.sum()


def fraction_beyond_hist(hist: xr.DataArray, edges, threshold: float, bin_dim: str = "bin") -> float:
    """The same fraction from a |g| histogram (``gradient_hist``) with bin edges ``edges``.

    The histogram covers every parameter and step. Within the bin that holds the threshold, counts
    are taken as spread uniformly in log |g| (uniform in |g| for a bin starting at 0).
    """
    counts = np.asarray(hist.sum([d for d in hist.dims if d != bin_dim]).values, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    total = counts.sum()
    if total == 0 or not np.isfinite(threshold):
        return 0.0
    lo, hi = edges[:-1], edges[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac_above = np.where(
            lo > 0,
            (np.log(hi) - np.log(np.clip(threshold, lo, hi))) / (np.log(hi) - np.log(lo)),
            (hi - np.clip(threshold, lo, hi)) / (hi - lo),
        )
    return float(np.nansum(counts * np.clip(frac_above, 0, 1)) / total)


__all__ = [
    "effective_learning_rate",
    "float64",
    "fraction_beyond",
    "fraction_beyond_hist",
    "saturation",
    "update_function",
]
