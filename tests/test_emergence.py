"""The ``emergence`` recipe: mechanisms along the meta-training history, against ground truth.

The store is recorded by the real recorder with a learned optimizer whose "meta-training history"
holds hand-built momentum GRUs (:func:`lopt_trace.optimizers.momentum_gru`): β, α and the input
scale move from checkpoint to checkpoint, so each checkpoint's answers are known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.optimize import brentq

from lopt_trace import recipes_loader
from lopt_trace.analysis import checkpoint_objective, halfway, read_result, replay
from lopt_trace.analysis.checkpoints import replay_params, stack_thetas
from lopt_trace.cli import main
from lopt_trace.metatrain import history_dataset
from lopt_trace.optimizers import LearnedGRU, momentum_gru
from lopt_trace.recorder import OptimizerEntry, RecordConfig, record
from lopt_trace.store import open_store
from lopt_trace.tasks import get_task

#: per checkpoint: β, Σα and the factor k on the candidate's input weight (effective input scale k·s)
BETAS, ALPHAS, GAINS = (0.3, 0.7, 0.9), (0.02, 0.05, 0.08), (1.0, 2.0, 4.0)
CHECKPOINTS = (10, 20, 30)
VALIDATION = (0.5, 0.3, 0.2)
INPUT_SCALE = 2.0
TOL = 0.1


def _gru(beta, alpha, gain):
    """The momentum GRU with ∂F/∂h = β·I, Σα = α, and the candidate tanh(gain·s·g)."""
    opt, theta = momentum_gru(beta, alpha / gain, units=2, input_scale=INPUT_SCALE)
    theta = {k: np.asarray(v, np.float32) for k, v in theta.items()}
    theta["W_h"] = (theta["W_h"] * gain).astype(np.float32)
    return opt, theta


def _history(thetas, validation=VALIDATION):
    n = CHECKPOINTS[-1]
    records = {"meta_loss": list(np.linspace(1.0, 0.1, n)), "meta_grad_norm": [1.0] * n,
               "learning_rate": [1e-3] * n, "skipped": [False] * n}
    return history_dataset(records, thetas, list(CHECKPOINTS), list(validation) if validation else None,
                           selected=CHECKPOINTS[-1] if validation else None)


def _record(path, task, entries, **cfg):
    record(task, entries, RecordConfig(**cfg), str(path), overwrite=True, progress=False)
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Linear regression, 3 runs of 30 steps: ``learned`` is the last checkpoint's GRU, its
    history the three checkpoints."""
    grus = [_gru(b, a, k) for b, a, k in zip(BETAS, ALPHAS, GAINS)]
    opt, theta = grus[-1]
    entries = [OptimizerEntry("learned", opt, theta, "test", "momentum GRUs",
                              meta_train=_history([t for _, t in grus]))]
    return _record(tmp_path_factory.mktemp("emergence") / "lr.zarr", get_task("linear_regression", steps=30),
                   entries, runs=3)


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """The same kind of store without a meta-training history (a few steps)."""
    opt, theta = _gru(0.5, 0.05, 1.0)
    return _record(tmp_path_factory.mktemp("bare") / "bare.zarr", get_task("linear_regression", steps=4),
                   [OptimizerEntry("learned", opt, theta, "test", "no history")], runs=1)


@pytest.fixture(scope="module")
def result(store):
    return recipes_loader.load("emergence").run(store, n_starts=16, num=11)


def _metric(ds, name):
    return recipes_loader.load("emergence").metric(ds, name)


