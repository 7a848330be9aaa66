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

from lopt_trace.analysis._common import UNIT, attrs, in_float64, theta64

STEP = "step"


@in_float64
def autonomous(opt, theta, h0, steps: int, g: float = 0.0) -> xr.Dataset:
    """Iterate F(θ, h, g) (g = 0: no gradient) ``steps`` times from ``h0`` (a ``unit`` vector).

    Returns over ``step`` = 0..steps: ``state`` (step 0 is h0), ``update`` (readout of the state;
    NaN at step 0), ``effective_learning_rate`` at each state, the per-step ``readout_fraction``,
    and the attr ``readout_fraction`` over the whole trajectory.
    """
    th = theta64(theta)
    unit_coord = h0[UNIT].values if isinstance(h0, xr.DataArray) and UNIT in h0.coords else None
    h0 = jnp.asarray(np.asarray(h0, dtype=np.float64))
    gg = jnp.asarray(g, jnp.float64)

    def eta(h):
        return jax.grad(lambda x: -opt.readout(th, opt.F(th, h, x)))(0.0)

    def body(h, _):
        h1 = opt.F(th, h, gg)
        w = jax.grad(opt.readout, argnums=1)(th, h1)
        dh = h1 - h
        along = jnp.dot(w, dh) ** 2 / jnp.maximum(jnp.dot(w, w), 1e-300)
        return h1, (h1, opt.readout(th, h1), eta(h1), along, jnp.dot(dh, dh))

    run = jax.jit(lambda h: jax.lax.scan(body, h, None, length=int(steps)))
    _, (hs, upd, etas, along, motion) = run(h0)
    hs = np.concatenate([np.asarray(h0)[None], np.asarray(hs)])
    upd = np.concatenate([[np.nan], np.asarray(upd)])
    etas = np.concatenate([[float(eta(h0))], np.asarray(etas)])
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


__all__ = ["autonomous"]
