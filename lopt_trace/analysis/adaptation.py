"""Learning-rate adaptation: how the fixed point and the effective learning rate follow g*.

Holding the gradient at a constant g*, the state settles at a fixed point h*(g*). Sweeping g*
from 0 outwards on both signs traces a curve in state space (the paper's S-curve, Fig. 6); each
``arm`` (g* < 0 and g* > 0) is followed by continuation: the solution for one g* starts the
Levenberg–Marquardt solve for the next (see :mod:`lopt_trace.analysis.fixed_points`).

Along each arm the effective learning rate at the fixed point,
η(g*) = −∂Δx/∂g at g = 0 from the state h*(g*), shows whether the optimizer lowers its step size
where gradients are large (RMSProp does: η = α / √(ρ g*² + ε)). The local slope of the update at
g = g* is given too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.analysis._common import UNIT, attrs, in_float64, theta64
from lopt_trace.analysis.fixed_points import solve_one_fn

ARM = "arm"
G_ABS = "g_abs"
ARMS = np.array(["negative", "positive"], dtype=object)


def gradient_range(hist: xr.DataArray, edges, quantile: float = 0.99, bin_dim: str = "bin") -> float:
    """The ``quantile`` of |g| from a gradient-magnitude histogram (``gradient_hist``), by linear
    interpolation of the cumulative counts at the bin edges."""
    counts = np.asarray(hist.sum([d for d in hist.dims if d != bin_dim]).values, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if counts.sum() == 0:
        return float("nan")
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / counts.sum()
    return float(np.interp(quantile, cdf, edges))


@in_float64
def s_curve(opt, theta, h_start, g_max: float, num: int = 41, tol: float = 1e-9,
            max_iter: int = 200) -> xr.Dataset:
    """Fixed points h*(g*) for g* = ±|g*| with |g*| = linspace(0, ``g_max``, ``num``).

    ``h_start`` (a ``unit`` vector) starts the solve at g* = 0. Returns over ``(arm, g_abs)``:
    ``fixed_point (…, unit)``, ``g_star``, ``q``, ``converged``, ``effective_learning_rate``
    (at g = 0 from h*), ``local_slope`` (−∂Δx/∂g at g = g*) and ``update`` (Δx at h*, g*).
    """
    th = theta64(theta)
    unit_coord = h_start[UNIT].values if isinstance(h_start, xr.DataArray) and UNIT in h_start.coords else None
    h_start = jnp.asarray(np.asarray(h_start, dtype=np.float64))
    g_abs = np.linspace(0.0, float(g_max), int(num))
    solve = solve_one_fn(opt, th, "lm", tol, max_iter)

    def delta(h, g):
        return opt.readout(th, opt.F(th, h, jnp.asarray(g, h.dtype)))

    slope = jax.grad(lambda h, g: -delta(h, g), argnums=1)

    @jax.jit
    def sweep(h_start, g_abs):
        h0, q0, c0, _ = solve(h_start, jnp.asarray(0.0))

        def arm(sign):
            def body(h, a):
                h1, q, c, _ = solve(h, sign * a)
                return h1, (h1, q, c)

            _, (hs, qs, cs) = jax.lax.scan(body, h0, g_abs[1:])
            return (jnp.concatenate([h0[None], hs]), jnp.concatenate([q0[None], qs]),
                    jnp.concatenate([c0[None], cs]))

        hs, qs, cs = jax.vmap(arm)(jnp.array([-1.0, 1.0]))
        gs = jnp.array([-1.0, 1.0])[:, None] * g_abs[None, :]
        eta = jax.vmap(jax.vmap(lambda h: slope(h, 0.0)))(hs)
        local = jax.vmap(jax.vmap(slope))(hs, gs)
        upd = jax.vmap(jax.vmap(delta))(hs, gs)
        return hs, qs, cs, gs, eta, local, upd

    hs, qs, cs, gs, eta, local, upd = (np.asarray(a) for a in sweep(h_start, jnp.asarray(g_abs)))
    coords = {ARM: ARMS, G_ABS: g_abs}
    if unit_coord is not None:
        coords[UNIT] = unit_coord
    dims = (ARM, G_ABS)
    return xr.Dataset(
        {
            "fixed_point": (dims + (UNIT,), hs, attrs("fixed point h*(g*)")),
            "g_star": (dims, gs, attrs("constant gradient g*")),
            "q": (dims, qs, attrs("½‖F − h‖² at the solution")),
            "converged": (dims, cs, attrs("solve reached the tolerance")),
            "effective_learning_rate": (dims, eta, attrs("effective learning rate at h*(g*), g = 0")),
            "local_slope": (dims, local, attrs("−∂Δx/∂g at h*(g*), g = g*")),
            "update": (dims, upd, attrs("update Δx at h*(g*) with gradient g*")),
        },
        coords=coords,
        attrs={"tol": float(tol)},
    )


__all__ = ["gradient_range", "s_curve"]
