"""The batched fixed-point solver: closed forms, second order beats first order, merging."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from _stores import GT, ground_truth_optimizers

from lopt_trace.analysis import find_fixed_points, fixed_points, merge_fixed_points
from lopt_trace.analysis._common import float64, theta64
from lopt_trace.analysis.fixed_points import (
    CONVERGED,
    DEFAULT_PATIENCE,
    LEFT_RANGE,
    STALLED,
    make_solver,
)
from lopt_trace.optimizers import Adam, LearnedGRU, Momentum


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
        # Straight from the starts (make_solver has no forward warm-up), one start heads into the
        # tanh-saturated corner, where F(h) ≈ h without a fixed point. It used to run off to
        # |h| ≈ 34 and pass the tolerance there (a runaway counted as converged); now it is
        # stopped as soon as it leaves the GRU's range |h| ≤ 1 by more than the margin.
        assert int(c_lm.sum()) == 15 and float(np.median(it_lm)) <= 10
        assert float(jnp.max(jnp.abs(h_lm[0][c_lm[0]]))) <= 1.0
        best_gd = np.inf
        for lr in (4.0, 8.0):  # the best step sizes in benchmarks/fixed_points.py
            _h, _q, c, it = make_solver(gru, th, "gd", tol=1e-9, max_iter=2000, learning_rate=lr)(starts, g)
            med = float(np.median(np.where(c, it, np.inf)))
            best_gd = min(best_gd, med)
        assert best_gd > 20 * float(np.median(it_lm))
        # and LM's converged answers are fixed points
        r = jax.vmap(lambda hh: gru.F(th, hh, jnp.float64(0.0)) - hh)(h_lm[0])
        bound = 1e-9 * (1 + jnp.max(jnp.abs(h_lm[0]), axis=1))  # the documented tolerance
        assert bool(jnp.all((jnp.max(jnp.abs(r), axis=1) <= bound) == c_lm[0]))


def test_merge_duplicates_keeps_far_fixed_points_and_rejects_out_of_range():
    """Solutions merge by distance; a converged solution counts if it lies in the state's range,
    wherever the starts were. (Before version 2 a box around the starts decided: that threw away
    the real fixed point at (0.9, −0.9) below, the bug of issue #16; it is now opt-in.)"""
    units = ["a", "b"]
    starts = _starts(np.random.default_rng(2).uniform(-0.1, 0.1, size=(8, 2)), units)
    sol = np.array([[0.0, 0.0], [1e-7, 0.0], [0.5, 0.5], [0.5, 0.5 + 2e-7], [0.0, -1e-7],
                    [50.0, 50.0], [0.3, 0.3], [0.9, -0.9]])
    raw = xr.Dataset(
        {"start_state": starts,
         "state": (("g_star", "start", "unit"), sol[None]),
         "q": (("g_star", "start"), np.array([[1e-20, 1e-22, 1e-21, 1e-20, 1e-19, 1e-20, 1e-3, 1e-21]])),
         "converged": (("g_star", "start"), np.array([[True] * 6 + [False, True]])),
         "state_low": ("unit", [-1.0, -1.0]), "state_high": ("unit", [1.0, 1.0])},  # a GRU's range
        coords={"g_star": [0.0], "unit": units})
    out = merge_fixed_points(raw, merge_tol=1e-4)
    # three at the origin, two at (0.5, 0.5), one at (0.9, −0.9) far outside the starts' box;
    # (50, 50) converged outside the range |h| ≤ 1 (a runaway) and is rejected; one start failed
    np.testing.assert_array_equal(out["count"].isel(g_star=0), [3, 2, 1])
    np.testing.assert_allclose(out["fixed_point_state"].isel(g_star=0, fixed_point=0), [1e-7, 0.0])  # min q
    np.testing.assert_allclose(out["fixed_point_state"].isel(g_star=0, fixed_point=2), [0.9, -0.9])
    np.testing.assert_array_equal(out["outlier"].isel(g_star=0), [0, 0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(out["cluster"].isel(g_star=0), [0, 0, 1, 1, 0, -1, -1, 2])
    assert int(out["n_converged"][0]) == 7 and int(out["n_fixed_points"][0]) == 3
    # without a declared range nothing bounds the state, so (50, 50) is a fixed point too
    unbounded = merge_fixed_points(raw.drop_vars(["state_low", "state_high"]), merge_tol=1e-4)
    np.testing.assert_array_equal(unbounded["count"].isel(g_star=0), [3, 2, 1, 1])
    # the old box rule (starts' box widened by its width: about [−0.3, 0.3]²), now opt-in, drops
    # the real fixed points at (0.5, 0.5) and (0.9, −0.9) as well
    boxed = merge_fixed_points(raw, merge_tol=1e-4, outlier_margin=1.0)
    np.testing.assert_array_equal(boxed["count"].isel(g_star=0), [3])
    np.testing.assert_array_equal(boxed["outlier"].isel(g_star=0), [0, 0, 1, 1, 0, 1, 0, 1])


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
    assert curve["converged"].all() and bool((curve["status"] == CONVERGED).all())
    assert bool(curve["attractor"].all()) and float(curve["spectral_radius"].max()) < 1
    np.testing.assert_allclose(curve["fixed_point"].sel(unit="gmax"), G, rtol=1e-12)
    np.testing.assert_allclose(float(curve["effective_learning_rate"].isel(arm=0, g_abs=0)),
                               lr * sharp / (decay * G), rtol=1e-4)
    # not held, gmax would decay to its own fixed point 0, where the input is sign(g)
    free = LearnedGRU(units=3, input_scale=sharp, output_scale=lr, input_norm=decay)
    free.held_state = ()
    raw = fixed_points(free, theta, _starts(values, list(opt.state_names)), 0.0)
    assert float(np.abs(raw["state"].sel(unit="gmax")).max()) < 1e-6  # from ~5e-2; tol / (1 − δ)


# -- issue #16: real attractors kept, iterates in range, compiled once, per-start status ----------

def _gru_with_known_attractor(units=4):
    """A GRU whose fixed point at g* = 0 is known exactly: with U_h = 0 the candidate is
    h̃ = tanh(b_h) whatever the gates do, so h* = tanh(b_h), and ∂F/∂h = diag(1 − z*) there
    (z* the update gate at h*). The gates keep random recurrent weights."""
    gru = LearnedGRU(units=units)
    theta = {k: np.array(v, dtype=np.float64) for k, v in gru.init_theta(jax.random.PRNGKey(3)).items()}
    target = np.array([0.9, -0.6, 0.3, 0.95])[:units]
    theta["U_h"][:] = 0.0
    theta["b_h"] = np.arctanh(target)
    theta["b_z"] = np.full(units, -2.0)
    z = 1.0 / (1.0 + np.exp(-(target @ theta["U_z"] + theta["b_z"])))
    return gru, theta, target, float(np.max(1.0 - z))


def test_known_attractor_far_outside_the_starts_is_found_and_confirmed():
    gru, theta, target, rho = _gru_with_known_attractor()
    starts = _starts(np.random.default_rng(4).uniform(-0.1, 0.1, size=(32, 4)), list(gru.state_names))
    full = fixed_points(gru, theta, starts, 0.0, forward_steps=600)
    out = full.isel(g_star=0)
    assert bool(out["converged"].all()) and int(out["n_fixed_points"]) == 1
    assert int(out["count"][0]) == 32
    np.testing.assert_allclose(out["fixed_point_state"][0], target, atol=1e-8)  # tol / (1 − ρ)
    assert float(out["spectral_radius"][0]) == pytest.approx(rho, rel=1e-9)
    assert bool(out["stable"][0]) and bool(out["attractor"][0]) and float(out["pull"][0]) < 0.5
    # forward iteration from every start settles there
    assert int(out["forward_missed"]) == 0 and int(out["forward_settled"]) == 32
    assert bool((out["forward_fixed_point"] == 0).all())
    # the old rule (a box around the starts) threw this fixed point away: units 0, 1 and 3 lie
    # outside the starts' box widened by its width
    old = merge_fixed_points(full[["start_state", "state", "q", "status"]], outlier_margin=1.0)
    assert int(old["count"].max()) == 0 and bool(old["outlier"].all())


def test_runaway_iterates_never_count_as_fixed_points():
    gru, theta = _slow_gru()
    values = np.random.default_rng(0).normal(size=(16, 8)) * 0.5
    starts = _starts(values, list(gru.state_names))
    # unconstrained and straight from the starts (as the solver used to run), one start runs off
    # into the saturated corner, where F(h) ≈ h, and passes the residual tolerance at |h| ≈ 34
    free_full = find_fixed_points(gru, theta, starts, 0.0, range_margin=None, warmup=0, max_iter=100)
    free = free_full.isel(g_star=0)
    far = np.abs(free["state"].values).max(axis=1) > 1
    assert int(far.sum()) == 1 and float(np.abs(free["state"].values[far]).max()) > 10
    with float64():
        th = theta64(theta)
        h = jnp.asarray(free["state"].values[far])
        r = np.asarray(jax.vmap(lambda x: gru.F(th, x, jnp.float64(0.0)) - x)(h))
    assert np.all(np.abs(r).max(axis=1) <= 1e-9 * (1 + np.abs(free["state"].values[far]).max(axis=1)))
    # ... but it is outside the GRU's range |h| ≤ 1: status left_range, not converged, not merged
    assert bool((free["status"].values[far] == LEFT_RANGE).all()) and not free["converged"].values[far].any()
    merged = merge_fixed_points(free_full)
    assert float(np.nanmax(np.abs(merged["fixed_point_state"].values))) <= 1.0
    assert int(merged["count"].sum()) == 15
    # by default a start is stopped as soon as it leaves the range by more than its width
    # (|h| > 3), while the others converge in a few iterations each (finished starts are frozen:
    # their iteration counts are their own)
    stop = find_fixed_points(gru, theta, starts, 0.0, warmup=0).isel(g_star=0)
    s, it = stop["status"].values, stop["iterations"].values
    assert (s[far] == LEFT_RANGE).all() and (s[~far] == CONVERGED).all()
    assert it[far].max() <= 5 and it[~far].max() <= 12
    assert 3.0 < float(np.abs(stop["state"].values[far]).max()) < 10.0  # one step beyond the margin
    # projected onto the range instead, it stops on the range's edge (a unit at ±1)
    edge = find_fixed_points(gru, theta, starts, 0.0, warmup=0, project=True).isel(g_star=0)
    assert (edge["status"].values[far] == LEFT_RANGE).all()
    assert float(np.abs(edge["state"]).max()) == 1.0
    # with the forward warm-up (the default) every start converges, to the same fixed point
    out = fixed_points(gru, theta, starts, 0.0).isel(g_star=0)
    assert bool(out["converged"].all()) and int(out["count"][0]) == 16
    assert bool(out["attractor"][0]) and float(out["spectral_radius"][0]) < 1


def test_adam_fixed_points_hold_the_step_count():
    """Built-in Adam holds its clock: at g* the solver finds m* = g*, v* = g*², count unchanged."""
    opt = Adam()
    assert opt.held_state == ("count",)
    starts = _starts(np.abs(np.random.default_rng(4).normal(size=(8, 3))) * [1, 1, 50], list(opt.state_names))
    out = fixed_points(opt, opt.init_theta(), starts, [0.0, 0.3]).isel(fixed_point=0)
    assert bool(out["converged"].all())
    np.testing.assert_allclose(out["fixed_point_state"].sel(unit="m"), [0.0, 0.3], atol=1e-7)
    np.testing.assert_allclose(out["fixed_point_state"].sel(unit="v"), [0.0, 0.09], atol=1e-7)
    assert np.allclose(out["fixed_point_state"].sel(unit="count"), np.median(starts.sel(unit="count")))


def test_stalled_starts_stop_early_with_a_status():
    """A free step counter has no fixed point (t' = t + 1): q cannot fall below ½, so every start
    stalls and stops after ``patience`` iterations instead of running to ``max_iter``."""
    opt = type("FreeClockAdam", (Adam,), {"held_state": ()})()  # Adam with its clock not held
    starts = _starts(np.abs(np.random.default_rng(5).normal(size=(8, 3))), list(opt.state_names))
    out = find_fixed_points(opt, opt.init_theta(), starts, 0.0, max_iter=500, warmup=0)
    assert bool((out["status"] == STALLED).all()) and not bool(out["converged"].any())
    assert int(out["iterations"].max()) == DEFAULT_PATIENCE
    assert out["status"].attrs["flag_meanings"] == "converged stalled left_range max_iter"


class _CountingMomentum(Momentum):
    """Heavy ball that counts how often F is traced (each compile traces it; a cached call not)."""

    traces = 0

    def _F(self, theta, h, g):
        type(self).traces += 1
        return super()._F(theta, h, g)


def test_solver_compiles_once_per_optimizer_and_shape():
    from lopt_trace.analysis.adaptation import s_curve

    opt = _CountingMomentum()
    starts = _starts(np.random.default_rng(6).normal(size=(10, 1)), ["velocity"])
    find_fixed_points(opt, {"learning_rate": 0.1, "beta": 0.9}, starts, [0.0, 1.0])
    traced = _CountingMomentum.traces
    assert traced > 0
    # new weights, another g* sweep and a different number of starts in the same bucket (≤ 16)
    beta = 0.5
    out = find_fixed_points(_CountingMomentum(), {"learning_rate": 0.2, "beta": beta},
                            starts.isel(start=slice(0, 9)), np.linspace(-2, 2, 7))
    assert _CountingMomentum.traces == traced
    np.testing.assert_allclose(out["state"].isel(unit=0), np.linspace(-2, 2, 7)[:, None] / (1 - beta) * np.ones(9),
                               rtol=1e-9, atol=1e-8)
    # the S-curve: one compile for the sweep, none for the next θ and g* range
    h = xr.DataArray([0.0], dims="unit", coords={"unit": ["velocity"]})
    s_curve(opt, {"learning_rate": 0.1, "beta": 0.9}, h, 1.0, num=5, check=False)
    traced = _CountingMomentum.traces
    curve = s_curve(opt, {"learning_rate": 0.1, "beta": beta}, h, 3.0, num=5, check=False)
    assert _CountingMomentum.traces == traced and bool(curve["converged"].all())
    np.testing.assert_allclose(curve["fixed_point"].isel(unit=0), curve["g_star"] / (1 - beta), atol=1e-8)


def _bundled_linear_regression_starts(n=64, seed=0):
    """The bundled linear-regression GRU and ``n`` states along its trajectories under random
    gradients (N(0, 0.05²), a recorded run's scale) after 1–60 steps from its h0."""
    from lopt_trace.optimizers.io import load_optimizer

    trained = load_optimizer(Path(__file__).resolve().parents[1] / "data" / "optimizers" / "linear_regression.zarr")
    opt, theta = trained.optimizer, trained.theta
    rng = np.random.default_rng(seed)
    stop = rng.integers(1, 61, n)
    with float64():
        th = theta64(theta)
        F = jax.jit(jax.vmap(lambda h, g: opt.F(th, h, g)))
        h = np.broadcast_to(np.asarray(theta["h0"], np.float64), (n, opt.units)).copy()
        starts = h.copy()
        for k in range(1, 61):
            h = np.asarray(F(jnp.asarray(h), jnp.asarray(0.05 * rng.standard_normal(n))))
            starts[stop == k] = h[stop == k]
    return opt, theta, _starts(starts, list(opt.state_names))


def test_bundled_linear_regression_attractors_are_all_reported():
    """Issue #16 on the bundled optimizer: at g* = −0.1 and g* = 1 forward iteration from every
    start settles at one stable point (at g* = 1 with a unit at 0.9995 and |λ| ≈ 0.983); the
    finder converges from every start, reports exactly that point, confirms it as an attractor,
    and forward iteration from every start ends there. The old box rule dropped it at g* = 1."""
    opt, theta, starts = _bundled_linear_regression_starts()
    out = fixed_points(opt, theta, starts, [-0.1, 1.0], forward_steps=3000)
    assert (out["n_converged"] == 64).all() and (out["n_fixed_points"] == 1).all()
    assert bool(out["attractor"].isel(fixed_point=0).all())
    assert (out["forward_settled"] == 64).all() and (out["forward_missed"] == 0).all()
    assert bool((out["forward_fixed_point"] == 0).all())
    at_one = out.sel(g_star=1.0).isel(fixed_point=0)
    assert 0.999 < float(np.abs(at_one["fixed_point_state"]).max()) < 1.0
    assert float(at_one["spectral_radius"]) == pytest.approx(0.983, abs=2e-3)
    old = merge_fixed_points(out[["start_state", "state", "q", "status"]], outlier_margin=1.0)
    assert int(old["count"].sel(g_star=1.0).max()) == 0
