"""The recipes, their loader, results in the store, and `lopt-trace analyze`."""

import shutil
import sys

import numpy as np
import pytest
import xarray as xr
from _stores import GT, open_store

from lopt_trace import recipes_loader
from lopt_trace.analysis import read_result, write_result
from lopt_trace.cli import main

RECIPES = ["performance", "momentum", "clipping", "schedule", "adaptation", "layers"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, ground_truth_store):
    """A copy of the ground-truth store after `lopt-trace analyze all`, and what it printed."""
    path = tmp_path_factory.mktemp("recipes") / "gt.zarr"
    shutil.copytree(ground_truth_store, path)
    return path


def test_loader_finds_recipes_under_a_private_module_name():
    assert recipes_loader.available()[:6] == RECIPES
    mod = recipes_loader.load("momentum")
    assert mod.__name__ == "lopt_trace.recipes.momentum"
    assert sys.modules["lopt_trace.recipes.momentum"] is mod and recipes_loader.load("momentum") is mod
    assert "recipes" not in sys.modules  # never a generic top-level package
    for name in RECIPES:
        m = recipes_loader.load(name)
        assert all(callable(getattr(m, f)) for f in ("compute", "summary", "plot", "run"))


def test_loader_prefers_the_installed_copy(tmp_path, monkeypatch):
    """In a wheel the recipes sit in lopt_trace/recipes (hatch force-include)."""
    pkg = tmp_path / "lopt_trace"
    shutil.copytree(recipes_loader.recipes_dir(), pkg / "recipes")
    (pkg / "recipes" / "extra.py").write_text(
        "NAME = 'extra'\ndef compute(tree):\n    return None\ndef summary(ds):\n    return 'extra: ok'\n"
        "def plot(ds):\n    return None\ndef run(store):\n    return None\n")
    monkeypatch.setattr(recipes_loader, "_PACKAGE", pkg)
    assert recipes_loader.recipes_dir() == pkg / "recipes"
    assert recipes_loader.available() == RECIPES + ["emergence", "distill", "extra"]
    monkeypatch.delitem(sys.modules, "lopt_trace.recipes", raising=False)
    mod = recipes_loader.load("extra")
    try:
        assert mod.__name__ == "lopt_trace.recipes.extra" and mod.summary(None) == "extra: ok"
    finally:
        sys.modules.pop("lopt_trace.recipes.extra", None)


@pytest.mark.slow
def test_analyze_all_prints_summaries_and_writes_results(analysed, capsys):
    assert main(["analyze", "all", str(analysed), "--timing"]) == 0
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    # emergence needs a meta-training history, which this store has not: skipped, in one line
    assert captured.err.count("emergence: skipped: the store has no meta-training history") == 1
    summaries = [line for line in out if not line.startswith("  (")]
    assert [s.split(":")[0] for s in summaries] == RECIPES
    assert sum(line.startswith("  (") and "peak memory" in line for line in out) == 6
    tree = open_store(analysed)
    assert sorted(tree["analysis"].children) == sorted(RECIPES)
    for name in RECIPES:
        res = tree[f"analysis/{name}"]
        assert res.attrs["recipe"] == name and res.attrs["recipe_version"]
        assert res.attrs["created"].endswith("Z") and isinstance(res.attrs["parameters"], dict)
        for var in res.to_dataset(inherit=False).data_vars.values():
            assert "long_name" in var.attrs and "units" in var.attrs
        # every recipe's plot draws the result as read back from the store
        mod = recipes_loader.load(name)
        check_plot(name, mod.plot(read_result(analysed, name)), read_result(analysed, name))
        assert mod.summary(read_result(analysed, name)).startswith(f"{name}:")
    # the learned optimizer of this store is the hand-built momentum GRU: analysed to β and α
    mom = read_result(analysed, "momentum")
    line = summaries[1]
    assert f"|λ| = {GT['gru']['beta']:.2f}" in line and f"α = {GT['gru']['learning_rate']:.3g}" in line
    assert mom.attrs["slowest_beta"] == pytest.approx(GT["gru"]["beta"], rel=1e-6)


def elements(obj, kind: str) -> list:
    """The HoloViews elements of type ``kind`` (a name) in a Layout or Overlay, in order."""
    if type(obj).__name__ == kind:
        return [obj]
    if type(obj).__name__ in ("Layout", "Overlay", "NdOverlay"):
        return [e for v in obj.values() for e in elements(v, kind)]
    return []


def ys(element) -> np.ndarray:
    return np.asarray(element.dimension_values(1), dtype=np.float64)


