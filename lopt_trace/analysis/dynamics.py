"""Autonomous dynamics: what the optimizer does with zero gradient — its built-in schedule.

Iterating h_{k+1} = F(θ, h_k, 0) from the initial state (``lax.scan``) shows how the state moves
on its own. Along that trajectory the effective learning rate η_k = −∂Δx/∂g at g = 0 is the
schedule the optimizer carries (warm-up, decay). The motion can also move parameters by itself;
the part of each step Δh_k = h_{k+1} − h_k along the readout direction ŵ_k = ∇readout(h_{k+1}) /
‖∇readout(h_{k+1})‖ is what does, and

    readout_fraction = Σ_k (ŵ_kᵀ Δh_k)² / Σ_k ‖Δh_k‖²

is the fraction of the (squared) motion that lies along the readout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.analysis._common import UNIT, attrs, batch_of_states, in_float64, theta64, theta_for_batch

STEP = "step"


def _autonomous_arrays(opt, th, h0, steps: int, gg):
    """The autonomous run from one state: (states, updates, η, motion along the readout, motion)
    for steps 1..``steps``, and η at h0. θ may be traced (batched over checkpoints)."""

    def eta(h):
        return jax.grad(lambda x: -opt.readout(th, opt.F(th, h, x)))(jnp.asarray(0.0, h.dtype))

    def body(h, _):
        h1 = opt.F(th, h, gg)
        w = jax.grad(opt.readout, argnums=1)(th, h1)
        dh = h1 - h
        along = jnp.dot(w, dh) ** 2 / jnp.maximum(jnp.dot(w, w), 1e-300)
        return h1, (h1, opt.readout(th, h1), eta(h1), along, jnp.dot(dh, dh))

    _, out = jax.lax.scan(body, h0, None, length=int(steps))
    return out, eta(h0)


@in_float64
def autonomous(opt, theta, h0, steps: int, g: float = 0.0, theta_dim: str | None = None) -> xr.Dataset:
    """Iterate F(θ, h, g) (g = 0: no gradient) ``steps`` times from ``h0`` (a ``unit`` vector).

    Returns over ``step`` = 0..steps: ``state`` (step 0 is h0), ``update`` (readout of the state;
    NaN at step 0), ``effective_learning_rate`` at each state, the per-step ``readout_fraction``,
    and the attr ``readout_fraction`` over the whole trajectory.

    With ``theta_dim``, θ is a stack along that dim and ``h0`` is ``(theta_dim, unit)`` (or one
    ``unit`` vector for all): one trajectory per θ, computed in one ``vmap``; every variable then
    has ``theta_dim`` first, and the whole-trajectory fraction is the variable
    ``total_readout_fraction (theta_dim)``.
    """
    if theta_dim is not None:
        return _autonomous_batch(opt, theta, h0, steps, g, theta_dim)
    th = theta64(theta)
    unit_coord = h0[UNIT].values if isinstance(h0, xr.DataArray) and UNIT in h0.coords else None
    h0 = jnp.asarray(np.asarray(h0, dtype=np.float64))
    gg = jnp.asarray(g, jnp.float64)
    (hs, upd, etas, along, motion), eta0 = jax.jit(
        lambda h: _autonomous_arrays(opt, th, h, steps, gg))(h0)
    hs = np.concatenate([np.asarray(h0)[None], np.asarray(hs)])
    upd = np.concatenate([[np.nan], np.asarray(upd)])
    etas = np.concatenate([[float(eta0)], np.asarray(etas)])
    along, motion = np.asarray(along), np.asarray(motion)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_step = np.concatenate([[np.nan], np.where(motion > 0, along / motion, np.nan)])
        total = float(along.sum() / motion.sum()) if motion.sum() > 0 else float("nan")
    coords = {STEP: np.arange(int(steps) + 1)}
    if unit_coord is not None:
        coords[UNIT] = unit_coord
    return xr.Dataset(
        {
            "state": ((STEP, UNIT), hs, attrs("state under F(θ, h, 0)")),
            "update": ((STEP,), upd, attrs("update readout(θ, h) without gradient")),
            "effective_learning_rate": ((STEP,), etas, attrs("effective learning rate −∂Δx/∂g at g = 0")),
            "readout_fraction": ((STEP,), per_step,
                                 attrs("fraction of the step's motion along the readout")),
        },
        coords=coords,
        attrs={"readout_fraction": total, "g": float(g)},
    )


def _autonomous_batch(opt, theta, h0, steps, g, theta_dim):
    """:func:`autonomous` for a stack of θ along ``theta_dim`` (one ``vmap``)."""
    n = len(next(iter(theta.values())))
    if isinstance(h0, xr.DataArray) and theta_dim in h0.dims:
        starts = h0.transpose(theta_dim, UNIT)
    else:
        vec = h0 if isinstance(h0, xr.DataArray) else xr.DataArray(np.asarray(h0, np.float64), dims=UNIT)
        starts = vec.expand_dims({theta_dim: n})
    h, dims, shape, coords = batch_of_states(starts)
    th, ax = theta_for_batch(theta, dims, shape, theta_dim)
    gg = jnp.asarray(g, jnp.float64)
    run = jax.jit(jax.vmap(lambda t, hh: _autonomous_arrays(opt, t, hh, steps, gg), in_axes=(ax, 0)))
    (hs, upd, etas, along, motion), eta0 = run(th, jnp.asarray(h))
    hs = np.concatenate([h[:, None], np.asarray(hs)], axis=1)
    upd = np.concatenate([np.full((len(h), 1), np.nan), np.asarray(upd)], axis=1)
    etas = np.concatenate([np.asarray(eta0)[:, None], np.asarray(etas)], axis=1)
    along, motion = np.asarray(along), np.asarray(motion)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_step = np.concatenate([np.full((len(h), 1), np.nan),
                                   np.where(motion > 0, along / motion, np.nan)], axis=1)
        total = np.where(motion.sum(1) > 0, along.sum(1) / motion.sum(1), np.nan)
    coords = dict(coords)
    coords[STEP] = np.arange(int(steps) + 1)
    if UNIT in starts.coords:
        coords[UNIT] = starts[UNIT].values
    d2, d3 = (theta_dim, STEP), (theta_dim, STEP, UNIT)
    return xr.Dataset(
        {
            "state": (d3, hs, attrs("state under F(θ, h, 0)")),
            "update": (d2, upd, attrs("update readout(θ, h) without gradient")),
            "effective_learning_rate": (d2, etas, attrs("effective learning rate −∂Δx/∂g at g = 0")),
            "readout_fraction": (d2, per_step, attrs("fraction of the step's motion along the readout")),
            "total_readout_fraction": ((theta_dim,), total,
                                       attrs("fraction of the whole trajectory's motion along the readout")),
        },
        coords=coords,
        attrs={"g": float(g)},
    )


__all__ = ["autonomous"]
