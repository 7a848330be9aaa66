"""Linearisation at fixed points: modes, β_i and α_i, recovered exactly on known optimizers."""

import jax
import numpy as np
import pytest
import xarray as xr
from _stores import GT, open_store

from lopt_trace.analysis import (
    fixed_points,
    linearization_error,
    linearize,
    modes,
    rebuild,
    run_group,
    sample_states,
)
from lopt_trace.analysis.sampling import recorded_pairs
from lopt_trace.optimizers import LearnedGRU


@pytest.fixture(scope="module")
def tree(ground_truth_store):
    return open_store(ground_truth_store)


def _main_fixed_point(tree, name, n=32):
    opt, theta = rebuild(tree, name)
    starts = sample_states(run_group(tree, name)["state"], n)
    fps = fixed_points(opt, theta, starts).isel(g_star=0)
    return opt, theta, fps["fixed_point_state"].isel(fixed_point=[0]), fps


def test_momentum_single_mode_lambda_beta_alpha_learning_rate(tree):
    opt, theta, fp, fps = _main_fixed_point(tree, "momentum")
    assert int(fps["count"][0]) == 32 and int((fps["count"] > 0).sum()) == 1  # one fixed point
    lin = linearize(opt, theta, fp)
    assert lin.sizes["mode"] == 1
    beta, alpha = float(np.float32(GT["momentum"]["beta"])), float(np.float32(GT["momentum"]["learning_rate"]))
    assert float(lin["eigenvalue_real"][0, 0]) == pytest.approx(beta, rel=1e-12)
    assert float(lin["eigenvalue_imag"][0, 0]) == 0.0
    assert float(lin["beta"][0, 0]) == pytest.approx(beta, rel=1e-12)
    assert float(lin["alpha"][0, 0]) == pytest.approx(alpha, rel=1e-12)
    assert float(lin["timescale"][0, 0]) == pytest.approx(-1 / np.log(beta), rel=1e-12)
    # heavy ball is linear: the one-step linearisation error along the trajectories vanishes
    h, g = recorded_pairs(run_group(tree, "momentum"), 128)
    err = linearization_error(opt, theta, h, g, fp.isel(fixed_point=0))
    assert err.sizes["sample"] > 100 and float(err.max()) < 1e-8  # zero up to h*'s tolerance


def test_hand_built_momentum_gru_analysed_to_its_beta_and_alpha(tree):
    opt, theta, fp, _fps = _main_fixed_point(tree, "learned")
    assert isinstance(opt, LearnedGRU) and opt.units == 2
    lin = linearize(opt, theta, fp)
    beta, alpha = GT["gru"]["beta"], GT["gru"]["learning_rate"]
    np.testing.assert_allclose(lin["beta"].isel(fixed_point=0), beta, rtol=1e-6)  # both modes
    # the α_i sum to α over the modes (all at |λ| = β); the GRU's readout sees one of them
    assert float(lin["alpha"].isel(fixed_point=0).sum()) == pytest.approx(alpha, rel=1e-5)
    assert float(lin["effective_learning_rate"][0]) == pytest.approx(alpha, rel=1e-5)
    # nearly linear for the recorded gradients (input scale 1e-3), but not exactly
    h, g = recorded_pairs(run_group(tree, "learned"), 128)
    err = linearization_error(opt, theta, h, g, fp.isel(fixed_point=0))
    assert 0 < float(err.median()) < 1e-3


def test_sgd_mode_is_memoryless(tree):
    opt, theta, fp, _ = _main_fixed_point(tree, "sgd", 8)
    lin = linearize(opt, theta, fp)
    assert float(lin["beta"][0, 0]) == 0.0 and float(lin["timescale"][0, 0]) == 0.0
    assert float(lin["alpha"][0, 0]) == pytest.approx(float(np.float32(GT["sgd"]["learning_rate"])), rel=1e-12)


def test_modes_left_right_normalisation_on_a_random_system():
    rng = np.random.default_rng(0)
    J = rng.normal(size=(6, 6)) * 0.4
    b, w = rng.normal(size=6), rng.normal(size=6)
    lam, right, left, alpha = modes(J, b, w)
    assert np.all(np.diff(np.abs(lam)) <= 1e-12)  # sorted by decreasing |λ|
    np.testing.assert_allclose(left.conj().T @ right, np.eye(6), atol=1e-10)  # biorthonormal
    np.testing.assert_allclose(right @ np.diag(lam) @ left.conj().T, J, atol=1e-10)
    np.testing.assert_allclose(alpha.sum(), -w @ b, rtol=1e-10)  # Σ α_i = effective LR
    # the modal impulse response equals the true one: Δx_k = Σ_i −α_i λ_i^k
    for k in range(4):
        true = w @ np.linalg.matrix_power(J, k) @ b
        np.testing.assert_allclose(np.sum(-alpha * lam**k).real, true, rtol=1e-9, atol=1e-12)
    assert np.iscomplexobj(lam) and np.any(np.abs(lam.imag) > 0)  # complex pairs are handled


def test_linearize_nan_rows_and_gru_modes_match_numpy():
    gru = LearnedGRU(units=5)
    theta = gru.init_theta(jax.random.PRNGKey(2))
    pts = xr.DataArray(np.vstack([np.random.default_rng(1).normal(size=(1, 5)) * 0.3,
                                  np.full((1, 5), np.nan)]),
                       dims=("fixed_point", "unit"), coords={"unit": list(gru.state_names)})
    lin = linearize(gru, theta, pts)
    J = lin["jacobian"].isel(fixed_point=0).values
    ref = np.sort(np.abs(np.linalg.eigvals(J)))[::-1]
    np.testing.assert_allclose(lin["beta"].isel(fixed_point=0), ref, rtol=1e-10)
    assert np.isnan(lin["beta"].isel(fixed_point=1)).all()
