"""Fixed points of the optimizer's state dynamics: states with F(θ, h*, g*) = h*.

A batched solver minimises q(h) = ½‖r(h)‖² with the residual r(h) = F(θ, h, g*) − h, from many
starting states at once. The default method is Levenberg–Marquardt on the residual: each
iteration solves (JᵀJ + μI) δ = −Jᵀr with the exact Jacobian J = ∂F/∂h − I (``jax.jacfwd``),
adds the geodesic acceleration ½a, (JᵀJ + μI) a = −Jᵀ r''(δ, δ) (Transtrum & Sethna 2012; the
second directional derivative by nested ``jax.jvp``; used when 2‖a‖ ≤ 0.75‖δ‖), accepts the
step if q falls (then μ ← μ/3) and otherwise raises μ ← 4μ. Near a fixed point that is not
degenerate this is Newton's method and converges quadratically; the acceleration keeps it fast
in the long curved valleys of q around nearly saturated, very slow fixed points (the bundled
Rosenbrock GRU at large g*, where plain LM creeps for hundreds of iterations). First-order
descent on q (``method="gd"``) needs thousands of iterations on the same problems because q is
badly conditioned where the dynamics are slow (see benchmarks/fixed_points.py).

Tolerance (documented): a start has **converged** when

    max_i |r_i(h)| ≤ tol · (1 + max_i |h_i|),      tol = 1e-9 by default (float64),

(i over the solved components: held ones, below, have no residual and set no scale) and h lies in the state's range. The error in h* itself is about the residual divided by
1 − |λ_max| (the slowest mode).

**The state's range.** Every optimizer declares a box [low, high] per state component
(:meth:`~lopt_trace.optimizers.base.ComponentwiseOptimizer.state_bounds`: |h| ≤ 1 for GRU units,
non-negative second moments, unbounded otherwise) that holds all its fixed points and that F maps
into itself. Starts are clipped into it. Solutions outside it are never fixed points of the
optimizer: a GRU iterate that runs into the saturated region, where F(h) ≈ h, can pass the
residual tolerance at |h| ≫ 1. By default iterates may leave the range on the way by at most
``range_margin`` (1) times its width; a start that goes further is stopped (``left_range``).
With ``project=True`` every step is projected onto the range instead (components on a bound
that descent pushes outwards are held there). Projection converged fewer starts where fixed
points sit at the edge of the range to float64 precision (``two_moons-warm`` at large g* in
benchmarks/fixed_points.py), so it is not the default.

**Forward warm-up.** Before the solver starts, every start is moved by ``warmup`` forward
iterations of F (default 100 in :func:`find_fixed_points` and the S-curve; 0 in the low-level
:func:`make_solver`). Attractors pull the starts in, out of the saturated corners where q has
minima that are not fixed points: on the bundled linear-regression GRU at g* = 1, Levenberg–
Marquardt straight from the starts converges from almost none of them, after the warm-up from
all (benchmarks/fixed_points.py). The price: starts near an unstable fixed point move away from
it, so use ``warmup=0`` to look for saddles.

**Per-start status** (``status``, see :data:`STATUS`): ``converged``; ``stalled`` (q did not halve
in ``patience`` (40) iterations, μ reached its ceiling, or q is not finite); ``left_range`` (not
converged, and the iterate is outside the range, or on its boundary when projected);
``max_iter`` (still improving at ``max_iter``). Converged and stopped starts are frozen, and the
batch stops as soon as no start is still active.

**Compiled once.** The solver is ``jax.jit``-ed with θ, the starts, g* (a scalar, or one per
start), the bounds and the numeric settings (tolerance, iteration limits, warm-up, range
handling) as arguments, and cached per optimizer configuration and method
(:func:`compiled_solver`), so a sweep over g*, another θ of the same shapes (checkpoints) or
other settings do not compile again. The number of starts is padded to a bucket (a power of two
up to 64, then a multiple of 64), so nearby batch sizes share a compilation too.

**Held components.** State components an optimizer lists in ``held_state`` (a gradient
normaliser such as the input-normalised GRU's ``gmax``, which decays to 0 without gradients) are
not solved for: they keep their starting value, and the solver finds fixed points of the other
components *given* them. :func:`find_fixed_points` sets them to their median over the starts, so
all starts solve the same system; the warm-up and the stability check hold them too.

:func:`merge_fixed_points` keeps the converged solutions inside the state's range, merges those
within about ``merge_tol`` of each other (grid hashing, then connected components of a k-d-tree's
neighbour graph of the occupied cells; no Python loop over pairs), and keeps for each the
solution with the smallest q and the number of starts that reached it. Given the optimizer, it
also gives each fixed point's spectral radius (of ∂F/∂h over the solved components) and checks it
by forward iteration (:func:`check_attractors`): a fixed point is an ``attractor`` if F pulls
small perturbations of it in several random directions back towards it. Where the starts were
does not matter: a fixed point far from every start is as real as one among them (the old
outlier rule, a box around the starts, is only applied when ``outlier_margin`` is given). With
``forward_steps`` > 0, :func:`fixed_points` also iterates F from every start and records which
reported fixed point each orbit settles at (:func:`forward_check`), so a missed attractor would
show (``forward_missed``).
"""

