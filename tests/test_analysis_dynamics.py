"""Autonomous dynamics (the schedule) and the learning-rate adaptation S-curve."""

import numpy as np
import pytest
import xarray as xr
from _stores import GT, ground_truth_optimizers

from lopt_trace.analysis import autonomous, gradient_range, s_curve
from lopt_trace.optimizers import momentum_gru


def _p(name):
    return {k: float(np.float32(v)) for k, v in GT[name].items()}


def test_rmsprop_autonomous_schedule_closed_form():
    """With g = 0, RMSProp's mean square decays as ρ^k s0, so η_k = α / √(ρ^{k+1} s0 + ε)."""
    opt, theta = ground_truth_optimizers()["rmsprop"]
    p = _p("rmsprop")
    h0 = xr.DataArray([4.0, 0.3], dims="unit", coords={"unit": ["mean_square", "gradient"]})
    out = autonomous(opt, theta, h0, 30)
    k = np.arange(31)
    s = 4.0 * p["decay"] ** k
    np.testing.assert_allclose(out["state"].sel(unit="mean_square"), s, rtol=1e-10)
    np.testing.assert_allclose(out["effective_learning_rate"],
                               p["learning_rate"] / np.sqrt(p["decay"] * s + p["eps"]), rtol=1e-10)
    assert np.all(np.diff(out["effective_learning_rate"].values) > 0)  # a warm-up
    np.testing.assert_allclose(out["update"][1:], 0.0, atol=0)  # no gradient, no update


def test_readout_fraction_of_autonomous_motion():
    """A two-unit momentum GRU: unit 0 feeds the readout, unit 1 does not; both decay by β."""
    opt, theta = momentum_gru(0.8, 0.05, units=2)
    along = autonomous(opt, theta, np.array([0.5, 0.0]), 10)
    across = autonomous(opt, theta, np.array([0.0, 0.5]), 10)
    assert along.attrs["readout_fraction"] == pytest.approx(1.0, rel=1e-9)
    assert across.attrs["readout_fraction"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(along["state"].isel(unit=0), 0.5 * 0.8 ** np.arange(11), rtol=1e-6)
    assert float(abs(along["update"][1:]).min()) > 0 and float(abs(across["update"][1:]).max()) == 0


def test_rmsprop_s_curve_effective_learning_rate_falls_by_the_closed_form():
    opt, theta = ground_truth_optimizers()["rmsprop"]
    p = _p("rmsprop")
    out = s_curve(opt, theta, np.zeros(2), g_max=2.0, num=21)
    assert bool(out["converged"].all())
    g = out["g_star"]
    np.testing.assert_allclose(out["fixed_point"].isel(unit=0), g**2, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out["fixed_point"].isel(unit=1), g, rtol=1e-6, atol=1e-8)
    expected = p["learning_rate"] / np.sqrt(p["decay"] * g**2 + p["eps"])
    np.testing.assert_allclose(out["effective_learning_rate"], expected, rtol=1e-5)
    for arm in ("negative", "positive"):
        assert np.all(np.diff(out["effective_learning_rate"].sel(arm=arm).values) < 0)


def test_momentum_s_curve_is_linear_and_rate_constant():
    opt, theta = ground_truth_optimizers()["momentum"]
    p = _p("momentum")
    out = s_curve(opt, theta, np.zeros(1), g_max=1.0, num=5)
    np.testing.assert_allclose(out["fixed_point"].isel(unit=0), out["g_star"] / (1 - p["beta"]), atol=1e-7)
    np.testing.assert_allclose(out["effective_learning_rate"], p["learning_rate"], rtol=1e-12)


def test_gradient_range_from_histogram():
    edges = np.array([0.0, 1.0, 2.0, 4.0])
    hist = xr.DataArray([[10, 30, 60]], dims=("tensor", "bin"))
    assert gradient_range(hist, edges, 0.1) == pytest.approx(1.0)
    assert gradient_range(hist, edges, 0.4) == pytest.approx(2.0)
    assert gradient_range(hist, edges, 0.7) == pytest.approx(3.0)
