"""Learning-rate adaptation: how the fixed point and the effective learning rate follow g*.

Holding the gradient at a constant g*, the state settles at a fixed point h*(g*). Sweeping g*
from 0 outwards on both signs traces a curve in state space (the paper's S-curve, Fig. 6); each
``arm`` (g* < 0 and g* > 0) is followed by continuation: the solution for one g*, moved by a few
forward iterations of F at the next g*, starts the Levenberg–Marquardt solve for the next (see
:mod:`lopt_trace.analysis.fixed_points`).

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
from lopt_trace.analysis.fixed_points import (
    CONVERGED,
    DEFAULT_WARMUP,
    STATUS,
    STATUS_DESCRIPTION,
    _cached,
    check_attractors,
    compiled_solver,
    optimizer_key,
    solver_settings,
    state_bounds,
)

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


def _curve_fn(opt):
    def curve(theta, hs, gs):
        def delta(h, g):
            return opt.readout(theta, opt.F(theta, h, jnp.asarray(g, h.dtype)))

        slope = jax.grad(lambda h, g: -delta(h, g), argnums=1)
        eta = jax.vmap(jax.vmap(lambda h: slope(h, jnp.zeros((), h.dtype))))(hs)
        local = jax.vmap(jax.vmap(slope))(hs, gs)
        upd = jax.vmap(jax.vmap(delta))(hs, gs)
        return eta, local, upd

    return curve


@in_float64
def s_curve(opt, theta, h_start, g_max: float, num: int = 41, tol: float = 1e-9,
            max_iter: int = 200, warmup: int = DEFAULT_WARMUP, patience: int | None = None,
            check: bool = True) -> xr.Dataset:
    """Fixed points h*(g*) for g* = ±|g*| with |g*| = linspace(0, ``g_max``, ``num``).

    ``h_start`` (a ``unit`` vector) starts the solve at g* = 0; each solve starts from the
    previous solution moved by ``warmup`` forward iterations of F at the new g* (so the curve
    follows the attractor the dynamics settle at). Both arms are solved as one batch of two
    starts with the compiled, cached solver of :mod:`lopt_trace.analysis.fixed_points`, so a
    second S-curve of the same optimizer (other θ, start or g* range) does not compile again.
    Returns over ``(arm, g_abs)``: ``fixed_point (…, unit)``, ``g_star``, ``q``, ``status`` and
    ``converged`` (see :data:`~lopt_trace.analysis.fixed_points.STATUS`),
    ``effective_learning_rate`` (at g = 0 from h*), ``local_slope`` (−∂Δx/∂g at g = g*),
    ``update`` (Δx at h*, g*) and, with ``check``, ``spectral_radius`` and ``attractor``
    (confirmed by forward iteration, :func:`~lopt_trace.analysis.fixed_points.check_attractors`).
    """
    th = theta64(theta)
    unit_coord = h_start[UNIT].values if isinstance(h_start, xr.DataArray) and UNIT in h_start.coords else None
    h_start = np.asarray(h_start, dtype=np.float64)
    g_abs = np.linspace(0.0, float(g_max), int(num))
    low, high = (jnp.asarray(b) for b in state_bounds(opt, th))
    # both arms at once: a batch of two starts with g* = −|g*| and +|g*|, one compiled solver
    solve = compiled_solver(opt, "lm")
    settings = {k: jnp.asarray(v) for k, v in solver_settings(
        "lm", tol, max_iter, patience=patience, warmup=warmup).items()}
    active = jnp.ones((2,), bool)
    signs = np.array([-1.0, 1.0])
    h = jnp.asarray(np.stack([h_start, h_start]))
    hs, qs, ss = [], [], []
    for a in g_abs:
        h, q, status, _ = solve(th, h, jnp.asarray(signs * a), low, high, active, settings)
        hs.append(np.asarray(h))
        qs.append(np.asarray(q))
        ss.append(np.asarray(status))
    hs, qs, ss = (np.stack(x, axis=1) for x in (hs, qs, ss))  # (arm, g_abs, ...)
    gs = signs[:, None] * g_abs[None, :]
    curve = _cached(("s_curve", optimizer_key(opt)), lambda: _curve_fn(opt))
    eta, local, upd = (np.asarray(x) for x in curve(th, jnp.asarray(hs), jnp.asarray(gs)))
    coords = {ARM: ARMS, G_ABS: g_abs}
    if unit_coord is not None:
        coords[UNIT] = unit_coord
    dims = (ARM, G_ABS)
    data = {
        "fixed_point": (dims + (UNIT,), hs, attrs("fixed point h*(g*)")),
        "g_star": (dims, gs, attrs("constant gradient g*")),
        "q": (dims, qs, attrs("½‖F − h‖² at the solution")),
        "status": (dims, ss.astype(np.int8), attrs(
            "solver status", flag_values=list(range(len(STATUS))), flag_meanings=" ".join(STATUS),
            description=STATUS_DESCRIPTION)),
        "converged": (dims, ss == CONVERGED, attrs("solve reached the tolerance in the state's range")),
        "effective_learning_rate": (dims, eta, attrs("effective learning rate at h*(g*), g = 0")),
        "local_slope": (dims, local, attrs("−∂Δx/∂g at h*(g*), g = g*")),
        "update": (dims, upd, attrs("update Δx at h*(g*) with gradient g*")),
    }
    if check:
        rho, _stable, attractor, _pull = check_attractors(opt, th, hs.reshape(-1, hs.shape[-1]),
                                                          gs.ravel())
        data["spectral_radius"] = (dims, rho.reshape(gs.shape),
                                   attrs("largest |λ| of ∂F/∂h (solved components) at h*(g*)"))
        data["attractor"] = (dims, attractor.reshape(gs.shape) & (ss == CONVERGED),
                             attrs("converged, and forward iteration pulls perturbations back"))
    return xr.Dataset(data, coords=coords,
                      attrs={"tol": float(tol), "warmup": int(warmup), "max_iter": int(max_iter)})


__all__ = ["gradient_range", "s_curve"]
