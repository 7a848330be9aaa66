"""The batched fixed-point solver of :mod:`lopt_trace.analysis.fixed_points` (method, tolerance,
status codes, state range, held components and the compiled-solver cache are described there)."""

from __future__ import annotations

import collections
import json
import math

import jax
import jax.numpy as jnp
import numpy as np


START = "start"
G_STAR = "g_star"
FIXED_POINT = "fixed_point"
METHODS = ("lm", "gn", "gd")
#: per-start solver status codes: ``status == i`` means ``STATUS[i]``
STATUS = ("converged", "stalled", "left_range", "max_iter")
CONVERGED, STALLED, LEFT_RANGE, MAX_ITER = range(4)
STATUS_DESCRIPTION = ("0 converged: reached the tolerance inside the state's range; "
                      "1 stalled: q stopped falling (no halving in `patience` iterations, or μ at "
                      "its ceiling, or q not finite); 2 left_range: not converged and outside "
                      "the state's range (stopped once beyond the margin), or on its boundary "
                      "when projected; 3 max_iter: still improving when the iteration limit was "
                      "reached")
MU_MIN, MU_MAX = 1e-15, 1e15
#: stall patience of the second-order methods when ``patience`` is None (gradient descent: none)
DEFAULT_PATIENCE = 40
#: forward iterations of F before the solver starts, in :func:`find_fixed_points` and the S-curve
DEFAULT_WARMUP = 100
CACHE_SIZE = 32
#: a start whose iterate leaves the range by more than this × the range's width is stopped
RANGE_MARGIN = 1.0
#: an attractor brings every perturbation back to at most this fraction of its distance
PULL = 0.9
#: forward steps between the attractor check's convergence tests
CHECK_CHUNK = 10
#: geodesic acceleration: used when 2‖a‖ ≤ ACCEL_RATIO ‖δ‖ (``accel=0`` turns it off)
ACCEL_RATIO = 0.75


def free_mask(opt) -> np.ndarray:
    """(d,) float mask: 1 for the state components the solver solves for, 0 for held ones."""
    held = set(getattr(opt, "held_state", ()))
    return np.array([0.0 if n in held else 1.0 for n in opt.state_names], dtype=np.float64)


def state_bounds(opt, theta=None) -> tuple[np.ndarray, np.ndarray]:
    """The optimizer's state range as float64 ``(low, high)``, each (d,); ±inf where unbounded.

    Uses ``opt.state_bounds(theta)`` (see :class:`~lopt_trace.optimizers.base.ComponentwiseOptimizer`);
    an optimizer without it is unbounded.
    """
    d = len(opt.state_names)
    fn = getattr(opt, "state_bounds", None)
    if fn is None:
        return np.full(d, -np.inf), np.full(d, np.inf)
    low, high = fn(theta)
    low = np.broadcast_to(np.asarray(low, dtype=np.float64), (d,)).copy()
    high = np.broadcast_to(np.asarray(high, dtype=np.float64), (d,)).copy()
    if np.any(low > high):
        raise ValueError(f"state bounds of {opt!r} have low > high: {low}, {high}")
    return low, high


def hold_at_median(opt, h0: np.ndarray) -> np.ndarray:
    """Starts ``(n, d)`` with every held component set to its median over the starts."""
    free = free_mask(opt).astype(bool)
    if free.all() or len(h0) == 0:
        return h0
    return np.where(free, h0, np.nanmedian(h0, axis=0))


# -- the solver ---------------------------------------------------------------------------------