from __future__ import annotations

import collections
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.analysis._common import UNIT, attrs, float64, in_float64, theta64

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


# -- forward iteration and stability --------------------------------------------------------------

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


# -- the analysis-level functions ---------------------------------------------------------------

def sample_states(state: xr.DataArray, n: int = 256, seed: int = 0, unit: str = UNIT) -> xr.DataArray:
    """``n`` states picked at random from recorded trajectories ``(..., unit)``: (start, unit).

    Only the picked states are read (pointwise indexing of the Dask array); each start keeps the
    coordinates (run, step, param, ...) it came from. States with non-finite entries are dropped.
    """
    dims = [d for d in state.dims if d != unit]
    rng = np.random.default_rng(seed)
    idx = {d: xr.DataArray(rng.integers(0, state.sizes[d], n), dims=START) for d in dims}
    picked = state.isel(idx).transpose(START, unit).compute()
    keep = np.isfinite(picked.values).all(axis=1)
    picked = picked.isel({START: np.flatnonzero(keep)})
    return picked.assign_coords({START: np.arange(picked.sizes[START])})


def _status_attrs() -> dict:
    return attrs("solver status per start", flag_values=list(range(len(STATUS))),
                 flag_meanings=" ".join(STATUS), description=STATUS_DESCRIPTION)


