"""Forward iteration of F and the attractor check of fixed points (see
:mod:`lopt_trace.analysis.fixed_points`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lopt_trace.analysis.fixed_point_solver import (CHECK_CHUNK, PULL, _bucket, _cached, _pad, free_mask,
                                                   optimizer_key, state_bounds)


def _forward_fn(opt):
    free_np = free_mask(opt)

    def run(theta, h, g, steps):
        """Iterate F ``steps`` times from every row of ``h (n, d)`` (held components fixed);
        returns the end states and their residual max|F(h) − h| over the solved components."""
        fb = jnp.asarray(free_np > 0)
        g = jnp.asarray(g, h.dtype)

        def f(x):
            return jnp.where(fb, jax.vmap(lambda y: opt.F(theta, y, g))(x), x)

        x = jax.lax.fori_loop(0, steps, lambda _, x: f(x), h)
        return x, jnp.max(jnp.abs(jnp.where(fb, f(x) - x, 0.0)), axis=-1)

    return run


def forward_iterate(opt, theta, h0, g: float, steps: int):
    """``steps`` forward iterations h ← F(θ, h, g) from every row of ``h0 (n, d)`` (held
    components stay put), compiled once per optimizer. θ float64 (inside :func:`float64`).
    Returns NumPy ``(end states (n, d), residual max|F(h) − h| (n,))``."""
    h0 = np.asarray(h0, dtype=np.float64)
    n = len(h0)
    if n == 0:
        return h0.copy(), np.zeros(0)
    fn = _cached(("forward", optimizer_key(opt)), lambda: _forward_fn(opt))
    npad = _bucket(n)
    padded = np.concatenate([h0, np.repeat(h0[:1], npad - n, axis=0)]) if npad > n else h0
    x, r = fn(theta, jnp.asarray(padded), jnp.asarray(g, jnp.float64), jnp.asarray(int(steps)))
    return np.asarray(x)[:n], np.asarray(r)[:n]


def _check_fn(opt):
    free_np = free_mask(opt)

    def run(theta, hstar, g, eps, dirs, low, high, max_steps):
        """∂F/∂h at every fixed point ``hstar (k, d)``, and forward iteration of perturbations
        of each: initial and final distances (k, p) and the steps taken (k,)."""
        fb = jnp.asarray(free_np > 0)

        def one(h, g, e):
            def F(y):
                return opt.F(theta, y, g)

            jac = jax.jacfwd(F)(h)
            x0 = jnp.where(fb, jnp.clip(h + e * dirs, low, high), h)  # (p, d)
            d0 = jnp.max(jnp.abs(x0 - h), axis=-1)

            def ratio(x):
                return jnp.max(jnp.abs(x - h), axis=-1) / jnp.where(d0 > 0, d0, 1.0)

            def cond(c):  # until all are back within 1/8, one is 8× as far, or max_steps
                n, x = c
                rt = ratio(x)
                return (n < max_steps) & jnp.any(rt > 0.125) & jnp.all(rt <= 8.0)

            def body(c):
                n, x = c
                x = jax.lax.fori_loop(0, CHECK_CHUNK, lambda _, y: jnp.where(fb, jax.vmap(F)(y), y), x)
                return n + CHECK_CHUNK, x

            n, x = jax.lax.while_loop(cond, body, (jnp.asarray(0), x0))
            return jac, d0, jnp.max(jnp.abs(x - h), axis=-1), n

        return jax.vmap(one)(hstar, g, eps)

    return run


def check_attractors(opt, theta, states, g_star, max_steps: int = 20000, n_directions: int = 8,
                     radius: float = 1e-4, seed: int = 0):
    """Stability of fixed points ``states (k, d)`` at ``g_star (k,)``, two ways.

    - ``spectral_radius``: the largest |λ| of ∂F/∂h restricted to the solved (not held)
      components; ``stable`` when it is below 1.
    - ``attractor``: forward iteration pulls perturbations back. From h* + ε u for
      ``n_directions`` random directions u (max-norm 1, ε = ``radius`` · (1 + max|h*|), clipped
      to the state's range), F is iterated (held components fixed) until every perturbation is
      back within 1/8 of its initial distance, or one has grown 8-fold, or ``max_steps``; an
      attractor ends every perturbation at most :data:`PULL` (0.9) times as far from h* as it
      started.

    θ float64 (call inside :func:`float64`). One compiled function per optimizer configuration.
    Returns NumPy ``(spectral_radius, stable, attractor, pull)`` where ``pull`` (k,) is the
    largest final/initial distance ratio.
    """
    states = np.asarray(states, dtype=np.float64).reshape(-1, len(opt.state_names))
    k, d = states.shape
    gs = np.broadcast_to(np.asarray(g_star, dtype=np.float64), (k,)).copy()
    if k == 0:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), np.zeros(0)
    free = free_mask(opt) > 0
    low, high = state_bounds(opt, theta)
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_directions, d)) * free
    dirs /= np.maximum(np.max(np.abs(dirs), axis=1, keepdims=True), 1e-300)
    eps = radius * (1.0 + np.max(np.abs(states), axis=1))
    kpad = _bucket(k)
    fn = _cached(("check", optimizer_key(opt)), lambda: _check_fn(opt))
    jac, d0, d1, _ = fn(theta, jnp.asarray(_pad(states, kpad)), jnp.asarray(_pad(gs, kpad)),
                        jnp.asarray(_pad(eps, kpad)), jnp.asarray(dirs), jnp.asarray(low),
                        jnp.asarray(high), jnp.asarray(int(max_steps)))
    jac, d0, d1 = np.asarray(jac)[:k], np.asarray(d0)[:k], np.asarray(d1)[:k]
    block = jac[:, free][:, :, free]
    rho = np.array([np.max(np.abs(np.linalg.eigvals(b))) if np.isfinite(b).all() and b.size else np.nan
                    for b in block])
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = np.max(np.where(d0 > 0, d1 / d0, np.inf), axis=1)
    attractor = np.isfinite(pull) & (pull <= PULL)
    return rho, rho < 1, attractor, pull