def test_recovers_each_checkpoints_momentum(result):
    assert list(result["checkpoint"].values) == list(CHECKPOINTS)
    np.testing.assert_allclose(_metric(result, "momentum_beta"), BETAS, rtol=1e-6)
    np.testing.assert_allclose(_metric(result, "momentum_alpha"), ALPHAS, rtol=1e-6)
    np.testing.assert_allclose(_metric(result, "total_alpha"), ALPHAS, rtol=1e-6)
    np.testing.assert_allclose(_metric(result, "momentum_timescale"), -1 / np.log(BETAS), rtol=1e-5)
    assert list(_metric(result, "fixed_points")) == [1, 1, 1]
    assert list(_metric(result, "fixed_point_found")) == [1, 1, 1]
    np.testing.assert_allclose(result["fixed_point_state"].values, 0.0, atol=1e-9)  # h* = 0


def test_recovers_each_checkpoints_clipping_schedule_and_adaptation(result):
    # Δx(g) ∝ tanh(k·s·g): 10% below linear where tanh(u)/u = 0.9, at |g| = u/(k·s)
    u = brentq(lambda x: 1 - np.tanh(x) / x - TOL, 1e-3, 5.0)
    thr = _metric(result, "clip_threshold")
    expected = u / (np.array(GAINS) * INPUT_SCALE)
    g_max = result.attrs["clip_g_max"]
    for t, e in zip(thr, expected):
        if e < g_max:
            assert t == pytest.approx(e, rel=1e-6)
        else:
            assert np.isinf(t)
    assert np.isfinite(thr[-1]), "the store's own gradients must reach the last checkpoint's saturation"
    assert np.all(np.diff(_metric(result, "clip_fraction_beyond")) >= 0)  # later checkpoints clip more
    np.testing.assert_allclose(_metric(result, "eta_initial"), ALPHAS, rtol=1e-6)
    # η does not depend on the state (U = 0): no schedule and no adaptation, exactly
    for name in ("schedule_peak_ratio", "schedule_final_ratio", "adaptation_ratio_positive",
                 "adaptation_ratio_negative", "adaptation_converged"):
        np.testing.assert_allclose(_metric(result, name), 1.0, rtol=1e-9, err_msg=name)
    assert "eta_spread_tensors" not in result["metric"].values  # one tensor: no layer metrics


def test_meta_objective_attrs_summary_and_plot(result, store):
    np.testing.assert_allclose(_metric(result, "meta_objective"), VALIDATION)
    np.testing.assert_allclose(_metric(result, "validation"), VALIDATION)
    a = result.attrs
    assert a["optimizer"] == "learned" and a["store_checkpoint"] == 30 and a["selected_checkpoint"] == 30
    assert a["replayed"] and a["n_checkpoints"] == 3 and a["has_validation"]
    # more than half of β's change (0.3 → 0.9) is made by the second checkpoint; of the objective's too
    assert a["halfway"]["momentum"] == 20 and a["halfway"]["meta-objective"] == 20
    assert a["halfway"]["schedule"] is None  # no change at all
    # written with provenance; the table has long names and units; it reads back whole
    back = read_result(store, "emergence")
    assert back.attrs["recipe"] == "emergence" and back["metrics"].dims == ("checkpoint", "metric")
    assert len(back["metric_long_name"]) == back.sizes["metric"]
    np.testing.assert_allclose(back["metrics"].values, result["metrics"].values)
    mod = recipes_loader.load("emergence")
    line = mod.summary(back)
    assert line.startswith("emergence: 3 checkpoints of learned (iterations 10–30)")
    assert "momentum |λ| 0.3 → 0.9 (half-way by iteration 20)" in line and "\n" not in line
    # the plot draws the result: the meta-objective at each checkpoint, one panel per mechanism
    plot = mod.plot(back)
    objective = [c for c in plot.values()[0].values() if type(c).__name__ == "Curve"
                 and c.label.startswith("checkpoints")]
    assert len(objective) == 1
    np.testing.assert_array_equal(objective[0].dimension_values(0), back["checkpoint"].values)
    np.testing.assert_allclose(objective[0].dimension_values(1), _metric(back, "meta_objective"))
    assert len(plot) >= 4


