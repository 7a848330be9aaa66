"""The batched fixed-point solver: closed forms, second order beats first order, merging."""

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from _stores import GT, ground_truth_optimizers

from lopt_trace.analysis import find_fixed_points, fixed_points, merge_fixed_points
from lopt_trace.analysis._common import float64, theta64
from lopt_trace.analysis.fixed_points import make_solver
from lopt_trace.optimizers import LearnedGRU


def _starts(values, units):
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(units))
    return xr.DataArray(values, dims=("start", "unit"), coords={"unit": units})


def test_momentum_fixed_points_for_a_vector_of_g_star():
    opt, theta = ground_truth_optimizers()["momentum"]
    beta = float(np.float32(GT["momentum"]["beta"]))
    g_star = np.array([-2.0, 0.0, 0.5, 3.0])
    starts = _starts(np.random.default_rng(0).normal(size=20) * 5, ["velocity"])
    out = fixed_points(opt, theta, starts, g_star)
    assert out["converged"].all() and out["state"].dims == ("g_star", "start", "unit")
    # one unique fixed point per g*: v* = g* / (1 − β), reached from every start
    assert (out["count"].isel(fixed_point=0) == 20).all()
    np.testing.assert_allclose(out["fixed_point_state"].isel(fixed_point=0, unit=0),
                               g_star / (1 - beta), rtol=1e-9, atol=1e-8)  # tol / (1 − β)
    bound = 0.5 * (1e-9 * (1 + np.abs(out["state"].isel(unit=0)))) ** 2  # the documented tolerance
    assert bool((out["q"] <= bound).all())


def test_rmsprop_fixed_points_closed_form():
    opt, theta = ground_truth_optimizers()["rmsprop"]
    g_star = np.array([0.1, 1.0, -3.0])
    starts = _starts(np.abs(np.random.default_rng(1).normal(size=(8, 2))), ["mean_square", "gradient"])
    out = find_fixed_points(opt, theta, starts, g_star)
    assert out["converged"].all()
    np.testing.assert_allclose(out["state"].sel(unit="mean_square"), (g_star**2)[:, None] * np.ones(8),
                               atol=1e-9 * 10 / 0.1)  # tolerance · (1 + |h|) / (1 − ρ)
    np.testing.assert_allclose(out["state"].sel(unit="gradient"), g_star[:, None] * np.ones(8), rtol=1e-8)


def _slow_gru(units=8):
    gru = LearnedGRU(units=units)
    theta = gru.init_theta(jax.random.PRNGKey(0))
    theta = {**theta, "b_z": jnp.full((units,), -2.0),
             "b_h": 0.5 * jax.random.normal(jax.random.PRNGKey(1), (units,)), "U_h": 1.2 * theta["U_h"]}
    return gru, theta


def test_second_order_beats_first_order():
    """Levenberg–Marquardt reaches the tolerance in a handful of iterations; gradient descent with
    its best step size from a grid needs orders of magnitude more (see benchmarks/fixed_points.py)."""
    gru, theta = _slow_gru()
    with float64():
        th = theta64(theta)
        starts = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)) * 0.5)
        g = jnp.zeros(1)
        h_lm, _q_lm, c_lm, it_lm = make_solver(gru, th, "lm", tol=1e-9, max_iter=100)(starts, g)
        # (a few starts run into the tanh-saturated corner, where J ≈ I and convergence is linear)
        assert bool(c_lm.all()) and float(np.median(it_lm)) <= 10
        best_gd = np.inf
        for lr in (4.0, 8.0):  # the best step sizes in benchmarks/fixed_points.py
            _h, _q, c, it = make_solver(gru, th, "gd", tol=1e-9, max_iter=2000, learning_rate=lr)(starts, g)
            med = float(np.median(np.where(c, it, np.inf)))
            best_gd = min(best_gd, med)
        assert best_gd > 20 * float(np.median(it_lm))
        # and LM's answers are fixed points
        r = jax.vmap(lambda hh: gru.F(th, hh, jnp.float64(0.0)) - hh)(h_lm[0])
        bound = 1e-9 * (1 + jnp.max(jnp.abs(h_lm[0]), axis=1))  # the documented tolerance
        assert bool(jnp.all(jnp.max(jnp.abs(r), axis=1) <= bound))