def check_plot(name: str, plot, ds: xr.Dataset) -> None:
    """``plot`` (recipe ``name``'s ``plot(ds)``) draws ``ds``'s numbers: each curve, bar and point
    is the result's values."""
    curves = elements(plot, "Curve")
    if name == "performance":
        for name_, curve in zip(ds["optimizer"].values, curves):
            mean = ds["loss_mean"].sel(optimizer=name_).values
            np.testing.assert_allclose(ys(curve), mean[np.isfinite(mean) & (mean > 0)])
        (bars,) = elements(plot, "Bars")
        np.testing.assert_allclose(ys(bars), ds["meta_objective_mean"].values)
    elif name == "momentum":
        (pts,) = elements(plot, "Scatter")
        np.testing.assert_allclose(pts.dimension_values(0), ds["eigenvalue_real"].values.ravel())
        np.testing.assert_allclose(ys(pts), ds["eigenvalue_imag"].values.ravel())
        np.testing.assert_allclose(ys(curves[1]), ds["explained_variance_ratio"].values)
        np.testing.assert_allclose(ys(curves[2]), ds["total_variance"].values)
    elif name == "clipping":
        states = [str(s) for s in ds["state"].values]
        for s, curve in zip(states, curves):
            np.testing.assert_allclose(ys(curve), ds["update_function"].sel(state=s).values)
        (hist,) = elements(plot, "Histogram")
        np.testing.assert_allclose(ys(hist), ds["gradient_hist"].values)
    elif name == "schedule":
        np.testing.assert_allclose(ys(curves[0]), ds["auto_effective_learning_rate"].values)
        np.testing.assert_allclose(ys(curves[-1]), ds["auto_readout_fraction"].values)
    elif name == "adaptation":
        eta = [c for c in curves if c.vdims[0].name == "effective learning rate"]
        assert len(eta) == ds.sizes["arm"]
        for arm, curve in zip(ds["arm"].values, eta):
            np.testing.assert_allclose(curve.dimension_values(0), ds["g_abs"].values)
            np.testing.assert_allclose(ys(curve), ds["effective_learning_rate"].sel(arm=arm).values)
        (pts, *_) = elements(plot, "Points")
        np.testing.assert_allclose(pts.dimension_values(2), ds["g_star"].isel(arm=0).values)
    elif name == "layers":
        eta = [c for c in curves if c.vdims[0].name == "effective learning rate"]
        assert [c.label for c in eta] == [str(t) for t in ds["tensor"].values]
        for t, curve in zip(ds["tensor"].values, eta):
            np.testing.assert_allclose(ys(curve), ds["tensor_effective_learning_rate"].sel(tensor=t).values)
        hists = [c for c in curves if c.vdims[0].name == "fraction"]
        counts = ds["layer_kind_hist"].transpose("layer", "kind", "bin").values.reshape(-1, ds.sizes["bin"])
        counts = counts[counts.sum(1) > 0]
        assert len(hists) == len(counts) > 0
        for c, curve in zip(counts, hists):
            np.testing.assert_allclose(ys(curve), c / c.sum())
    elif name == "emergence":
        it = ds["checkpoint"].values
        assert any(np.array_equal(c.dimension_values(0), it) for c in curves)
    elif name == "distill":
        (bars, *_) = elements(plot, "Bars")
        keep = [i for i, v in enumerate(ds["variant"].values) if str(v) not in ("learned", "tuned_momentum")]
        value = 100 * ds["recovered"].values[keep]  # bars are clipped to ±250 % (labels give the value)
        np.testing.assert_allclose(ys(bars), np.clip(np.nan_to_num(value, nan=0.0, posinf=250, neginf=-250), -250, 250))
    else:
        raise AssertionError(f"no check for recipe {name}")


def test_every_recipe_plot_draws_its_result(full_store):
    for name in recipes_loader.ORDER:
        ds = read_result(full_store, name)
        plot = recipes_loader.load(name).plot(ds)
        assert type(plot).__name__ == "Layout" and elements(plot, "Curve") + elements(plot, "Bars"), name
        check_plot(name, plot, ds)


def test_running_again_replaces_the_group(analysed, capsys):
    assert main(["analyze", "momentum", str(analysed), "--optimizer", "momentum", "-p", "n_starts=8"]) == 0
    line = capsys.readouterr().out
    # heavy ball has one mode: it is both the dominant and the slowest
    assert line.startswith("momentum: dominant and slowest mode (100% of Σ|α|) |λ| = 0.80") and "α = 0.05" in line
    assert "does not hold" not in line  # exactly linear
    res = read_result(analysed, "momentum")
    assert res.attrs["parameters"] == {"optimizer": "momentum", "n_starts": 8}
    assert res.sizes["start"] == 9 and res.attrs["optimizer"] == "momentum"  # 8 samples + h0
    assert sorted(open_store(analysed)["runs"].children) == sorted(
        ["momentum", "sgd", "sgd_clip", "rmsprop", "learned"])  # nothing else touched