def solver_settings(method: str = "lm", tol: float = 1e-9, max_iter: int = 200,
                    learning_rate: float = 0.5, mu0: float = 1e-3, patience: int | None = None,
                    project: bool = False, range_margin: float | None = RANGE_MARGIN,
                    warmup: int = 0, accel: float = ACCEL_RATIO) -> dict:
    """The solver's numeric settings as a dict of scalars; they are arguments of the compiled
    solver (changing them does not compile again). ``patience`` None: :data:`DEFAULT_PATIENCE`
    for the second-order methods, no stall rule for gradient descent; ``range_margin`` None: no
    limit on how far outside the range an unprojected iterate may go; ``accel`` 0: no geodesic
    acceleration."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if patience is None:
        patience = max_iter + 1 if method == "gd" else DEFAULT_PATIENCE
    return {"tol": float(tol), "max_iter": int(max_iter), "learning_rate": float(learning_rate),
            "mu0": float(mu0), "patience": int(patience), "project": bool(project),
            "range_margin": math.inf if range_margin is None else float(range_margin),
            "warmup": int(warmup), "accel": float(accel)}


def _solver_fn(opt, method: str = "lm"):
    """The batched solver as a pure (traceable, not jitted) function

        solve(theta, h0 (n, d), g () or (n,), low (d,), high (d,), active (n,) bool, settings)
            -> (h (n, d), q (n,), status (n,) int32, iterations (n,) int32)

    with ``settings`` from :func:`solver_settings`. Starts with ``active`` False (padding) are
    left alone. One ``lax.while_loop`` runs over the whole batch while any start is active (not
    converged, stalled, out of range or out of iterations); finished starts are frozen.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    free_np = free_mask(opt)

    def solve(theta, h0, g, low, high, active, settings):
        dt = h0.dtype
        n = h0.shape[0]
        free = jnp.asarray(free_np, dt)
        fb = free > 0
        g = jnp.broadcast_to(jnp.asarray(g, dt), (n,))
        low = jnp.asarray(low, dt)
        high = jnp.asarray(high, dt)
        tol = jnp.asarray(settings["tol"], dt)
        project = jnp.asarray(settings["project"])
        lo_b = fb & jnp.isfinite(low)
        hi_b = fb & jnp.isfinite(high)
        # how far outside the range an unprojected iterate may go before its start is stopped
        width = jnp.where(jnp.isfinite(high - low), high - low,
                          1.0 + jnp.where(jnp.isfinite(low), jnp.abs(low), jnp.abs(high)))
        margin = jnp.where(project, jnp.inf, jnp.asarray(settings["range_margin"], dt) * width)

        def clip(h):
            return jnp.where(fb & project, jnp.clip(h, low, high), h)

        def res(h, g):  # one start; held components: zero residual and zero Jacobian columns
            return (opt.F(theta, h, g) - h) * free

        def done(h, r):  # scaled by the solved components only: a held clock (count) is no scale
            return jnp.max(jnp.abs(r)) <= tol * (1.0 + jnp.max(jnp.abs(h) * free))

        def inside(h):
            return jnp.all(~fb | ((h >= low) & (h <= high)))

        def far(h):
            return jnp.any(fb & ((h < low - margin) | (h > high + margin)))

        def step(h, r, mu, g):
            if method == "gd":
                _, vjp = jax.vjp(lambda y: res(y, g), h)
                h_new = clip(h - settings["learning_rate"] * vjp(r)[0] * free)
                r_new = res(h_new, g)
                return h_new, r_new, jnp.all(jnp.isfinite(r_new)), mu
            jac = jax.jacfwd(res)(h, g) * free  # held columns zero: steps leave them alone
            # projected: components on a bound that descent pushes outwards stay there
            grad = jac.T @ r
            blocked = project & ((lo_b & (h <= low) & (grad > 0)) | (hi_b & (h >= high) & (grad < 0)))
            jac = jnp.where(blocked, 0.0, jac)
            if method == "gn":
                delta = -jnp.linalg.lstsq(jac, r)[0]
            else:
                eye = jnp.eye(h.shape[-1], dtype=dt)
                lu = jax.scipy.linalg.lu_factor(jac.T @ jac + mu * eye)
                delta = -jax.scipy.linalg.lu_solve(lu, jac.T @ r)
                # geodesic acceleration (Transtrum & Sethna 2012)
                def dres(y):
                    return jax.jvp(lambda x: res(x, g), (y,), (delta,))[1]

                rdd = jax.jvp(dres, (h,), (delta,))[1] * ~blocked
                acc = -jax.scipy.linalg.lu_solve(lu, jac.T @ rdd)
                small = 2.0 * jnp.linalg.norm(acc) <= settings["accel"] * jnp.linalg.norm(delta)
                delta = jnp.where(small, delta + 0.5 * acc, delta)
            h_new = clip(h + delta)
            r_new = res(h_new, g)
            ok = jnp.all(jnp.isfinite(r_new))
            if method == "gn":
                return h_new, r_new, ok, mu
            better = ok & (jnp.sum(r_new * r_new) < jnp.sum(r * r))
            mu = jnp.where(better, jnp.maximum(mu / 3.0, MU_MIN), jnp.minimum(mu * 4.0, MU_MAX))
            return h_new, r_new, better, mu

        vres, vdone, vinside, vfar, vstep = (jax.vmap(f) for f in (res, done, inside, far, step))

        def fwd(_, h):
            return jnp.where(fb, jax.vmap(lambda x, gg: opt.F(theta, x, gg))(h, g), h)

        h = jax.lax.fori_loop(0, settings["warmup"], fwd, jnp.where(fb, jnp.clip(h0, low, high), h0))
        r = vres(h, g)
        q = 0.5 * jnp.sum(r * r, axis=-1)
        conv = vdone(h, r) & vinside(h)
        bad = ~jnp.isfinite(q)
        carry = (jnp.asarray(0), h, r, jnp.full((n,), settings["mu0"], dt), jnp.zeros((n,), jnp.int32),
                 active & ~conv & ~bad, q, jnp.zeros((n,), jnp.int32), active & bad)

        def cond(c):
            return (c[0] < settings["max_iter"]) & jnp.any(c[5])

        def body(c):
            k, h, r, mu, it, act, q_mark, it_mark, stalled = c
            h_new, r_new, accept, mu_new = vstep(h, r, mu, g)
            acc = act & accept
            h = jnp.where(acc[:, None], h_new, h)
            r = jnp.where(acc[:, None], r_new, r)
            mu = jnp.where(act, mu_new, mu)
            it = it + act.astype(jnp.int32)
            q = 0.5 * jnp.sum(r * r, axis=-1)
            progress = act & (q <= 0.5 * q_mark)
            q_mark = jnp.where(progress, q, q_mark)
            it_mark = jnp.where(progress, it, it_mark)
            conv = vdone(h, r) & vinside(h)
            stuck = ((it - it_mark >= settings["patience"]) | (mu >= MU_MAX) | ~jnp.isfinite(q)
                     | vfar(h))
            stalled = stalled | (act & ~conv & stuck)
            act = act & ~conv & ~stuck
            return k + 1, h, r, mu, it, act, q_mark, it_mark, stalled

        _, h, r, _, it, _, _, _, stalled = jax.lax.while_loop(cond, body, carry)
        q = 0.5 * jnp.sum(r * r, axis=-1)
        conv = vdone(h, r) & vinside(h)
        edge = jnp.any((lo_b & (h <= low)) | (hi_b & (h >= high)), axis=-1) | ~vinside(h)
        status = jnp.where(conv, CONVERGED,
                           jnp.where(edge, LEFT_RANGE, jnp.where(stalled, STALLED, MAX_ITER)))
        return h, q, status.astype(jnp.int32), it

    return solve


