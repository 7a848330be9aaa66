"""Update functions, effective learning rate and saturation, against optimizers with known answers."""

import numpy as np
import pytest
import xarray as xr
from _stores import GT, open_store

from lopt_trace.analysis import (
    effective_learning_rate,
    fraction_beyond,
    fraction_beyond_hist,
    rebuild,
    run_group,
    sample_states,
    saturation,
    update_function,
)


@pytest.fixture(scope="module")
def tree(ground_truth_store):
    return open_store(ground_truth_store)


def test_sgd_update_function_is_linear_with_slope_minus_alpha_at_every_state(tree):
    opt, theta = rebuild(tree, "sgd")
    states = sample_states(run_group(tree, "sgd")["state"], 40, seed=1)
    assert float(abs(states).max()) > 0.01  # genuinely different states
    g = np.linspace(-3, 3, 13)
    dx = update_function(opt, theta, states, g)
    assert dx.dims == ("start", "g") and "run" in dx.coords  # provenance of each state kept
    alpha = GT["sgd"]["learning_rate"]
    np.testing.assert_allclose(dx.values, -np.float32(alpha) * g[None, :] * np.ones((40, 1)), rtol=1e-7)
    np.testing.assert_allclose(effective_learning_rate(opt, theta, states), np.float32(alpha), rtol=1e-7)
    sat = saturation(opt, theta, states.isel(start=slice(0, 4)), g_max=50.0)
    assert np.isinf(sat["threshold"]).all()  # never saturates
    np.testing.assert_allclose(sat["clip_equivalent"], 50.0, rtol=1e-9)


def test_clipped_sgd_saturates_at_its_clip_threshold(tree):
    opt, theta = rebuild(tree, "sgd_clip")
    ds = run_group(tree, "sgd_clip")
    states = sample_states(ds["state"], 8)
    c, tol = GT["clip"], 0.1
    sat = saturation(opt, theta, states, g_max=3.0, tol=tol)
    # the documented definition: 10% below linear at |g| = c / (1 − tol); the update's limit is α c
    np.testing.assert_allclose(sat["threshold"], c / (1 - tol), rtol=1e-6)
    np.testing.assert_allclose(sat["threshold_side"], c / (1 - tol), rtol=1e-6)
    np.testing.assert_allclose(sat["clip_equivalent"], c, rtol=1e-6)
    np.testing.assert_allclose(sat["update_limit"], np.float32(GT["sgd"]["learning_rate"]) * c, rtol=1e-6)
    # the fraction of recorded gradients beyond the threshold
    g = np.abs(ds["gradient"].values)
    thr = float(sat["threshold"][0])
    frac = float(fraction_beyond(ds["gradient"], thr).compute())
    assert frac == pytest.approx(np.mean(g > thr)) and 0 < frac < 1
    # from the all-parameter histogram (here every parameter is stored): close to the same
    frac_hist = fraction_beyond_hist(ds["gradient_hist"], ds["bin_edges"].values, thr)
    assert frac_hist == pytest.approx(frac, abs=0.05)


def test_rmsprop_effective_learning_rate_falls_with_state_by_the_closed_form(tree):
    opt, theta = rebuild(tree, "rmsprop")
    states = sample_states(run_group(tree, "rmsprop")["state"], 64, seed=2)
    s = states.sel(unit="mean_square").values.astype(np.float64)
    assert s.max() > 100 * s.min()  # a wide range of accumulated squared gradients
    p = {k: float(np.float32(v)) for k, v in GT["rmsprop"].items()}
    expected = p["learning_rate"] / np.sqrt(p["decay"] * s + p["eps"])
    eta = effective_learning_rate(opt, theta, states).values
    np.testing.assert_allclose(eta, expected, rtol=1e-6)
    _, first = np.unique(s, return_index=True)  # sorted distinct states
    assert len(first) > 20 and np.all(np.diff(eta[first]) < 0)  # strictly falls as the state grows


def test_update_function_at_nonzero_gradient_slope(tree):
    """η at g ≠ 0 (one g per state) equals the finite-difference slope of Δx(g)."""
    opt, theta = rebuild(tree, "rmsprop")
    states = sample_states(run_group(tree, "rmsprop")["state"], 5, seed=3)
    at = xr.DataArray(np.linspace(-0.5, 0.5, 5), dims="start")
    eta = effective_learning_rate(opt, theta, states, at=at).values
    eps = 1e-6
    for i in range(5):
        st = states.isel(start=[i])
        dx = update_function(opt, theta, st, [float(at[i]) - eps, float(at[i]) + eps]).values[0]
        assert eta[i] == pytest.approx(-(dx[1] - dx[0]) / (2 * eps), rel=1e-5)


def test_displaced_states_along_a_direction(tree):
    from lopt_trace.analysis import displaced

    opt, theta = rebuild(tree, "rmsprop")
    h0 = xr.DataArray([1.0, 0.0], dims="unit", coords={"unit": ["mean_square", "gradient"]})
    pc = xr.DataArray([1.0, 0.0], dims="unit", coords={"unit": ["mean_square", "gradient"]})
    states = displaced(h0, pc, [0.0, 1.0, 3.0])
    assert states.dims == ("displacement", "unit")
    np.testing.assert_allclose(states.sel(unit="mean_square"), [1.0, 2.0, 4.0])
    p = {k: float(np.float32(v)) for k, v in GT["rmsprop"].items()}
    eta = effective_learning_rate(opt, theta, states)
    np.testing.assert_allclose(eta, p["learning_rate"] / np.sqrt(p["decay"] * np.array([1.0, 2.0, 4.0]) + p["eps"]),
                               rtol=1e-6)
