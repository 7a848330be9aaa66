"""Linearisation of the optimizer around its fixed points: modes, momentum timescales and rates.

Around a fixed point h* (for gradient g*), with δh = h − h* and δg = g − g*::

    δh' ≈ J δh + b δg,       J = ∂F/∂h,  b = ∂F/∂g   (exact Jacobians by autodiff)
    Δx  ≈ Δx* + wᵀ δh',      w = ∂readout/∂h at h*   (output scale included)

With the eigendecomposition J = Σ_i λ_i r_i l_iᴴ (right eigenvectors r_i, left eigenvectors l_i
from ``scipy.linalg.eig(left=True)``, normalised so that l_iᴴ r_i = 1), a gradient impulse δg at
step 0 moves the parameter by Σ_i −α_i λ_i^k δg at step k, with

    β_i = |λ_i|                         the momentum timescale of mode i (timescale −1/ln β_i steps)
    α_i = −(wᵀ r_i)(l_iᴴ b)             the learning rate carried by mode i.

For heavy-ball momentum (v' = βv + g, Δx = −αv') there is one mode with λ = β and α_1 = α.
Complex modes come in conjugate pairs; ``alpha`` is the real part of α_i (``alpha_imag`` the
imaginary part), and the α_i always sum to the effective learning rate −wᵀb at the fixed point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import xarray as xr

from lopt_trace.analysis._common import (UNIT, attrs, batch_of_states, in_float64, theta64, theta_for_batch,
                                         unbatch)

MODE = "mode"
UNIT_IN = "unit_in"
#: median one-step linearisation error above which summaries say the linear description fails
NONLINEAR_ERROR = 0.2


def _jacobians_one(opt, theta, h, g):
    jh = jax.jacfwd(opt.F, argnums=1)(theta, h, g)
    jg = jax.jacfwd(opt.F, argnums=2)(theta, h, g)
    w = jax.grad(opt.readout, argnums=1)(theta, opt.F(theta, h, g))
    return jh, jg, w


def _jacobians(opt, theta):
    return jax.jit(jax.vmap(lambda h, g: _jacobians_one(opt, theta, h, g)))


@in_float64
def jacobians(opt, theta, states: xr.DataArray, g=0.0, theta_dim: str | None = None):
    """∂F/∂h (…, unit, unit_in), ∂F/∂g (…, unit) and the readout gradient at F(h, g) (…, unit).

    With ``theta_dim`` (a batch dim of ``states``), θ is a stack along that dim and each state is
    evaluated with its own θ, in one ``vmap`` (e.g. one fixed point per meta-training checkpoint).
    """
    h, dims, shape, coords = batch_of_states(states)
    gg = np.broadcast_to(np.asarray(g, dtype=np.float64), shape).ravel()
    if theta_dim is None:
        out = _jacobians(opt, theta64(theta))(jnp.asarray(h), jnp.asarray(gg))
    else:
        th, ax = theta_for_batch(theta, dims, shape, theta_dim)
        out = jax.jit(jax.vmap(lambda t, hh, g1: _jacobians_one(opt, t, hh, g1), in_axes=(ax, 0, 0)))(
            th, jnp.asarray(h), jnp.asarray(gg))
    jh, jg, w = (np.asarray(a) for a in out)
    units = {UNIT: states[UNIT].values} if UNIT in states.coords else {}
    units_in = {UNIT_IN: states[UNIT].values} if UNIT in states.coords else {}
    return (unbatch(jh, dims, shape, coords, (UNIT, UNIT_IN), {**units, **units_in},
                    attrs=attrs("state Jacobian ∂F/∂h")),
            unbatch(jg, dims, shape, coords, (UNIT,), units, attrs=attrs("input Jacobian ∂F/∂g")),
            unbatch(w, dims, shape, coords, (UNIT,), units, attrs=attrs("readout gradient ∂Δx/∂h")))


def modes(jac: np.ndarray, b: np.ndarray, w: np.ndarray):
    """Eigen-modes of one linearisation: eigenvalues, right/left vectors (l_iᴴ r_i = 1) and α_i,
    sorted by decreasing |λ|."""
    lam, vl, vr = scipy.linalg.eig(jac, left=True, right=True)
    norm = np.einsum("ij,ij->j", vl.conj(), vr)
    left = vl / norm.conj()[None, :]  # now left[:, i]ᴴ vr[:, i] = 1
    alpha = -(w @ vr) * (left.conj().T @ b)
    order = np.argsort(-np.abs(lam), kind="stable")
    return lam[order], vr[:, order], left[:, order], alpha[order]


def momentum_mode(beta: np.ndarray, alpha: np.ndarray, share: float = 0.01,
                  exclude: np.ndarray | None = None) -> int:
    """Index of the **momentum mode**: the slowest mode whose |α_i| is at least ``share`` of
    Σ|α_i| (modes ``(mode,)`` sorted by decreasing |λ|, as :func:`linearize` gives them); the
    slowest mode if none carries learning rate. Modes flagged in ``exclude`` ``(mode,)`` are never
    chosen (see :func:`held_modes`), unless every mode is."""
    a = np.abs(np.nan_to_num(alpha))
    b = np.asarray(beta, dtype=np.float64)
    ok = np.ones(len(a), bool) if exclude is None else ~np.asarray(exclude, bool)
    if not ok.any():
        ok = np.ones(len(a), bool)
    carrying = np.flatnonzero(ok & (a >= share * max(a[ok].sum(), 1e-300)))
    if len(carrying):
        return int(carrying[0])
    candidates = np.flatnonzero(ok & np.isfinite(b))
    return int(candidates[np.argmax(b[candidates])]) if len(candidates) else int(np.flatnonzero(ok)[0])


def held_modes(lin: xr.Dataset, free: np.ndarray) -> np.ndarray:
    """``(..., mode)`` bool: modes whose right eigenvector lies mostly (over half its squared norm)
    on held state components (``free`` ``(unit,)`` is 0/False there, see
    :func:`lopt_trace.analysis.fixed_points.free_mask`). A held step count has λ = 1 exactly and
    is a clock, not a momentum timescale, so the momentum recipes never report it."""
    free = np.asarray(free, bool)
    if free.all():
        return np.zeros(lin["beta"].shape, bool)
    r2 = (lin["right_real"] ** 2 + lin["right_imag"] ** 2).transpose(..., UNIT, MODE).values
    total = r2.sum(axis=-2)
    on_held = r2[..., ~free, :].sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(on_held / total) > 0.5


def linearize(opt, theta, fixed_points: xr.DataArray, g_star=0.0, theta_dim: str | None = None) -> xr.Dataset:
    """Linearise at each fixed point ``(..., unit)`` (NaN rows give NaN modes).

    Returns the Jacobians and, over a ``mode`` dim sorted by decreasing |λ|: ``eigenvalue_real``,
    ``eigenvalue_imag``, ``beta`` (|λ|), ``timescale`` (−1/ln|λ| steps; inf for |λ| ≥ 1),
    ``alpha`` and ``alpha_imag``, and the right and left eigenvectors (real and imaginary parts).
    ``effective_learning_rate`` is −wᵀb = Σ_i α_i. With ``theta_dim``, θ is a stack along that
    batch dim of ``fixed_points`` (see :func:`jacobians`).
    """
    jh, jg, w = jacobians(opt, theta, fixed_points, g_star, theta_dim=theta_dim)
    batch = [d for d in jh.dims if d not in (UNIT, UNIT_IN)]
    J = jh.transpose(*batch, UNIT, UNIT_IN).values
    B = jg.transpose(*batch, UNIT).values
    W = w.transpose(*batch, UNIT).values
    d = J.shape[-1]
    shape = J.shape[:-2]
    Jf, Bf, Wf = J.reshape(-1, d, d), B.reshape(-1, d), W.reshape(-1, d)
    n = len(Jf)
    lam = np.full((n, d), np.nan + 0j)
    right = np.full((n, d, d), np.nan + 0j)  # (point, unit, mode)
    left = np.full((n, d, d), np.nan + 0j)
    alpha = np.full((n, d), np.nan + 0j)
    for i in range(n):  # one small eigenproblem per fixed point (few of them)
        if np.all(np.isfinite(Jf[i])):
            lam[i], right[i], left[i], alpha[i] = modes(Jf[i], Bf[i], Wf[i])
    lam, alpha = lam.reshape(shape + (d,)), alpha.reshape(shape + (d,))
    right, left = right.reshape(shape + (d, d)), left.reshape(shape + (d, d))
    beta = np.abs(lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        timescale = np.where(beta < 1, -1.0 / np.log(beta), np.inf)
    timescale = np.where(np.isnan(beta), np.nan, timescale)
    mdims = tuple(batch) + (MODE,)
    vdims = tuple(batch) + (UNIT, MODE)
    coords = {MODE: np.arange(d)}
    ds = xr.Dataset(
        {
            "jacobian": jh, "input_jacobian": jg, "readout_gradient": w,
            "eigenvalue_real": (mdims, lam.real, attrs("eigenvalue of ∂F/∂h, real part")),
            "eigenvalue_imag": (mdims, lam.imag, attrs("eigenvalue of ∂F/∂h, imaginary part")),
            "beta": (mdims, beta, attrs("momentum timescale β = |λ|")),
            "timescale": (mdims, timescale, attrs("mode timescale −1/ln|λ|", "steps")),
            "alpha": (mdims, alpha.real, attrs("per-mode learning rate α, real part")),
            "alpha_imag": (mdims, alpha.imag, attrs("per-mode learning rate α, imaginary part")),
            "right_real": (vdims, right.real, attrs("right eigenvector, real part")),
            "right_imag": (vdims, right.imag, attrs("right eigenvector, imaginary part")),
            "left_real": (vdims, left.real, attrs("left eigenvector (lᴴr = 1), real part")),
            "left_imag": (vdims, left.imag, attrs("left eigenvector (lᴴr = 1), imaginary part")),
            "effective_learning_rate": (tuple(batch), -(W * B).sum(-1),
                                        attrs("effective learning rate −wᵀb at the fixed point")),
        },
        coords=coords,
    )
    return ds


@in_float64
def linearization_error(opt, theta, states: xr.DataArray, gradients: xr.DataArray,
                        fixed_point: xr.DataArray, g_star: float = 0.0) -> xr.DataArray:
    """One-step error of the linearisation at ``fixed_point`` along recorded trajectories.

    For each recorded pair (h, g) — a state and the gradient the optimizer took from it — the
    true next state F(θ, h, g) is compared with the linear prediction h* + J(h − h*) + b(g − g*):

        error = ‖F(h, g) − prediction‖ / ‖F(h, g) − h*‖

    (0: exactly linear). ``states`` is ``(..., unit)`` and ``gradients`` has the same batch dims.
    """
    h, dims, shape, coords = batch_of_states(states)
    g = gradients.transpose(*dims).values.reshape(-1).astype(np.float64)
    th = theta64(theta)
    extra = [d for d in fixed_point.dims if d != UNIT]
    hstar = jnp.asarray(np.asarray(fixed_point.squeeze(extra, drop=True).values, dtype=np.float64))
    gs = jnp.asarray(g_star, jnp.float64)
    jh = jax.jacfwd(opt.F, argnums=1)(th, hstar, gs)
    jg = jax.jacfwd(opt.F, argnums=2)(th, hstar, gs)

    @jax.jit
    @jax.vmap
    def err(hh, gg):
        true = opt.F(th, hh, gg)
        pred = hstar + jh @ (hh - hstar) + jg * (gg - g_star)
        return jnp.linalg.norm(true - pred) / jnp.maximum(jnp.linalg.norm(true - hstar), 1e-300)

    out = err(jnp.asarray(h), jnp.asarray(g))
    return unbatch(out, dims, shape, coords, name="linearization_error",
                   attrs=attrs("relative one-step linearisation error"))


__all__ = ["NONLINEAR_ERROR", "held_modes", "jacobians", "linearization_error", "linearize", "modes", "momentum_mode"]