def test_replay_reproduces_the_recorded_states(store):
    """For the recorded θ, replaying the recorded gradients gives back the recorded states."""
    tree = open_store(store)
    ds = tree["runs/learned"].to_dataset(inherit=False)
    thetas = stack_thetas(tree["meta_train"].to_dataset(inherit=False))
    last = {k: v[-1:] for k, v in thetas.items()}
    params = replay_params(ds, 16)
    out = replay(LearnedGRU(units=2, input_scale=INPUT_SCALE, output_scale=1.0), last, ds, params, 20, seed=1)
    rec = ds["state"].isel(param=params).transpose("run", "step", "param", "unit")
    np.testing.assert_allclose(out["final_state"].isel(checkpoint=0).values, rec.isel(step=-1).values,
                               rtol=1e-5, atol=1e-9)
    picks = rec.sel(run=xr.DataArray(out["sample_run"].values, dims="s"),
                    step=xr.DataArray(out["sample_step"].values, dims="s"),
                    param=xr.DataArray(np.searchsorted(params, out["sample_param"].values), dims="s"))
    np.testing.assert_allclose(out["sampled_state"].isel(checkpoint=0).values, picks.values, rtol=1e-5, atol=1e-9)


def test_checkpoint_objective_without_validation_and_halfway():
    ds = _history([{"a": np.zeros(1)}] * 3, validation=None)
    obj = checkpoint_objective(ds)
    loss = np.linspace(1.0, 0.1, 30)  # iteration i's meta-loss; checkpoints at 10, 20, 30
    np.testing.assert_allclose(obj["meta_objective"].values,
                               [loss[0:10].mean(), loss[10:20].mean(), loss[20:30].mean()])
    assert "validation" not in obj
    assert halfway([0, 10, 20, 30], [0.0, 0.1, 0.6, 1.0]) == 20
    assert halfway([0, 10, 20], [1.0, 0.2, 0.0]) == 10  # falling
    assert halfway([0, 10], [0.5, 0.5]) is None and halfway([0, 10], [np.nan, 1.0]) is None
    assert halfway([0, 10, 20], [0.868, 0.6, 0.8681]) is None  # wandered off and came back