@in_float64
def find_fixed_points(opt, theta, starts: xr.DataArray, g_star=0.0, noise: float = 0.0,
                      seed: int = 0, method: str = "lm", tol: float = 1e-9,
                      max_iter: int = 200, learning_rate: float = 0.5, *,
                      patience: int | None = None, project: bool = False,
                      range_margin: float | None = RANGE_MARGIN,
                      warmup: int = DEFAULT_WARMUP, accel: float = ACCEL_RATIO) -> xr.Dataset:
    """Solve F(θ, h, g*) = h from every start (``(start, unit)``) for every g* value.

    ``noise`` adds Gaussian noise to the starts, scaled by each unit's standard deviation over
    the starts. Components in ``opt.held_state`` are set to their median over the starts and
    held there. Every start is moved by ``warmup`` forward iterations of F first; iterates may
    leave the optimizer's state range by ``range_margin`` × its width (None: any distance), or
    are projected onto it (``project``); ``patience`` is the stall rule, ``accel`` the geodesic
    acceleration (module doc). The solver is compiled once per optimizer and method. Returns a
    Dataset over ``(g_star, start, unit)`` with ``start_state``, ``state`` (the solution),
    ``q`` (½‖F − h‖²), ``status`` (:data:`STATUS`), ``converged`` (status is converged),
    ``iterations``, and the range ``state_low``, ``state_high`` (unit).
    """
    starts = starts.transpose(..., UNIT)
    if starts.ndim != 2:
        raise ValueError(f"starts must be (start, unit), got dims {starts.dims}")
    start_dim = starts.dims[0]
    h0 = np.asarray(starts.values, dtype=np.float64)
    if noise > 0:
        rng = np.random.default_rng(seed)
        h0 = h0 + noise * h0.std(axis=0, keepdims=True) * rng.standard_normal(h0.shape)
    h0 = hold_at_median(opt, h0)
    gs = np.atleast_1d(np.asarray(g_star, dtype=np.float64))
    th = theta64(theta)
    low, high = state_bounds(opt, th)
    h, q, status, it = solve_starts(opt, th, h0, gs, method, tol, max_iter, learning_rate,
                                    patience=patience, project=project,
                                    range_margin=range_margin, warmup=warmup, accel=accel)
    coords = {k: v for k, v in starts.coords.items() if UNIT not in v.dims}
    coords[G_STAR] = gs
    if UNIT in starts.coords:
        coords[UNIT] = starts[UNIT].values
    return xr.Dataset(
        {
            "start_state": ((start_dim, UNIT), h0, attrs("starting state")),
            "state": ((G_STAR, start_dim, UNIT), h, attrs("fixed point h* with F(θ, h*, g*) = h*")),
            "q": ((G_STAR, start_dim), q, attrs("½‖F(θ, h, g*) − h‖² at the solution")),
            "status": ((G_STAR, start_dim), status.astype(np.int8), _status_attrs()),
            "converged": ((G_STAR, start_dim), status == CONVERGED,
                          attrs("reached the tolerance inside the state's range")),
            "iterations": ((G_STAR, start_dim), it, attrs("solver iterations", "count")),
            "state_low": ((UNIT,), low, attrs("lower end of the state's range")),
            "state_high": ((UNIT,), high, attrs("upper end of the state's range")),
        },
        coords=coords,
        attrs={"method": method, "tol": float(tol), "max_iter": int(max_iter),
               "noise": float(noise), "held": list(opt.held_state), "project": int(project),
               "range_margin": -1.0 if range_margin is None else float(range_margin),
               "warmup": int(warmup), "accel": float(accel),
               "patience": int(DEFAULT_PATIENCE if patience is None and method != "gd"
                               else (max_iter + 1 if patience is None else patience))},
    )