def test_ground_truth_through_the_recipes(ground_truth_store):
    tree = open_store(ground_truth_store)
    mom = recipes_loader.load("momentum").compute(tree, optimizer="momentum", n_starts=16)
    assert mom.sizes["mode"] == 1 and mom.attrs["n_fixed_points"] == 1
    assert mom.attrs["slowest_beta"] == pytest.approx(GT["momentum"]["beta"], rel=1e-6)
    assert mom.attrs["slowest_alpha"] == pytest.approx(GT["momentum"]["learning_rate"], rel=1e-6)
    assert mom.attrs["tuned_beta"] == pytest.approx(GT["momentum"]["beta"], rel=1e-6)  # the store's own
    a_opt, b_opt = recipes_loader.load("momentum").optimal_heavy_ball(1e-3, 1.0)
    assert mom.attrs["optimal_alpha"] == pytest.approx(a_opt) and mom.attrs["optimal_beta"] == pytest.approx(b_opt)
    clip = recipes_loader.load("clipping")
    ds = clip.compute(tree, optimizer="sgd_clip", n_states=4)
    assert ds.attrs["clip_equivalent"] == pytest.approx(GT["clip"], rel=1e-6)
    assert ds.attrs["threshold"] == pytest.approx(GT["clip"] / 0.9, rel=1e-6)
    assert 0 < ds.attrs["fraction_beyond"] < 1
    assert "saturates beyond |g| = 0.333" in clip.summary(ds)
    sgd = clip.compute(tree, optimizer="sgd", n_states=4)
    assert np.isinf(sgd.attrs["threshold"]) and clip.summary(sgd).startswith("clipping: no saturation")


def test_performance_meta_objective_matches_unroll(ground_truth_store):
    import jax.numpy as jnp

    from lopt_trace.unroll import meta_objective

    tree = open_store(ground_truth_store)
    ds = recipes_loader.load("performance").compute(tree)
    assert list(ds["optimizer"].values) == ["momentum", "sgd", "sgd_clip", "rmsprop", "learned"]
    for name in ds["optimizer"].values:
        loss = tree[f"runs/{name}"]["loss"].values
        ref = np.asarray(meta_objective(jnp.asarray(loss)))
        np.testing.assert_allclose(ds["meta_objective"].sel(optimizer=name), ref, rtol=1e-6)
        assert float(ds["meta_objective_mean"].sel(optimizer=name)) == pytest.approx(ref.mean(), rel=1e-6)
        np.testing.assert_allclose(ds["loss_mean"].sel(optimizer=name), loss.mean(0), rtol=1e-6)
        np.testing.assert_allclose(ds["loss_sem"].sel(optimizer=name), loss.std(0, ddof=1) / np.sqrt(3), rtol=1e-5)


def test_layers_on_a_multi_tensor_store(two_moons_store):
    tree = open_store(two_moons_store)
    ds = recipes_loader.load("layers").compute(tree)
    assert ds.sizes["tensor"] == 8 and sorted(ds["kind"].values) == ["bias", "weight"]
    # the per-kind mean state is the size-weighted mean of the tensors of that kind
    sm = tree["runs/learned"]["state_mean"].mean("run").values  # (step, tensor, unit)
    sizes = tree["runs/learned"]["tensor_size"].values
    kinds = np.array([str(k) for k in tree["runs/learned"]["tensor_kind"].values])
    for kind in ("weight", "bias"):
        w = np.where(kinds == kind, sizes, 0) / np.where(kinds == kind, sizes, 0).sum()
        np.testing.assert_allclose(ds["kind_state"].sel(kind=kind).transpose("step", "unit"),
                                   np.einsum("stu,t->su", sm, w), rtol=1e-6)
    hist = tree["runs/learned"]["gradient_hist"].sum("run").values
    np.testing.assert_allclose(ds["layer_kind_hist"].sum(["layer", "kind"]), hist.sum(0))
    assert int(ds["layer_kind_hist"].sum()) == 2 * 12 * 8577  # every parameter and step, all runs
    assert recipes_loader.load("layers").summary(ds).startswith("layers: effective LR at the last step")


def test_scheduler_option_uses_a_distributed_client(tmp_path, capsys, two_moons_store):
    distributed = pytest.importorskip("dask.distributed")
    path = tmp_path / "s.zarr"
    shutil.copytree(two_moons_store, path)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        assert cluster.scheduler.transition_counter == 0
        assert main(["analyze", "layers", str(path), "--scheduler", cluster.scheduler_address]) == 0
        ran = cluster.scheduler.transition_counter
        prefixes = list(cluster.scheduler.task_prefixes)
    assert capsys.readouterr().out.startswith("layers:")
    assert ran > 0 and any("open_dataset" in p for p in prefixes)  # the store was read on the cluster