def test_a_store_without_history_is_one_clear_line(store, bare, capsys):
    assert main(["analyze", "emergence", bare, "--no-write"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no meta-training history" in err and "lopt-trace train" in err
    assert recipes_loader.load("emergence").not_applicable(open_store(bare)) is not None
    assert recipes_loader.load("emergence").not_applicable(open_store(store)) is None
    assert main(["analyze", "emergence", store, "--optimizer", "sgd", "--no-write"]) == 2
    assert "history belongs to 'learned', not 'sgd'" in capsys.readouterr().err


def test_dashboard_tab_and_report_figure(result, store, bare):
    from lopt_trace.dashboard import emergence as tab
    from lopt_trace.dashboard.data import StoreView
    from lopt_trace.report import figure_8

    view = StoreView(store)
    ds = view.analysis("emergence")
    np.testing.assert_allclose(tab.progress(ds, "momentum_beta"), [0, (0.7 - 0.3) / 0.6, 1], rtol=1e-6)
    assert np.isnan(tab.progress(ds, "schedule_peak_ratio")).all()  # no change: not drawn
    built = tab.build(view)
    built.get_root()  # renders to Bokeh models
    text = " ".join(str(getattr(o, "object", "")) for o in built.select())
    assert "3 checkpoints" in text and "momentum **20**" in text
    assert len(tab.metric_plots(ds)) >= 4
    fig = figure_8(view)
    assert fig.ok and ("momentum |λ|", "0.3 → 0.9, half-way by iteration 20") in fig.numbers
    # a store without a history: the tab and the figure say so (and the report does not try it)
    bare_view = StoreView(bare)
    note = tab.build(bare_view)
    assert "no meta-training history" in note.object
    fig = figure_8(bare_view)
    assert not fig.ok and "no meta-training history" in fig.problem


def test_tensor_mean_states_groups_replayed_parameters_by_tensor():
    from lopt_trace.analysis.checkpoints import tensor_mean_states

    final = np.arange(2 * 3 * 4 * 1, dtype=float).reshape(2, 3, 4, 1)  # (checkpoint, run, param, unit)
    played = xr.Dataset({"final_state": (("checkpoint", "run", "param", "unit"), final)},
                        coords={"param_tensor": ("param", np.array(["b", "a", "b", "a"], dtype=object))})
    ds = xr.Dataset(coords={"tensor": ["a", "b", "c"], "tensor_kind": ("tensor", ["weight", "bias", "weight"]),
                            "tensor_size": ("tensor", [10, 2, 5]), "tensor_layer": ("tensor", [0, 0, 1])})
    out = tensor_mean_states(played, ds)
    assert list(out["tensor"].values) == ["a", "b"]  # the store's order; "c" was not replayed
    assert list(out["tensor_kind"].values) == ["weight", "bias"] and list(out["tensor_size"].values) == [10, 2]
    np.testing.assert_allclose(out.sel(tensor="a").values[..., 0], final[:, :, [1, 3], 0].mean((1, 2)))
    np.testing.assert_allclose(out.sel(tensor="b").values[..., 0], final[:, :, [0, 2], 0].mean((1, 2)))


@pytest.mark.slow
def test_layer_metrics_on_a_layered_task(tmp_path):
    """Two moons (four layers): for the recorded θ, η per tensor is η at the mean recorded state of
    its stored parameters after the last step; another checkpoint gets its own."""
    import jax

    from lopt_trace.analysis import effective_learning_rate

    gru = LearnedGRU(units=4, output_scale=0.05)
    theta = {k: np.asarray(v, np.float32) for k, v in gru.init_theta(jax.random.PRNGKey(3)).items()}
    theta["readout"] = -np.abs(theta["W_h"]).astype(np.float32)
    theta["b_h"] = np.float32(0.3) * np.ones(4, np.float32)
    other = {**theta, "U_z": theta["U_z"] * np.float32(0.5)}
    history = history_dataset({"meta_loss": [0.5, 0.4], "meta_grad_norm": [1.0] * 2, "learning_rate": [1e-3] * 2,
                               "skipped": [False] * 2}, [other, theta], [1, 2])
    store = _record(tmp_path / "tm.zarr", get_task("two_moons", steps=10, n_samples=64),
                    [OptimizerEntry("learned", gru, theta, "test", "random GRU", meta_train=history)],
                    runs=2, params=3)
    res = recipes_loader.load("emergence").run(store, n_starts=8, num=5, clip_num=201)
    assert res.attrs["store_checkpoint"] == 2 and res.attrs["layers_note"] == ""
    ds = open_store(store)["runs/learned"].to_dataset(inherit=False)
    last = ds["state"].isel(step=-1).astype(np.float64).compute()
    owner = np.asarray([str(t) for t in ds["param_tensor"].values])
    tensors = [str(t) for t in res["tensor"].values]
    means = xr.concat([last.isel(param=np.flatnonzero(owner == t)).mean(["run", "param"]) for t in tensors],
                      dim="tensor")
    expected = effective_learning_rate(gru, theta, means.drop_vars([c for c in means.coords if c != "unit"]))
    got = res["tensor_effective_learning_rate"].sel(checkpoint=2).values
    np.testing.assert_allclose(got, expected.values, rtol=1e-4)
    spread = _metric(res, "eta_spread_tensors")
    np.testing.assert_allclose(spread[-1], np.abs(got).max() / np.abs(got).min(), rtol=1e-12)
    assert np.all(spread >= 1) and np.isfinite(_metric(res, "eta_bias_weight_ratio")).all()
    assert not np.allclose(res["tensor_effective_learning_rate"].values[0], got)  # the other θ differs