def _clusters(points: np.ndarray, radius: float) -> np.ndarray:
    """Cluster labels: points that share a grid cell of side ``radius``, or whose cells'
    representatives are within ``radius`` of each other, are one cluster (connected components).

    Hashing to the grid first makes tight clusters of many solutions cost O(n log n): only one
    representative per occupied cell enters the k-d tree's neighbour search.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(points)
    if n == 0:
        return np.zeros(0, dtype=int)
    keys = np.floor(points / radius).astype(np.int64)
    _, first, cell = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    cell = cell.ravel()
    reps = points[first]
    pairs = cKDTree(reps).query_pairs(radius, output_type="ndarray")
    m = len(reps)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    return connected_components(graph, directed=False)[1][cell]


def default_merge_tol(starts: np.ndarray, free: np.ndarray | None = None) -> float:
    """1e-3 × the spread of the starts ``(n, d)`` (root of the summed per-unit variance), at least
    1e-9. With ``free`` (a (d,) mask), only those components count: held ones (a step count, which
    runs from 0 to the horizon) say nothing about the scale of the solved ones."""
    starts = np.asarray(starts)
    if free is not None and np.any(free) and starts.ndim == 2:
        starts = starts[:, np.asarray(free, bool)]
    spread = float(np.sqrt(np.sum(np.var(starts, axis=0))))
    scale = max(spread, 1e-6 * (1.0 + float(np.max(np.abs(starts)))) if starts.size else 1.0)
    return max(1e-3 * scale, 1e-9)


def _range_of(ds, opt, theta, d):
    if "state_low" in ds and "state_high" in ds:
        return (np.asarray(ds["state_low"].values, dtype=np.float64),
                np.asarray(ds["state_high"].values, dtype=np.float64))
    if opt is not None:
        return state_bounds(opt, theta)
    return np.full(d, -np.inf), np.full(d, np.inf)


def merge_fixed_points(ds: xr.DataArray | xr.Dataset, merge_tol: float | None = None,
                       outlier_margin: float | None = None,
                       reference: xr.DataArray | None = None, opt=None, theta=None, *,
                       confirm_steps: int = 20000, n_directions: int = 8) -> xr.Dataset:
    """Unique fixed points for each g* from :func:`find_fixed_points` results.

    A solution counts if the solver converged (q within tolerance) and it lies in the state's
    range (``state_low``/``state_high`` of ``ds``, else ``opt.state_bounds``, else unbounded).
    Where the starts were does not matter, unless ``outlier_margin`` is given: then solutions
    outside the box spanned by ``reference`` (default: the starts) widened by ``outlier_margin``
    times its width on each side are also left out (the default before issue #16; it threw away
    real fixed points, so it is off by default).

    Returns ``fixed_point_state (g_star, fixed_point, unit)``, ``fixed_point_q`` and ``count``
    (starts that reached it; padded entries have count 0 and NaN states, sorted by count), the
    per-start ``cluster`` (−1: not converged or rejected) and ``outlier`` (converged but
    rejected) flags, ``n_converged`` and ``n_fixed_points`` per g*. Given ``opt`` and ``theta``,
    also ``spectral_radius``, ``stable``, ``attractor`` (confirmed by forward iteration, see
    :func:`check_attractors`) and ``pull`` per fixed point, and ``n_attractors`` per g*.
    """
    start_dim = next(d for d in ds["start_state"].dims if d != UNIT)
    d = ds.sizes[UNIT]
    ref = ds["start_state"] if reference is None else reference
    ref = np.asarray(ref.transpose(..., UNIT).values, dtype=np.float64).reshape(-1, d)
    low, high = _range_of(ds, opt, theta, d)
    held = set(ds.attrs.get("held", ()) or ())
    if opt is not None:
        checked = free_mask(opt) > 0
    elif UNIT in ds.coords:
        checked = np.array([str(u) not in held for u in ds[UNIT].values])
    else:
        checked = np.ones(d, bool)
    tol = default_merge_tol(ref, checked) if merge_tol is None else float(merge_tol)
    states = ds["state"].transpose(G_STAR, start_dim, UNIT).values
    q = ds["q"].transpose(G_STAR, start_dim).values
    if "status" in ds:
        conv = ds["status"].transpose(G_STAR, start_dim).values == CONVERGED
    else:
        conv = ds["converged"].transpose(G_STAR, start_dim).values.astype(bool)
    m, n, _ = states.shape
    slack_lo = np.where(np.isfinite(low), 1e-12 * (1 + np.abs(low)), 0.0)
    slack_hi = np.where(np.isfinite(high), 1e-12 * (1 + np.abs(high)), 0.0)
    outside = checked & ((states < low - slack_lo) | (states > high + slack_hi))
    outlier = conv & outside.any(axis=-1)
    if outlier_margin is not None:
        lo, hi = ref.min(axis=0), ref.max(axis=0)
        width = np.where(hi > lo, hi - lo, 1.0 + np.abs(lo))
        far = (states < lo - outlier_margin * width) | (states > hi + outlier_margin * width)
        outlier |= conv & far.any(axis=-1)
    cluster = np.full((m, n), -1, dtype=np.int64)
    reps, counts, qs = [], [], []
    for i in range(m):  # one vectorised merge per g* value
        ok = np.flatnonzero(conv[i] & ~outlier[i])
        labels = _clusters(states[i, ok], tol)
        k = labels.max() + 1 if len(labels) else 0
        count = np.bincount(labels, minlength=k)
        order = np.argsort(-count, kind="stable")  # biggest basin first
        rank = np.empty(k, dtype=np.int64)
        rank[order] = np.arange(k)
        cluster[i, ok] = rank[labels]
        # representative: the member with the smallest q in each cluster
        best = np.full(k, -1)
        order_q = np.lexsort((q[i, ok], labels))
        first = np.r_[True, labels[order_q][1:] != labels[order_q][:-1]] if len(ok) else np.zeros(0, bool)
        best[labels[order_q][first]] = ok[order_q][first]
        reps.append(states[i, best[order]])
        counts.append(count[order])
        qs.append(q[i, best[order]])
    kmax = max([len(c) for c in counts] + [1])
    pad_states = np.full((m, kmax, d), np.nan)
    pad_q = np.full((m, kmax), np.nan)
    pad_count = np.zeros((m, kmax), dtype=np.int64)
    for i in range(m):
        pad_states[i, : len(counts[i])] = reps[i]
        pad_q[i, : len(counts[i])] = qs[i]
        pad_count[i, : len(counts[i])] = counts[i]
    coords = {G_STAR: ds[G_STAR].values, FIXED_POINT: np.arange(kmax)}
    if UNIT in ds.coords:
        coords[UNIT] = ds[UNIT].values
    found = pad_count > 0
    data = {
        "fixed_point_state": ((G_STAR, FIXED_POINT, UNIT), pad_states, attrs("unique fixed point")),
        "fixed_point_q": ((G_STAR, FIXED_POINT), pad_q, attrs("½‖F − h‖² at the fixed point")),
        "count": ((G_STAR, FIXED_POINT), pad_count, attrs("starts that converged to it", "count")),
        "cluster": ((G_STAR, start_dim), cluster, attrs("fixed point reached (−1: none)")),
        "outlier": ((G_STAR, start_dim), outlier,
                    attrs("converged but rejected: outside the state's range (or, with "
                          "outlier_margin, far outside the reference states)")),
        "n_converged": ((G_STAR,), conv.sum(axis=1), attrs("starts that converged", "count")),
        "n_fixed_points": ((G_STAR,), found.sum(axis=1), attrs("unique fixed points", "count")),
    }
    if opt is not None:
        with float64():
            th = theta64(theta)
            ii, kk = np.nonzero(found)
            gvals = np.asarray(ds[G_STAR].values, dtype=np.float64)
            rho, stable, attractor, pull = check_attractors(
                opt, th, pad_states[ii, kk], gvals[ii], confirm_steps, n_directions)
        full = {name: np.full((m, kmax), fill, dtype=type(fill))
                for name, fill in (("rho", np.nan), ("stable", False), ("attractor", False),
                                   ("pull", np.nan))}
        for name, v in (("rho", rho), ("stable", stable), ("attractor", attractor), ("pull", pull)):
            full[name][ii, kk] = v
        data.update({
            "spectral_radius": ((G_STAR, FIXED_POINT), full["rho"],
                                attrs("largest |λ| of ∂F/∂h (solved components) at the fixed point")),
            "stable": ((G_STAR, FIXED_POINT), full["stable"], attrs("spectral radius below 1")),
            "attractor": ((G_STAR, FIXED_POINT), full["attractor"],
                          attrs("forward iteration pulls perturbations back (confirmed)")),
            "pull": ((G_STAR, FIXED_POINT), full["pull"],
                     attrs("largest final / initial distance of perturbed forward iterations")),
            "n_attractors": ((G_STAR,), full["attractor"].sum(axis=1),
                             attrs("fixed points confirmed as attractors", "count")),
        })
    return xr.Dataset(
        data, coords=coords,
        attrs={"merge_tol": tol,
               "outlier_margin": -1.0 if outlier_margin is None else float(outlier_margin),
               "outlier_rule": "state range" if outlier_margin is None else "state range and box"},
    )


@in_float64
def forward_check(opt, theta, raw: xr.Dataset, merged: xr.Dataset, steps: int = 2000,
                  settle_tol: float = 1e-8) -> xr.Dataset:
    """Forward iteration from every start of ``raw`` (as the solver started: held components at
    their median, projected onto the range) for ``steps`` steps at each g*, matched against the
    fixed points in ``merged``.

    Returns ``forward_state (g_star, start, unit)``, ``forward_fixed_point`` (the reported fixed
    point its orbit settled at, within ``merge_tol`` plus 10 r / (1 − ρ) for an orbit with
    residual r at a fixed point with spectral radius ρ; −1: settled where no fixed point was
    reported, a missed attractor; −2: not settled, max|F(h) − h| > ``settle_tol`` (1 + max|h|)),
    and per g* ``forward_missed`` (starts whose orbit settled at an unreported point) and
    ``forward_settled``.
    """
    start_dim = next(dd for dd in raw["start_state"].dims if dd != UNIT)
    th = theta64(theta)
    low, high = _range_of(raw, opt, th, raw.sizes[UNIT])
    free = free_mask(opt) > 0
    h0 = raw["start_state"].transpose(start_dim, UNIT).values
    h0 = np.where(free, np.clip(h0, low, high), h0)
    gs = np.asarray(raw[G_STAR].values, dtype=np.float64)
    fps = merged["fixed_point_state"].transpose(G_STAR, FIXED_POINT, UNIT).values
    radius = float(merged.attrs["merge_tol"])
    rho = (merged["spectral_radius"].transpose(G_STAR, FIXED_POINT).values
           if "spectral_radius" in merged else None)
    ends, which = [], []
    for i, g in enumerate(gs):
        x, r = forward_iterate(opt, th, h0, g, steps)
        settled = r <= settle_tol * (1.0 + np.max(np.abs(np.where(free, x, 0.0)), axis=1))
        dist = np.sqrt(np.sum((x[:, None, :] - fps[i][None]) ** 2, axis=-1))  # (n, k); NaN pads
        dist = np.where(np.isfinite(dist), dist, np.inf)
        if rho is not None:  # an orbit with residual r is about r / (1 − ρ) from the attractor
            with np.errstate(divide="ignore", invalid="ignore"):
                slack = np.where(rho[i] < 1, 10.0 * r[:, None] / (1.0 - rho[i]), 0.0)
            dist = dist - np.nan_to_num(slack, nan=0.0)
        near = np.argmin(dist, axis=1) if dist.shape[1] else np.zeros(len(x), int)
        hit = dist[np.arange(len(x)), near] <= radius if dist.shape[1] else np.zeros(len(x), bool)
        ends.append(x)
        which.append(np.where(settled, np.where(hit, near, -1), -2))
    which = np.stack(which)
    return xr.Dataset(
        {
            "forward_state": ((G_STAR, start_dim, UNIT), np.stack(ends),
                              attrs(f"state after {steps} forward iterations of F at g*")),
            "forward_fixed_point": ((G_STAR, start_dim), which,
                                    attrs("reported fixed point the forward orbit settled at "
                                          "(−1: an unreported point; −2: not settled)")),
            "forward_missed": ((G_STAR,), (which == -1).sum(axis=1),
                               attrs("starts whose forward orbit settled at an unreported point",
                                     "count")),
            "forward_settled": ((G_STAR,), (which > -2).sum(axis=1),
                                attrs("starts whose forward orbit settled", "count")),
        },
        coords={G_STAR: gs},
        attrs={"forward_steps": int(steps), "settle_tol": float(settle_tol)},
    )


def fixed_points(opt, theta, starts: xr.DataArray, g_star=0.0, merge_tol: float | None = None,
                 outlier_margin: float | None = None, forward_steps: int = 0,
                 **solver) -> xr.Dataset:
    """:func:`find_fixed_points` then :func:`merge_fixed_points` (with the stability check),
    in one Dataset; with ``forward_steps`` > 0 also :func:`forward_check`."""
    raw = find_fixed_points(opt, theta, starts, g_star, **solver)
    merged = merge_fixed_points(raw, merge_tol, outlier_margin, opt=opt, theta=theta)
    parts = [raw, merged]
    if forward_steps:
        parts.append(forward_check(opt, theta, raw, merged, forward_steps))
    return xr.merge(parts, combine_attrs="drop_conflicts")


__all__ = [
    "STATUS",
    "check_attractors",
    "clear_solver_cache",
    "compiled_solver",
    "find_fixed_points",
    "fixed_points",
    "float64",
    "forward_check",
    "forward_iterate",
    "free_mask",
    "hold_at_median",
    "make_solver",
    "merge_fixed_points",
    "sample_states",
    "solve_one_fn",
    "solve_starts",
    "state_bounds",
]
