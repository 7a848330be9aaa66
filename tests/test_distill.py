"""``lopt-trace distill``: an optimizer built from the analyses, against ground truth.

The store is the analysis tests' linear-regression store (``tests/_stores.py``, recorded by the
real recorder): its ``learned`` group is the hand-built momentum GRU (β = 0.7, α = 0.04) and its
``momentum`` group heavy-ball momentum (β = 0.8, α = 0.05). Distilling the GRU must give back
momentum with its β and α, and the GRU's loss curves; distilling the momentum group must give
back that momentum, step for step.
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stores import GT, make_store

from lopt_trace import recipes_loader
from lopt_trace.analysis import read_result
from lopt_trace.cli import main
from lopt_trace.distill import build, distill, distilled_from_result, summary
from lopt_trace.distill.build import fit_heavy_ball, tanh_onset
from lopt_trace.distill.evaluate import recovered
from lopt_trace.optimizers import Distilled, make_optimizer
from lopt_trace.optimizers.distilled import MECHANISMS, neutral, soft_clip
from lopt_trace.optimizers.io import load_optimizer
from lopt_trace.store import open_store
from lopt_trace.tasks import get_task

#: cheap options for the recipes distill reads (the tests check distill, not the analyses)
CHEAP = {"momentum": {"n_starts": 8, "max_iter": 40, "n_error": 32, "forward_steps": 100},
         "schedule": {}, "clipping": {"n_states": 3, "num": 401, "curve_points": 81},
         "adaptation": {"num": 11, "max_iter": 60}}
PROBLEMS = 8


def _analysed(store, path, optimizer):
    shutil.copytree(store, path)
    for recipe, params in CHEAP.items():
        recipes_loader.load(recipe).run(str(path), optimizer=optimizer, **params)
    return str(path)


@pytest.fixture(scope="module")
def gru_store(tmp_path_factory, ground_truth_store):
    """The ground-truth store with the four analyses of ``learned`` (the momentum GRU)."""
    return _analysed(ground_truth_store, tmp_path_factory.mktemp("distill") / "gru.zarr", "learned")


@pytest.fixture(scope="module")
def gru_result(gru_store, tmp_path_factory):
    """``lopt-trace distill`` on it (written to the store), and the distilled optimizer file."""
    saved = tmp_path_factory.mktemp("distill-file") / "distilled.zarr"
    assert main(["distill", gru_store, "--problems", str(PROBLEMS), "--bootstrap", "200", "--no-progress",
                 "--save", str(saved)]) == 0
    return read_result(gru_store, "distill"), str(saved)


# -- the optimizer -------------------------------------------------------------------------------
def test_default_distilled_optimizer_is_heavy_ball_momentum():
    opt = Distilled()
    theta = opt.init_theta()
    mom = make_optimizer("momentum")
    g = jax.random.normal(jax.random.PRNGKey(0), (30, 5))
    h, hm = opt.init_state(theta, 5), mom.init_state(theta, 5)
    for gk in g:
        h, dx = opt.step(theta, h, gk)
        hm, dm = mom.step({"learning_rate": 0.1, "beta": 0.9}, hm, gk)
        np.testing.assert_allclose(dx, dm, rtol=1e-5, atol=1e-7)


def test_switches_equal_neutral_theta_and_round_trip_through_config():
    theta = {**Distilled().init_theta(), "beta": jnp.float32(0.6), "fast_learning_rate": jnp.float32(0.02),
             "schedule": jnp.linspace(1.5, 1.0, 10), "clip_threshold": jnp.array([0.3, 0.5]),
             "adaptation_gradient": jnp.array([-1.0, 0.0, 1.0]), "adaptation_ratio": jnp.array([0.5, 1.0, 0.7]),
             "norm_scale": jnp.float32(0.4)}
    g = 2 * jax.random.normal(jax.random.PRNGKey(1), (12, 7))
    full = Distilled(input_norm=0.99)
    for mechanism in MECHANISMS:
        off = make_optimizer({**full.config(), mechanism: False})
        assert make_optimizer(off.config()).config() == off.config() and not off.switches[mechanism]
        h1, h2 = off.init_state(theta, 7), full.init_state(theta, 7)
        for gk in g:
            h1, d1 = off.step(theta, h1, gk)
            h2, d2 = full.step(neutral(theta, mechanism), h2, gk)
            np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-8, err_msg=mechanism)
    assert full.state_names[-1] == "gmax" and set(full.held_state) == {"count", "gmax"}


def test_soft_clip_and_the_fits():
    tau = jnp.array([0.5, 2.0])
    g = jnp.array([-10.0, -0.5, 0.0, 0.5, 10.0])
    np.testing.assert_allclose(soft_clip(g, tau), [-0.5 * np.tanh(20), -0.5 * np.tanh(1), 0, 2 * np.tanh(0.25),
                                                   2 * np.tanh(5)], rtol=1e-6)
    assert float(jax.grad(lambda x: soft_clip(x, tau))(0.0)) == 1.0
    np.testing.assert_array_equal(soft_clip(g, jnp.array([jnp.inf, jnp.inf])), g)
    u = tanh_onset(0.1)
    assert abs(np.tanh(u) / u - 0.9) < 1e-12
    k = np.arange(300)
    alpha, beta, err = fit_heavy_ball(0.3 * 0.85 ** k)
    assert abs(beta - 0.85) < 1e-6 and abs(alpha - 0.3) < 1e-6 and err < 1e-6


def test_recovered_fraction_and_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.0, 50)
    meta = np.stack([base, base + 0.2, base + 0.1])  # learned, momentum, half-way
    rec = recovered(meta, 0, 1, 500)
    np.testing.assert_allclose(rec.value, [1.0, 0.0, 0.5], atol=1e-12)
    assert rec.low[2] <= 0.5 <= rec.high[2] and rec.sem[2] < 1e-9  # paired: same problems, no spread


# -- ground truth -------------------------------------------------------------------------------
def test_distilling_the_momentum_gru_gives_momentum_and_its_curves(gru_result):
    ds, _ = gru_result
    d = ds.attrs["distilled"]
    beta, alpha = GT["gru"]["beta"], GT["gru"]["learning_rate"]
    assert abs(d["beta"] - beta) < 1e-4 and abs(d["learning_rate"] - alpha) < 1e-4 * alpha
    assert abs(d["fast_learning_rate"]) < 1e-4 * alpha and d["momentum_fit_error"] < 1e-4
    assert d["clip_threshold"] == [np.inf, np.inf]  # no saturation in the gradients' range
    assert abs(d["schedule_min"] - 1) < 1e-4 and abs(d["schedule_max"] - 1) < 1e-4
    assert abs(d["adaptation_min"] - 1) < 1e-3 and abs(d["adaptation_max"] - 1) < 1e-3
    meta = ds["meta_objective"]
    np.testing.assert_allclose(meta.sel(variant="distilled"), meta.sel(variant="learned"), rtol=1e-3)
    assert float(ds["curve_gap"].sel(variant="distilled")) < 1e-3 * float(meta.sel(variant="learned").mean())
    assert abs(ds.attrs["recovered"] - 1) < 0.05  # ~100% of its behaviour
    # the store's own runs chose where the clip acts (no clip here: either gives the same curves)
    assert d["clip_at"] in ("gradient", "update")
    assert set(ds["variant"].values) >= {"learned", "tuned_momentum", "distilled", "no_mechanisms",
                                         *(f"no_{m}" for m in ("momentum", "schedule", "clipping", "adaptation"))}
    assert ds["loss"].dims == ("variant", "problem", "loss_step") and ds.sizes["problem"] == PROBLEMS
    assert int(ds["problem"].min()) >= 1_001_000_000  # held out: not the store's runs
    line = summary(ds)
    assert line.startswith("distill: the distilled optimizer recovers") and "\n" not in line


@pytest.mark.slow
def test_distilling_tuned_momentum_gives_momentum_back(tmp_path, ground_truth_store):
    store = _analysed(ground_truth_store, tmp_path / "mom.zarr", "momentum")
    ds = distill(store, "momentum", problems=4, bootstrap=100, write=False)
    d = ds.attrs["distilled"]
    assert abs(d["beta"] - GT["momentum"]["beta"]) < 1e-6
    assert abs(d["learning_rate"] - GT["momentum"]["learning_rate"]) < 1e-6 and abs(d["fast_learning_rate"]) < 1e-7
    np.testing.assert_allclose(ds["loss"].sel(variant="distilled"), ds["loss"].sel(variant="tuned_momentum"),
                               rtol=1e-4)
    np.testing.assert_allclose(ds["loss"].sel(variant="distilled"), ds["loss"].sel(variant="learned"), rtol=1e-4)


@pytest.mark.slow
def test_the_distilled_optimizer_is_recorded_and_analysed_like_any_other(gru_result, tmp_path):
    ds, saved = gru_result
    opt, theta = distilled_from_result(ds)
    loaded = load_optimizer(saved)
    assert loaded.optimizer.config() == opt.config() == make_optimizer(opt.config()).config()
    assert all(np.array_equal(loaded.theta[k], theta[k]) for k in theta)
    path = make_store(tmp_path / "rec.zarr", get_task("linear_regression", steps=40),
                      {"distilled": (loaded.optimizer, loaded.theta)}, runs=2)
    res = recipes_loader.load("momentum").run(path, **CHEAP["momentum"])
    assert abs(res.attrs["slowest_beta"] - GT["gru"]["beta"]) < 1e-4
    assert abs(res.attrs["slowest_alpha"] - GT["gru"]["learning_rate"]) < 1e-3 * GT["gru"]["learning_rate"]


def test_the_result_is_in_the_store_with_provenance(gru_store, gru_result):
    ds, _ = gru_result
    tree = open_store(gru_store)
    assert "distill" in tree["analysis"].children
    assert ds.attrs["recipe"] == "distill" and ds.attrs["parameters"]["problems"] == PROBLEMS
    for var in ds.data_vars.values():
        assert "long_name" in var.attrs and "units" in var.attrs
    assert recipes_loader.load("distill").summary(ds) == summary(ds)
    assert "distill" not in recipes_loader.for_all() and "distill" in recipes_loader.available()
    rebuilt = build(tree, "learned")  # the same θ from the same analyses
    np.testing.assert_array_equal(rebuilt.theta["schedule"], ds["theta_schedule"].values)


@pytest.mark.slow
def test_dashboard_tab_and_report_figure(gru_store, gru_result):
    import holoviews as hv

    from lopt_trace.dashboard import StoreView
    from lopt_trace.dashboard import distill as tab
    from lopt_trace.report import figure_9

    view = StoreView(gru_store)
    ds = view.analysis("distill")
    bars = tab.fraction_plot(ds)
    (drawn,) = [e for e in bars.values() if isinstance(e, hv.Bars)]
    keep = [i for i, v in enumerate(ds["variant"].values) if str(v) not in ("learned", "tuned_momentum")]
    assert list(drawn.dimension_values(0)) == [str(v) for v in ds["variant"].values[keep]]
    np.testing.assert_allclose(drawn.dimension_values(1), np.clip(100 * ds["recovered"].values[keep], -250, 250))
    assert len(tab.loss_plot(ds)) >= 3 and len(tab.parts_plots(ds)) == 3
    assert "recovers" in tab.key_numbers(ds)
    fig = figure_9(view)
    assert fig.ok and fig.summary == summary(ds) and fig.numbers


# -- errors ---------------------------------------------------------------------------------------
def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lopt-trace distill: error:"), err
    for fragment in fragments:
        assert fragment in err, err


def test_cli_errors_are_one_line(capsys, tmp_path, gru_store, ground_truth_store):
    bare = str(tmp_path / "bare.zarr")
    shutil.copytree(ground_truth_store, bare)
    _one_line_error(capsys, ["distill", bare, "--no-progress"], "/analysis/momentum",
                    f"lopt-trace analyze all {bare} --optimizer learned")
    _one_line_error(capsys, ["distill", gru_store, "--optimizer", "sgd", "--no-progress"],
                    "for another optimizer group", "--optimizer sgd")
    _one_line_error(capsys, ["distill", gru_store, "--optimizer", "lion", "--no-progress"], "no optimizer 'lion'")
    _one_line_error(capsys, ["distill", str(tmp_path / "nothing.zarr"), "--no-progress"], "nothing.zarr")
    _one_line_error(capsys, ["distill", gru_store, "--seed-base", "0", "--no-progress"], "--seed-base")
    _one_line_error(capsys, ["distill", gru_store, "--problems", "1", "--no-progress"], "at least 2 problems")
    with pytest.raises(SystemExit) as exit_:  # argparse: one line too
        main(["distill", gru_store, "--problems", "0"])
    assert exit_.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
