"""Unit tests of the dashboard panels and the HTML report: each panel is built from a small store
and its plotted data is checked against the store (curve counts, values, axis ranges)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lopt_trace.dashboard import StoreView, build_app
from lopt_trace.dashboard import gradients, linear_dynamics, overview, state_space, update_functions
from lopt_trace.dashboard._common import hv


@pytest.fixture(scope="module")
def full(full_store_and_failures):
    path, failed = full_store_and_failures
    assert not failed, failed  # every recipe ran
    return StoreView(path)


@pytest.fixture(scope="module")
def base(baselines_store):
    return StoreView(baselines_store)


def elements(obj, kind):
    """The HoloViews elements of type ``kind`` (a name) in an Overlay or Layout, recursively."""
    if type(obj).__name__ == kind:
        return [obj]
    if hasattr(obj, "values") and callable(obj.values) and type(obj).__name__ in ("Overlay", "Layout",
                                                                                  "NdOverlay"):
        return [e for v in obj.values() for e in elements(v, kind)]
    return []


def ranges(plot):
    """(x_start, x_end, y_start, y_end) of a rendered Bokeh figure."""
    fig = hv().render(plot, backend="bokeh")
    return fig.x_range.start, fig.x_range.end, fig.y_range.start, fig.y_range.end


# -- Overview --------------------------------------------------------------------------------------
def test_overview_loss_curves_match_the_store(full):
    data = overview.loss_data(full)
    names = full.optimizers
    assert list(data["optimizer"].values) == names == ["learned", "sgd", "momentum"]
    assert data.attrs["source"] == "analysis/performance"
    for name in names:
        loss = full.group(name)["loss"].values.astype(float)
        np.testing.assert_allclose(data["loss_mean"].sel(optimizer=name).values, loss.mean(0), rtol=1e-6)
        np.testing.assert_allclose(data["loss_sem"].sel(optimizer=name).values,
                                   loss.std(0, ddof=1) / np.sqrt(loss.shape[0]), rtol=1e-5)
    plot = overview.loss_plot(data, logy=True)
    curves, spreads = elements(plot, "Curve"), elements(plot, "Spread")
    assert len(curves) == len(spreads) == 3
    assert [c.label for c in curves] == names
    x0, x1, y0, y1 = ranges(plot)
    steps = data["loss_step"].values
    assert x0 <= steps.min() and x1 >= steps.max() and x1 - x0 <= 1.2 * (steps.max() - steps.min())
    lo = (data["loss_mean"] - data["loss_sem"]).min().item()
    assert 0 < y0 <= data["loss_mean"].min().item() and y1 >= (data["loss_mean"] + data["loss_sem"]).max().item()
    assert lo > 0 or y0 > 0  # a log axis never starts at or below zero
    assert len(elements(overview.loss_plot(data.sel(optimizer=["sgd"]), False), "Curve")) == 1
    assert "meta_objective_mean" in data
    bars = overview.meta_objective_plot(data)
    np.testing.assert_allclose(bars.dimension_values(1), data["meta_objective_mean"].values)


def test_overview_of_a_baselines_store_computes_losses_and_offers_the_recipe(base):
    data = overview.loss_data(base)
    assert data.attrs["source"] == "loss arrays" and "meta_objective_mean" not in data
    np.testing.assert_allclose(data["loss_mean"].sel(optimizer="sgd").values,
                               base.group("sgd")["loss"].values.mean(0), rtol=1e-6)
    summary = overview.store_summary(base)
    assert "sgd" in summary["optimizers"] and "learned" not in summary["optimizers"]
    assert summary["analyses"].startswith("none")
    tab = overview.build(base)
    missing = [o for o in tab.select() if getattr(o, "name", "") == "missing-performance"]
    assert missing, "the Overview should offer to compute /analysis/performance"
    text = " ".join(str(getattr(o, "object", "")) for o in missing[0].select())
    assert f"lopt-trace analyze performance {base.path}" in text


# -- State space -----------------------------------------------------------------------------------
def test_state_space_projects_every_recorded_state(full):
    pcs, tv, source, df, fixed, h0, k = state_space.prepared(full, "learned")
    ds = full.group("learned")
    assert source == "from /analysis/momentum" and k == 3
    assert len(df) == ds.sizes["run"] * ds.sizes["step"] * ds.sizes["param"]
    assert df["trajectory"].nunique() == ds.sizes["run"] * ds.sizes["param"]
    # the projection is (state - mean) · components
    state = ds["state"].transpose("run", "step", "param", "unit").values.astype(float)
    manual = (state - pcs["pca_mean"].values) @ pcs["components"].values[:2].T
    np.testing.assert_allclose(df["PC 1"].values, manual[..., 0].ravel(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(df["PC 2"].values, manual[..., 1].ravel(), rtol=1e-4, atol=1e-5)
    assert fixed["g0"].shape == (full.analysis("momentum").sizes["fixed_point"], k)
    assert set(fixed["sweep"]) == {"negative", "positive"}
    np.testing.assert_allclose(tv.values, full.analysis("momentum")["total_variance"].values)

    plot = state_space.trajectory_plot(df, "tensor", fixed=fixed, h0=h0)
    paths = elements(plot, "Path")
    assert len(paths) == 1 and len(paths[0].split()) == df["trajectory"].nunique()
    (points,) = elements(plot, "Points")
    assert len(points) == len(df)
    sweeps = [c for c in elements(plot, "Curve") if "g*" in c.label]
    assert len(sweeps) == 2
    x0, x1, y0, y1 = ranges(plot)
    xs = np.concatenate([df["PC 1"], fixed["g0"][:, 0], [h0[0]]] + [p[:, 0] for _, p in fixed["sweep"].values()])
    ys = np.concatenate([df["PC 2"], fixed["g0"][:, 1], [h0[1]]] + [p[:, 1] for _, p in fixed["sweep"].values()])
    assert x0 <= xs.min() and x1 >= xs.max() and (x1 - x0) < 1.5 * np.ptp(xs)
    assert y0 <= ys.min() and y1 >= ys.max() and (y1 - y0) < 1.5 * np.ptp(ys)


def test_large_clouds_are_rasterized(full):
    df = state_space.prepared(full, "learned")[3]
    plot = state_space.trajectory_plot(df, "step", rasterize_above=100)
    assert not elements(plot, "Points") and not elements(plot, "Path")
    fig = hv().render(plot, backend="bokeh")  # datashader aggregates the cloud into an image
    assert any(type(r.glyph).__name__ == "Image" for r in fig.renderers)
    cat = hv().render(state_space.trajectory_plot(df, "kind", rasterize_above=100), backend="bokeh")
    assert any(type(r.glyph).__name__ in ("ImageRGBA", "Image") for r in cat.renderers)


def test_state_space_of_a_one_unit_state_computes_its_own_pca(base):
    pcs, tv, source, df, fixed, h0, k = state_space.prepared(base, "momentum")
    assert source.startswith("computed here") and k == 1
    assert fixed == {"g0": None, "sweep": None}
    v = base.group("momentum")["state"].values.astype(float)
    np.testing.assert_allclose(tv.values, v.var(0).sum(-1).mean(-1), rtol=1e-6)
    plot = state_space.trajectory_plot(df, "step", "PC 1", "step")
    assert elements(plot, "Points")[0].kdims[1].name == "step"


# -- Update functions ------------------------------------------------------------------------------
def test_update_function_of_sgd_is_its_line(base):
    lr = float(base.tree["runs/sgd/theta"].to_dataset()["learning_rate"].values)
    assert update_functions.sgd_learning_rate(base)[0] == pytest.approx(lr)
    traj = update_functions.trajectory(base, "sgd", base.runs("sgd")[1], 3)
    g, dx, dx0 = update_functions.update_curves(base, "sgd", traj.isel(step=2), g_max=0.5, num=21)
    np.testing.assert_allclose(dx, -lr * g, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dx0, -lr * g, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(update_functions.eta_along(base, "sgd", traj), lr, rtol=1e-6)


def test_update_function_panel_of_the_learned_optimizer(full):
    name = "learned"
    run = full.runs(name)[0]
    idx = update_functions.params_of(full, name, "dense1/bias")
    assert len(idx) == 6 and set(full.group(name)["param_tensor"].values[idx]) == {"dense1/bias"}
    traj = update_functions.trajectory(full, name, run, int(idx[2]))
    assert traj.dims == ("step", "unit") and traj.sizes["step"] == full.group(name).sizes["step"]
    g_max = update_functions.gradient_extent(full, name)
    assert g_max == pytest.approx(full.analysis("clipping").attrs["g_max"])
    g, dx, dx0 = update_functions.update_curves(full, name, traj.isel(step=-1), g_max, num=401)
    eta = update_functions.eta_along(full, name, traj)
    slope = np.gradient(dx, g)[200]  # −∂Δx/∂g at g = 0 is the effective learning rate
    assert -slope == pytest.approx(eta[-1], rel=1e-2)
    plot = update_functions.update_plot(g, dx, dx0, 0.1, threshold=0.3, g_seen=0.01)
    assert len(elements(plot, "Curve")) == 3 and len(elements(plot, "VLine")) == 3
    x0, x1, y0, y1 = ranges(plot)
    assert x0 <= -g_max and x1 >= g_max
    both = np.concatenate([dx, dx0])
    assert y0 <= both.min() and y1 >= both.max() and (y1 - y0) < 1.5 * np.ptp(both)
    right = update_functions.eta_plot(traj["step"].values, eta, None, 4, full.analysis("schedule"))
    assert len(elements(right, "Curve")) == 2


# -- Linear dynamics -------------------------------------------------------------------------------
def test_linear_dynamics_plots_every_mode(full):
    mom = full.analysis("momentum", "learned")
    m = linear_dynamics.modes_table(mom, 0)
    eig = linear_dynamics.eigenvalue_plot(m)
    (pts,) = elements(eig, "Points")
    assert len(pts) == mom.sizes["mode"]
    np.testing.assert_allclose(pts.dimension_values("Re λ"), mom["eigenvalue_real"].isel(fixed_point=0).values)
    np.testing.assert_allclose(pts.dimension_values("α"), mom["alpha"].isel(fixed_point=0).values)
    circle = elements(eig, "Curve")[0]
    np.testing.assert_allclose(np.hypot(circle.dimension_values(0), circle.dimension_values(1)), 1.0)
    tuned = linear_dynamics.tuned_momentum(full)
    theta = full.tree["runs/momentum/theta"].to_dataset()
    assert tuned == pytest.approx({"alpha": float(theta["learning_rate"]), "beta": float(theta["beta"])})
    ab = linear_dynamics.alpha_beta_plot(m, tuned)
    stars = [p for p in elements(ab, "Points") if p.label == "momentum baseline"]
    assert len(stars) == 1 and stars[0].dimension_values(0)[0] == pytest.approx(tuned["beta"])
    x0, x1, _, _ = ranges(ab)
    assert x0 <= min(m["beta"].min(), tuned["beta"]) and x1 >= max(m["beta"].max(), tuned["beta"])


def test_compute_button_writes_the_analysis_and_rebuilds(base, tmp_path):
    """On a baselines store the Linear dynamics tab offers the momentum recipe; its button runs it
    (here on the momentum optimizer: one mode, λ = β, α = learning rate) and the tab is rebuilt."""
    store = tmp_path / "copy.zarr"
    shutil.copytree(base.path, store)
    view = StoreView(store)
    rebuilt = []
    tab = linear_dynamics.build(view, rebuild=lambda: rebuilt.append(True))
    (select,) = [o for o in tab.select() if type(o).__name__ == "Select"]
    select.value = "momentum"
    tab.get_root()
    buttons = [o for o in tab.select() if type(o).__name__ == "Button"]
    assert [b.label if "label" in b.param else b.name for b in buttons] == ["Compute momentum"]
    assert not buttons[0].disabled
    buttons[0].clicks += 1
    assert rebuilt == [True]
    mom = view.analysis("momentum", "momentum")
    theta = view.tree["runs/momentum/theta"].to_dataset()
    assert mom is not None and mom.sizes["mode"] == 1
    assert float(mom["beta"].isel(fixed_point=0, mode=0)) == pytest.approx(float(theta["beta"]), rel=1e-5)
    assert float(mom["alpha"].isel(fixed_point=0, mode=0)) == pytest.approx(float(theta["learning_rate"]), rel=1e-4)


# -- Gradients -------------------------------------------------------------------------------------
def test_gradient_histograms_group_the_exact_counts(full):
    ds = full.group("learned")
    total = ds["gradient_hist"].values.sum()
    for by, n in (("tensor", 8), ("kind", 2), ("layer & kind", 8)):
        labels, counts, edges = gradients.histograms(ds, by)
        assert len(labels) == n and counts.shape == (n, ds.sizes["bin"]) and counts.sum() == total
    labels, counts, edges = gradients.histograms(ds, "kind")
    bias = float(ds["gradient_hist"].where(ds["tensor_kind"] == "bias", 0).sum())
    assert counts[labels.index("bias")].sum() == bias
    thr = full.analysis("clipping").attrs["threshold"]
    plot = gradients.histogram_plot(labels, counts, edges, True, thr)
    curves = elements(plot, "Curve")
    assert len(curves) == 2 and len(elements(plot, "VLine")) == 1
    np.testing.assert_allclose([c.dimension_values(1).sum() for c in curves], 1.0)
    x0, x1, _, _ = ranges(plot)
    centres = gradients.bin_centres(edges)[counts.sum(0) > 0]
    assert x0 <= min(centres.min(), thr) and x1 >= max(centres.max(), thr)


# -- the app ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["full", "base"])
def test_every_tab_builds(which, full, base):
    view = full if which == "full" else base
    app = build_app(view.path, view)
    texts = []
    for i in range(len(app.tabs)):
        app.tabs.active = i
        tab = app.tabs[i]
        tab.get_root()  # renders to Bokeh models
        texts.append(" ".join(str(getattr(o, "object", "")) for o in tab.select()))
        assert "could not be built" not in texts[-1], texts[-1]
    if which == "base":  # what is missing is explained, with the command that makes it
        assert "lopt-trace analyze momentum" in texts[3]
        assert "lopt-trace analyze clipping" in texts[4]
    else:
        assert "lopt-trace analyze" not in " ".join(texts)


# -- report ----------------------------------------------------------------------------------------
def test_report_has_every_figure_inlined(full, tmp_path):
    from lopt_trace.report import write_report

    out = f"{tmp_path}/report.html"
    res = write_report(full.path, out, compute=False, overwrite=True)
    page = open(out, encoding="utf-8").read()
    assert [f.key for f in res.figures] == ["fig1", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9"]
    assert all(f.ok for f in res.figures), [f.problem for f in res.figures]
    assert len(re.findall(r"data-figure='fig\d' data-ok='true'", page)) == 8
    assert not re.search(r"<script[^>]+src=['\"]https?:", page)  # Bokeh inlined: opens offline
    assert "Bokeh" in page and res.size > 500_000
    mom = full.analysis("momentum").attrs
    assert f"{mom['slowest_beta']:.3g}" in page  # key numbers are in the page
    for f in res.figures:
        assert f.caption and f.numbers


def test_report_figures_are_the_recipes_own_plots_lettered(full):
    """Figs. 5–9 are each recipe's plot(result), its panels lettered as the caption names them."""
    from lopt_trace import recipes_loader
    from lopt_trace.report import figure_5, figure_6, figure_7, figure_8, figure_9

    def title(el):
        return hv().Store.lookup_options("bokeh", el, "plot").kwargs.get("title")

    for make, recipe in ((figure_5, "schedule"), (figure_6, "adaptation"), (figure_7, "layers"),
                         (figure_8, "emergence"), (figure_9, "distill")):
        fig = make(full)
        own = recipes_loader.load(recipe).plot(full.analysis(recipe))
        assert fig.ok and len(fig.plot) == len(own) >= 2, recipe
        for i, (mine, theirs) in enumerate(zip(fig.plot.values(), own.values())):
            assert title(mine) == f"({'abcdefghij'[i]}) {title(theirs)}", recipe
            for kind in ("Curve", "Bars", "Points"):
                pairs = list(zip(elements(mine, kind), elements(theirs, kind), strict=True))
                for a, b in pairs:
                    np.testing.assert_array_equal(a.dimension_values(1), b.dimension_values(1))
    # and the recipe's plot draws the result: Fig. 5a's autonomous curve is the schedule's η
    sch = full.analysis("schedule")
    auto = elements(next(iter(figure_5(full).plot.values())), "Curve")[0]
    np.testing.assert_allclose(auto.dimension_values(1), sch["auto_effective_learning_rate"].values)
    # Fig. 7's key numbers come from the layers result's histograms
    lay = full.analysis("layers")
    labels = recipes_loader.load("layers").layer_kind_histograms(lay)[0]
    assert [k for k, _ in figure_7(full).numbers if k.startswith("geometric mean")] == [
        f"geometric mean |g|, {lab}" for lab in labels]


def test_report_of_a_baselines_store_says_what_to_run(base, tmp_path):
    from lopt_trace.report import write_report

    out = f"{tmp_path}/report-base.html"
    res = write_report(base.path, out, compute=False, overwrite=True)
    ok = {f.key: f.ok for f in res.figures}
    assert ok["fig1"] and not ok["fig3"] and not ok["fig5"]
    page = open(out, encoding="utf-8").read()
    assert f"lopt-trace analyze momentum {base.path}" in page


def test_cli_errors_are_one_line(tmp_path, baselines_store):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "lopt_trace.cli", *argv], capture_output=True, text=True,
                              timeout=120)

    r = run("dashboard", str(tmp_path / "nope.zarr"), "--no-show")
    assert r.returncode == 2 and "no store at" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "r.html"
    out.write_text("keep")
    r = run("report", baselines_store, "--out", str(out), "--no-compute")
    assert r.returncode == 2 and "--overwrite" in r.stderr and out.read_text() == "keep"