def test_cli_errors_are_one_line(tmp_path, capsys, ground_truth_store):
    assert main(["analyze", "nope", ground_truth_store]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert main(["analyze", "momentum", str(tmp_path / "missing.zarr")]) == 2
    assert "no store at" in capsys.readouterr().err
    assert main(["analyze", "momentum", ground_truth_store, "-p", "bogus=1"]) == 2
    assert "unknown option 'bogus'" in capsys.readouterr().err
    assert main(["analyze", "momentum", ground_truth_store, "--optimizer", "lion", "--no-write"]) == 2
    assert "no optimizer 'lion'" in capsys.readouterr().err


def test_write_result_to_a_memory_store():
    import zarr

    path = "memory://analysis-test.zarr"
    xr.DataTree.from_dict({"/": xr.Dataset(attrs={"schema_version": 1})}).to_zarr(
        path, mode="w", zarr_format=3, consolidated=True)
    write_result(path, "demo", xr.Dataset({"a": ("x", [1.0, 2.0])}), version=1, parameters={"k": np.int64(3)})
    write_result(path, "demo", xr.Dataset({"b": ("y", [3.0])}), version=2, parameters={})
    res = read_result(path, "demo")
    assert list(res.data_vars) == ["b"] and res.attrs["recipe_version"] == "2"
    group = zarr.open_group(path, mode="r")  # the store holds exactly the last result, with provenance
    assert list(group["analysis"].group_keys()) == ["demo"]
    demo = group["analysis/demo"]
    assert sorted(demo.array_keys()) == ["b"] and demo["b"][:].tolist() == [3.0]
    assert demo.attrs["recipe"] == "demo" and demo.attrs["recipe_version"] == "2" and demo.attrs["parameters"] == {}


def test_write_result_waits_for_no_recorder():
    from lopt_trace.errors import UserError
    from lopt_trace.store import StoreLock

    path = "memory://analysis-lock-test.zarr"
    xr.DataTree.from_dict({"/": xr.Dataset(attrs={"schema_version": 1})}).to_zarr(
        path, mode="w", zarr_format=3, consolidated=True)
    with StoreLock(path), pytest.raises(UserError, match="being written"):
        write_result(path, "demo", xr.Dataset({"a": ("x", [1.0])}), version=1)
    write_result(path, "demo", xr.Dataset({"a": ("x", [1.0])}), version=1)  # free again
    assert list(read_result(path, "demo").data_vars) == ["a"]


def test_momentum_summary_names_the_dominant_and_the_slowest_mode_and_flags_nonlinearity():
    mod = recipes_loader.load("momentum")
    alpha = np.array([0.3, 2.9, -0.1, 0.2])  # modes sorted by decreasing |λ|
    assert mod.dominant_mode(alpha) == 1
    assert mod.dominant_mode(alpha, exclude=np.array([False, True, False, False])) == 0
    attrs = {"optimizer": "learned", "momentum_mode": 0, "slowest_beta": 0.93, "slowest_timescale": 13.8,
             "slowest_alpha": 0.3, "dominant_mode": 1, "dominant_beta": 0.87, "dominant_timescale": 7.2,
             "dominant_alpha": 2.9, "dominant_share": 0.84, "n_fixed_points": 1, "best_q": 0.0,
             "linearization_error_median": 0.46}
    line = mod.summary(xr.Dataset(attrs=attrs))
    assert line.startswith("momentum: dominant mode |λ| = 0.87 (timescale 7.2 steps), α = 2.9 (84% of Σ|α|); "
                           "slowest mode |λ| = 0.93")
    assert "the linear description does not hold here (median one-step error 46% > 20%)" in line
    attrs["linearization_error_median"] = 0.05
    assert "does not hold" not in mod.summary(xr.Dataset(attrs=attrs))


@pytest.mark.slow
def test_every_recipe_on_a_two_process_cluster_equals_the_local_result(two_moons_store):
    """Issue #13: the analyses run unchanged on dask.distributed (2 worker processes): every
    recipe's result equals the one computed with the local scheduler."""
    distributed = pytest.importorskip("dask.distributed")
    from lopt_trace.analysis import open_for_analysis

    tree = open_for_analysis(two_moons_store)
    mods = {}
    for name in recipes_loader.available():
        mod = recipes_loader.load(name)
        skip = getattr(mod, "not_applicable", None)
        if (skip is None or not skip(tree, None)) and name in recipes_loader.ORDER:
            mods[name] = mod
    assert {"performance", "momentum", "clipping", "schedule", "adaptation", "layers"} <= set(mods)
    local = {name: mod.compute(tree) for name, mod in mods.items()}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = {name: mod.compute(open_for_analysis(two_moons_store)) for name, mod in mods.items()}
        assert len(client.scheduler_info()["workers"]) == 2
        assert cluster.scheduler.transition_counter > 0  # the reads ran on the cluster
    for name in mods:
        xr.testing.assert_allclose(local[name], remote[name], rtol=1e-12, atol=0)