def optimizer_key(opt) -> tuple:
    """What identifies an optimizer's F for the compiled-solver cache: its class, its
    configuration (``config()``), state names and held components. θ is not part of it."""
    try:
        config = json.dumps(opt.config(), sort_keys=True, default=str)
    except Exception:  # an optimizer without a serialisable config: cache per instance
        config = f"id:{id(opt)}"
    return (type(opt), config, tuple(opt.state_names), tuple(getattr(opt, "held_state", ())))


_CACHE: collections.OrderedDict = collections.OrderedDict()


def _cached(key, build):
    fn = _CACHE.get(key)
    if fn is None:
        fn = jax.jit(build())
        _CACHE[key] = fn
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return fn


def clear_solver_cache() -> None:
    """Forget every compiled solver (the next call compiles again)."""
    _CACHE.clear()


def compiled_solver(opt, method: str = "lm"):
    """The jitted batched solver (see :func:`_solver_fn` for its signature), built once per
    optimizer configuration and method and reused: θ, starts, g*, bounds and the settings are
    arguments, so only a new shape or dtype compiles again."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return _cached(("solve", optimizer_key(opt), method), lambda: _solver_fn(opt, method))


def _bucket(n: int) -> int:
    """Padded batch size: the next power of two up to 64, then the next multiple of 64."""
    if n <= 64:
        return 1 << max(0, (n - 1).bit_length())
    return -(-n // 64) * 64


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([x, np.repeat(x[:1], n - len(x), axis=0)]) if n > len(x) else x


def _settings_args(settings: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in settings.items()}


def solve_starts(opt, theta, h0, g_star, method: str = "lm", tol: float = 1e-9,
                 max_iter: int = 200, learning_rate: float = 0.5, mu0: float = 1e-3,
                 patience: int | None = None, project: bool = False,
                 range_margin: float | None = RANGE_MARGIN, warmup: int = 0,
                 accel: float = ACCEL_RATIO):
    """Solve from every start ``h0 (n, d)`` for every g* in ``g_star (m,)`` with the compiled
    solver (one call per g*, so each stops as soon as its own starts are done). θ must already
    be float64 (call inside :func:`float64`). Returns NumPy ``h (m, n, d), q (m, n),
    status (m, n), iterations (m, n)``."""
    h0 = np.asarray(h0, dtype=np.float64)
    gs = np.atleast_1d(np.asarray(g_star, dtype=np.float64))
    n, d = h0.shape
    m = len(gs)
    if n == 0:
        return (np.zeros((m, 0, d)), np.zeros((m, 0)), np.zeros((m, 0), np.int32),
                np.zeros((m, 0), np.int32))
    settings = _settings_args(solver_settings(method, tol, max_iter, learning_rate, mu0, patience,
                                              project, range_margin, warmup, accel))
    fn = compiled_solver(opt, method)
    low, high = state_bounds(opt, theta)
    npad = _bucket(n)
    padded = jnp.asarray(_pad(h0, npad))
    active = jnp.asarray(np.arange(npad) < n)
    low, high = jnp.asarray(low), jnp.asarray(high)
    outs = [fn(theta, padded, jnp.asarray(g, jnp.float64), low, high, active, settings) for g in gs]
    h, q, status, it = (np.stack([np.asarray(o[i])[:n] for o in outs]) for i in range(4))
    return h, q, status, it


def solve_one_fn(opt, theta, method: str = "lm", tol: float = 1e-9, max_iter: int = 100,
                 learning_rate: float = 0.5, mu0: float = 1e-3, patience: int | None = None,
                 project: bool = False, range_margin: float | None = RANGE_MARGIN,
                 warmup: int = 0):
    """The solver for one start and one g*: ``solve(h0 (d,), g ()) -> (h, q, converged, iters)``,
    traceable (use it inside ``jit``, ``scan``, ``vmap``).

    ``method`` is ``"lm"`` (Levenberg–Marquardt), ``"gn"`` (plain Gauss–Newton, every step
    accepted) or ``"gd"`` (gradient descent on q with step ``learning_rate``). See
    :func:`solver_settings` for the rest.
    """
    solve = _solver_fn(opt, method)
    settings = solver_settings(method, tol, max_iter, learning_rate, mu0, patience, project,
                               range_margin, warmup)
    low, high = state_bounds(opt, theta)

    def solve_one(h0, g):
        h, q, status, it = solve(theta, h0[None], g, low, high, jnp.ones((1,), bool), settings)
        return h[0], q[0], status[0] == CONVERGED, it[0]

    return solve_one


def make_solver(opt, theta, method: str = "lm", tol: float = 1e-9, max_iter: int = 100,
                learning_rate: float = 0.5, mu0: float = 1e-3, patience: int | None = None,
                project: bool = False, range_margin: float | None = RANGE_MARGIN, warmup: int = 0):
    """``solve(starts (n, d), g_star (m,)) -> (h (m, n, d), q, converged, iterations)`` with the
    compiled, cached solver (see :func:`compiled_solver`; repeated calls do not compile again).
    No forward warm-up by default (``warmup``), unlike :func:`find_fixed_points`.

    Call it inside :func:`lopt_trace.analysis._common.float64` for float64 results.
    """

    def solve(starts, g_star):
        h, q, status, it = solve_starts(opt, theta, starts, g_star, method, tol, max_iter,
                                        learning_rate, mu0, patience, project, range_margin,
                                        warmup)
        return jnp.asarray(h), jnp.asarray(q), jnp.asarray(status == CONVERGED), jnp.asarray(it)

    return solve