def test_merge_duplicates_and_exclude_outliers():
    units = ["a", "b"]
    starts = _starts(np.random.default_rng(2).uniform(-1, 1, size=(7, 2)), units)
    sol = np.array([[0.0, 0.0], [1e-7, 0.0], [0.5, 0.5], [0.5, 0.5 + 2e-7], [0.0, -1e-7],
                    [50.0, 50.0], [0.3, 0.3]])
    raw = xr.Dataset(
        {"start_state": starts,
         "state": (("g_star", "start", "unit"), sol[None]),
         "q": (("g_star", "start"), np.array([[1e-20, 1e-22, 1e-21, 1e-20, 1e-19, 1e-20, 1e-3]])),
         "converged": (("g_star", "start"), np.array([[True] * 6 + [False]]))},
        coords={"g_star": [0.0], "unit": units})
    out = merge_fixed_points(raw, merge_tol=1e-4)
    # three converged at the origin, two at (0.5, 0.5); (50, 50) is an outlier; the last failed
    np.testing.assert_array_equal(out["count"].isel(g_star=0), [3, 2])
    np.testing.assert_allclose(out["fixed_point_state"].isel(g_star=0, fixed_point=0), [1e-7, 0.0])  # min q
    np.testing.assert_array_equal(out["outlier"].isel(g_star=0), [0, 0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(out["cluster"].isel(g_star=0), [0, 0, 1, 1, 0, -1, -1])
    assert int(out["n_converged"][0]) == 6


def test_merge_scales_without_pairwise_python_loops():
    """10,000 solutions in 3 clusters merge quickly (k-d tree + connected components)."""
    import time

    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    sol = centres[rng.integers(0, 3, 10000)] + 1e-8 * rng.normal(size=(10000, 3))
    raw = xr.Dataset(
        {"start_state": (("start", "unit"), sol),
         "state": (("g_star", "start", "unit"), sol[None]),
         "q": (("g_star", "start"), np.zeros((1, 10000))),
         "converged": (("g_star", "start"), np.ones((1, 10000), bool))},
        coords={"g_star": [0.0]})
    t = time.perf_counter()
    out = merge_fixed_points(raw, merge_tol=1e-5)
    assert time.perf_counter() - t < 5.0
    assert int((out["count"] > 0).sum()) == 3 and int(out["count"].sum()) == 10000


def test_held_normaliser_stays_put_and_gives_the_exact_s_curve_slope():
    from lopt_trace.analysis.adaptation import s_curve
    from lopt_trace.optimizers import sign_momentum_gru

    beta, lr, sharp, decay = 0.7, 0.01, 2.0, 0.99
    opt, theta = sign_momentum_gru(beta, lr, sharp, units=3, key=jax.random.PRNGKey(0), input_norm=decay)
    assert opt.held_state == ("gmax",)
    rng = np.random.default_rng(1)
    values = np.column_stack([rng.normal(size=(24, 3)), rng.uniform(1e-3, 1e-1, 24)])
    out = fixed_points(opt, theta, _starts(values, list(opt.state_names)), 0.0)
    assert out["converged"].all() and out.attrs["held"] == ["gmax"]
    # every start solved the same system: gmax held at the starts' median, unit 0 at v* = 0
    np.testing.assert_allclose(out["state"].sel(unit="gmax"), np.median(values[:, 3]), rtol=1e-12)
    assert int(out["n_converged"].item()) == 24 and int(out["count"].isel(g_star=0, fixed_point=0)) >= 12
    np.testing.assert_allclose(out["fixed_point_state"].isel(g_star=0, fixed_point=0).sel(unit="u0"),
                               0.0, atol=1e-9)
    # the S-curve from a state with gmax = G: η(0) = −∂Δx/∂g = α s / (δ G), exactly
    G = 0.02
    start = xr.DataArray(np.r_[np.zeros(3), G], dims="unit", coords={"unit": list(opt.state_names)})
    curve = s_curve(opt, theta, start, g_max=0.05, num=5)
    assert curve["converged"].all()
    np.testing.assert_allclose(curve["fixed_point"].sel(unit="gmax"), G, rtol=1e-12)
    np.testing.assert_allclose(float(curve["effective_learning_rate"].isel(arm=0, g_abs=0)),
                               lr * sharp / (decay * G), rtol=1e-4)
    # not held, gmax would decay to its own fixed point 0, where the input is sign(g)
    free = LearnedGRU(units=3, input_scale=sharp, output_scale=lr, input_norm=decay)
    free.held_state = ()
    raw = fixed_points(free, theta, _starts(values, list(opt.state_names)), 0.0)
    assert float(np.abs(raw["state"].sel(unit="gmax")).max()) < 1e-6  # from ~5e-2; tol / (1 − δ)
