"""Tests for lopt_trace.compare and `lopt-trace compare`."""

from __future__ import annotations

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from lopt_trace import seeds as seedlib
from lopt_trace.cli import main
from lopt_trace.compare import (
    figure,
    format_table,
    loss_curves,
    margin_lines,
    margins,
    paired_margins,
    resolve,
    save_figure,
    summarize,
)
from lopt_trace.errors import UserError
from lopt_trace.optimizers import LearnedGRU, make_optimizer
from lopt_trace.optimizers.io import save_optimizer
from lopt_trace.tasks import get_task
from lopt_trace.unroll import loss_curve, meta_objective

STEPS = 20
TUNED = {"task": "linear_regression", "optimizers": {
    "sgd": {"theta": {"learning_rate": 0.5}, "objective": 0.2, "samples": 1, "problems": 1},
    "momentum": {"theta": {"learning_rate": 0.3, "beta": 0.8}, "objective": 0.1, "samples": 1, "problems": 1},
}}


@pytest.fixture
def tuned_file(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(TUNED))
    return path


@pytest.fixture
def learned_file(tmp_path):
    task = get_task("linear_regression")
    opt = LearnedGRU(units=4, input_scale=1.0, output_scale=0.1)
    path = tmp_path / "learned.zarr"
    save_optimizer(path, opt, opt.init_theta(jax.random.PRNGKey(0)), task=task.config())
    return path


def _one_at_a_time(task, opt):
    return jax.jit(lambda theta, problem: loss_curve(task, opt, theta, problem, STEPS))


def test_table_equals_direct_computation(tuned_file):
    task = get_task("linear_regression", steps=STEPS)
    entries, notes = resolve("linear_regression", ["sgd", "momentum"], tuned_file=str(tuned_file))
    assert [e.source for e in entries] == ["tuned", "tuned"] and notes == []
    seeds = seedlib.test_seeds(0, 6)
    curves = loss_curves(task, entries, seeds, batch=4, progress=False)  # 2 batches, one short
    assert curves["loss"].dims == ("optimizer", "run", "loss_step")
    assert curves["loss"].shape == (2, 6, STEPS + 1)
    summary = summarize(curves["loss"])

    for i, (name, entry) in enumerate(zip(["sgd", "momentum"], TUNED["optimizers"].values())):
        opt = make_optimizer(name)
        theta = {k: jnp.float32(v) for k, v in entry["theta"].items()}
        one = _one_at_a_time(task, opt)
        direct = np.stack([np.asarray(one(theta, task.sample(jax.random.PRNGKey(int(s))))) for s in seeds])
        np.testing.assert_allclose(curves["loss"].values[i], direct, rtol=1e-6)
        meta = np.asarray(meta_objective(jnp.asarray(direct)), np.float64)
        final = direct[:, -1].astype(np.float64)
        row = summary.isel(optimizer=i)
        np.testing.assert_allclose(row["meta_objective_mean"], meta.mean(), rtol=1e-5)
        np.testing.assert_allclose(row["meta_objective_sem"], meta.std(ddof=1) / math.sqrt(6), rtol=1e-4)
        np.testing.assert_allclose(row["final_loss_mean"], final.mean(), rtol=1e-5)
        np.testing.assert_allclose(row["final_loss_sem"], final.std(ddof=1) / math.sqrt(6), rtol=1e-4)

    table = format_table(summary)
    assert table.splitlines()[0].split()[:2] == ["optimizer", "source"]
    m = summary["meta_objective_mean"].values
    assert f"{m[0]:.4g}" in table and f"{m[1]:.4g}" in table
    best = ["sgd", "momentum"][int(np.argmin(m))]
    assert f"{best}*" in table
    # margins: (baseline − reference) / combined sem
    gap = margins(summary, reference="sgd")["momentum"]
    s = summary["meta_objective_sem"].values
    assert gap == pytest.approx((m[1] - m[0]) / math.hypot(s[0], s[1]))


def test_summarize_works_lazily_and_marks_divergence():
    loss = xr.DataArray(np.array([[[1.0, 0.5, 0.25], [2.0, 1.0, 1.0]],
                                  [[1.0, np.nan, 0.5], [1.0, 0.5, np.nan]]]),
                        dims=("optimizer", "run", "loss_step"),
                        coords={"optimizer": ["a", "b"]}).chunk({"run": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = summarize(loss).compute()
    np.testing.assert_allclose(summary["meta_objective_mean"].sel(optimizer="a"), (0.375 + 0.5) / 2)
    np.testing.assert_allclose(summary["meta_objective_sem"].sel(optimizer="a"),
                               np.std([0.375, 0.5], ddof=1) / math.sqrt(2))
    assert np.isinf(summary["meta_objective_mean"].sel(optimizer="b"))
    assert np.isnan(summary["meta_objective_sem"].sel(optimizer="b"))
    assert np.isnan(summary["final_loss_mean"].sel(optimizer="b"))  # a NaN run is not skipped
    assert "inf" in format_table(summary)


def test_paired_margins():
    base = np.linspace(1.0, 2.0, 8)
    ref = np.stack([np.full(8, 1.0), base * 0.5, base * 0.5], -1)       # meta = 0.5·base
    other = np.stack([np.full(8, 1.0), base * 0.6, base * 0.6 + 0.01 * np.arange(8)], -1)
    loss = xr.DataArray(np.stack([ref, other]), dims=("optimizer", "run", "loss_step"),
                        coords={"optimizer": ["learned", "adam"]})
    d = (other[:, 1:].mean(-1) - ref[:, 1:].mean(-1))
    assert paired_margins(loss)["adam"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(8)))
    assert paired_margins(loss, reference="sgd") == {}


def test_margin_lines_judge_each_learned_optimizer_against_the_baselines_only():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, 16)
    scale = {"learned": 0.5, "learned-warm": 0.3, "adam": 0.4}  # learned loses to adam, warm beats it
    loss = xr.DataArray(np.stack([np.stack([np.ones(16), base * k, base * k], -1) for k in scale.values()]),
                        dims=("optimizer", "run", "loss_step"), coords={"optimizer": list(scale)})
    lines = margin_lines(summarize(loss), loss)
    assert len(lines) == 4  # combined and paired, for each learned optimizer
    learned, warm = lines[:2], lines[2:]
    assert all(l.startswith("(baseline − learned) /") and "learned-warm" not in l for l in learned)
    assert all("adam -" in l and l.endswith("learned does NOT beat every baseline by > 2") for l in learned)
    assert all(l.startswith("(baseline − learned-warm) /") and " learned " not in l for l in warm)
    assert all("adam +" in l and l.endswith("learned-warm beats every baseline by > 2") for l in warm)
    assert margin_lines(summarize(loss.sel(optimizer=["adam"])), loss.sel(optimizer=["adam"])) == []


def test_resolve_skips_or_fails(tmp_path, tuned_file, learned_file):
    # a tuned file given explicitly must exist (an error, not a silent fall-back to defaults)
    with pytest.raises(UserError, match="no tuned-hyperparameter file"):
        resolve("linear_regression", learned=None, tuned_file=str(tmp_path / "none.json"), untuned=True)
    # default set: nothing tuned in an empty tuned file -> defaults with --untuned
    empty = tmp_path / "empty.json"
    empty.write_text('{"task": "linear_regression", "optimizers": {}}')
    entries, notes = resolve("linear_regression", learned=None, tuned_file=str(empty), untuned=True)
    assert [e.source for e in entries if e.label != "learned"] == ["default"] * 3
    entries, notes = resolve("linear_regression", tuned_file=str(tuned_file), learned=str(learned_file))
    assert [e.label for e in entries] == ["learned", "momentum"]
    assert entries[0].source == str(learned_file)
    assert any("rmsprop" in n and "skipped" in n for n in notes)
    # explicitly asked for: missing means an error, not a note
    with pytest.raises(UserError, match="no tuned adam"):
        resolve("linear_regression", ["adam"], tuned_file=str(tuned_file))
    with pytest.raises(UserError, match="no optimizer file"):
        resolve("linear_regression", ["learned"], learned=str(tmp_path / "missing.zarr"))
    with pytest.raises(UserError, match="meta-trained on"):
        resolve("rosenbrock", ["learned"], learned=str(learned_file))


def test_figure_saves_html(tmp_path, tuned_file):
    task = get_task("linear_regression", steps=STEPS)
    entries, _ = resolve("linear_regression", ["sgd", "momentum"], tuned_file=str(tuned_file))
    curves = loss_curves(task, entries, seedlib.test_seeds(0, 3), progress=False)
    written, note = save_figure(figure(curves), tmp_path / "fig.html")
    html = (tmp_path / "fig.html").read_text()
    assert written == [tmp_path / "fig.html"] and note is None  # a PNG only when asked for
    assert "Bokeh" in html and "momentum" in html and not (tmp_path / "fig.png").exists()


def _plot_argv(tmp_path, tuned_file, out):
    return ["compare", "--task", "linear_regression", "--seeds", "2", "--steps", "5",
            "--optimizer", "sgd", "--tuned", str(tuned_file), "--out", str(out), "--no-progress"]


def test_cli_png_without_chromium_fails_before_running(tmp_path, tuned_file, capsys, monkeypatch):
    import lopt_trace.compare

    monkeypatch.setattr("lopt_trace.report.shutil.which", lambda name: None)
    monkeypatch.setattr(lopt_trace.compare, "compare", lambda *a, **k: pytest.fail("ran the comparison"))
    assert main(_plot_argv(tmp_path, tuned_file, tmp_path / "fig.png")) == 2
    err = capsys.readouterr().err
    assert "PNG export needs Chromium" in err and err.count("\n") == 1
    assert not list(tmp_path.glob("fig.*"))


def test_cli_png_is_not_overwritten_silently(tmp_path, tuned_file, capsys):
    (tmp_path / "fig.png").write_bytes(b"mine")
    assert main(_plot_argv(tmp_path, tuned_file, tmp_path / "fig.png")) == 2
    assert "fig.png already exists" in capsys.readouterr().err
    assert (tmp_path / "fig.png").read_bytes() == b"mine" and not (tmp_path / "fig.html").exists()


@pytest.mark.browser
def test_cli_png_next_to_the_html(tmp_path, tuned_file, capsys):
    from lopt_trace.report import check_png_export

    try:
        check_png_export()
    except UserError as exc:
        pytest.skip(str(exc))
    assert main(_plot_argv(tmp_path, tuned_file, tmp_path / "fig.png")) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'fig.html'}, {tmp_path / 'fig.png'}" in out and "no PNG" not in out
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compare(tmp_path, tuned_file, learned_file, capsys):
    plot, store = tmp_path / "fig.html", tmp_path / "c.zarr"
    argv = ["compare", "--task", "linear_regression", "--seeds", "4", "--steps", str(STEPS),
            "--learned", str(learned_file), "--tuned", str(tuned_file), "--out", str(plot),
            "--save", str(store), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "learned" in out and "momentum" in out and "note: no tuned rmsprop" in out
    assert "mean ± sem over 4 held-out problems" in out and plot.exists()
    tree = xr.open_datatree(store, engine="zarr")
    curves = tree["curves"].to_dataset()
    assert list(curves["optimizer"].values) == ["learned", "momentum"]
    assert list(curves["run"].values) == list(seedlib.test_seeds(0, 4))
    # numbers printed are the stored summary's
    m = tree["summary"].to_dataset()["meta_objective_mean"].values
    assert f"{m[1]:.4g}" in out
    # existing plot is refused in one line
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, needle", [
    (["compare", "--task", "linear_regression", "--optimizer", "lion"], "unknown optimizer"),
    (["compare", "--task", "linear_regression", "--seeds", "0"], "positive integer"),
    (["compare", "--task", "nope"], "unknown task"),
])
def test_cli_bad_arguments(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_cli_missing_explicit_learned_exits_2(tmp_path, tuned_file, capsys):
    code = main(["compare", "--task", "linear_regression", "--optimizer", "learned", "momentum",
                 "--learned", str(tmp_path / "nope.zarr"), "--tuned", str(tuned_file), "--no-plot"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no optimizer file" in err and err.count("\n") == 1


def test_cli_compare_shows_tuning_curves_and_plateau_verdicts(tmp_path, capsys):
    from lopt_trace.tune import bundle_best, tune_to_store

    task = get_task("linear_regression", steps=STEPS)
    store, tuned = tmp_path / "lr-tune.zarr", tmp_path / "tuned.json"
    outcome = tune_to_store(task, ["sgd"], store, samples=8, problems=2, validation_problems=2,
                            progress=False)
    data = bundle_best(outcome.results, tuned, store=store)
    assert data["optimizers"]["sgd"]["store"] == str(store)
    data["optimizers"]["sgd"]["tuning_curve"]["plateaued"] = False  # as a search that did not flatten
    data["optimizers"]["momentum"] = TUNED["optimizers"]["momentum"]  # bundled before tuning curves
    tuned.write_text(json.dumps(data))
    plot = tmp_path / "fig.html"
    argv = ["compare", "--task", "linear_regression", "--seeds", "3", "--steps", str(STEPS),
            "--optimizer", "sgd", "momentum", "--tuned", str(tuned), "--out", str(plot), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0].rstrip("*"): line for line in out.splitlines() if line.startswith(("sgd", "momentum"))}
    assert rows["sgd"].endswith(" not plateaued") and rows["momentum"].endswith(" no curve")
    html = plot.read_text()
    assert "tuning curves" in html and "sgd (not plateaued)" in html


def test_cli_reuse_skips_the_same_runs_and_reruns_what_changed(tmp_path, tuned_file, learned_file, capsys):
    """--reuse takes saved curves only where the computation is the same (θ digest, steps, seeds)."""
    store = tmp_path / "c.zarr"
    base = ["compare", "--task", "linear_regression", "--steps", str(STEPS), "--learned", str(learned_file),
            "--no-plot", "--no-progress"]
    assert main(base + ["--seeds", "4", "--optimizer", "learned", "sgd", "--tuned", str(tuned_file),
                        "--save", str(store)]) == 0
    first = xr.open_datatree(store, engine="zarr")["curves"].to_dataset().load()
    capsys.readouterr()

    # momentum is new, sgd's learning rate changed: both run; learned is reused, on fewer seeds
    changed = json.loads(json.dumps(TUNED))
    changed["optimizers"]["sgd"]["theta"]["learning_rate"] = 0.25
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    argv = base + ["--seeds", "3", "--optimizer", "learned", "sgd", "momentum",
                   "--tuned", str(tmp_path / "changed.json"), "--reuse", str(store), "--save", str(store),
                   "--overwrite"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "reused the curves of learned from" in out
    assert "not reusing sgd from the --reuse store: its θ differs" in out
    second = xr.open_datatree(store, engine="zarr")["curves"].to_dataset().load()
    assert list(second["optimizer"].values) == ["learned", "sgd", "momentum"]
    assert second["reused"].values.tolist() == [True, False, False]
    np.testing.assert_array_equal(second["loss"].sel(optimizer="learned").values,
                                  first["loss"].sel(optimizer="learned").isel(run=slice(0, 3)).values)
    assert not np.allclose(second["loss"].sel(optimizer="sgd").values,
                           first["loss"].sel(optimizer="sgd").isel(run=slice(0, 3)).values)
    # the reused curves are what a fresh run gives
    task = get_task("linear_regression", steps=STEPS)
    entries, _ = resolve("linear_regression", ["learned"], learned=str(learned_file))
    fresh = loss_curves(task, entries, second["run"].values, progress=False)
    np.testing.assert_allclose(second["loss"].sel(optimizer="learned").values, fresh["loss"].values[0], rtol=1e-6)

    # more seeds than were saved, or other steps: nothing is reused, and the note says why
    assert main(base + ["--seeds", "5", "--optimizer", "learned", "--reuse", str(store)]) == 0
    assert "it lacks 2 of the 5 held-out seeds" in capsys.readouterr().out
    assert main(base[:4] + ["10"] + base[5:] + ["--seeds", "3", "--optimizer", "learned", "--reuse", str(store)]) == 0
    out = capsys.readouterr().out
    assert "not reusing learned" in out and "reused the curves" not in out


@pytest.mark.parametrize("make, needle", [
    (lambda p: None, "no saved comparison at"),
    (lambda p: xr.Dataset({"x": ("a", [1.0])}).to_zarr(p, consolidated=False), "not a `lopt-trace compare --save` store"),
])
def test_cli_reuse_refuses_what_is_not_a_saved_comparison(tmp_path, tuned_file, make, needle, capsys):
    store = tmp_path / "other.zarr"
    make(store)
    code = main(["compare", "--task", "linear_regression", "--optimizer", "sgd", "--tuned", str(tuned_file),
                 "--seeds", "2", "--steps", str(STEPS), "--no-plot", "--no-progress", "--reuse", str(store)])
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_tuning_figure_scale_shows_the_plateau_not_the_first_candidates():
    """Near-diverged first candidates put the upper band at 10¹⁰; the y range still ends at 1.5× the
    highest median, with labelled 1-2-5 ticks inside it."""
    import holoviews as hv

    from lopt_trace.compare import tuning_figure
    from lopt_trace.tune import tuning_curve

    objective = np.r_[np.full(8, 1e10), np.linspace(0.9, 0.1, 56)]  # 1 in 8 random first candidates: 1e10
    curve = tuning_curve(xr.Dataset({"mean_objective": ("sample", objective)}), permutations=50)
    curve.attrs["task"] = "toy"
    assert np.nanmax(curve["high"].values) >= 1e10
    opts = hv.Store.lookup_options("bokeh", tuning_figure({"sgd": curve}), "plot").kwargs
    low, high = opts["ylim"]
    assert high == pytest.approx(1.5 * np.nanmax(curve["median"].values[np.isfinite(curve["median"].values)]))
    assert high < 1e3 and low == pytest.approx(0.9 * 0.1)
    ticks = [t for t, _ in opts["yticks"]]
    assert ticks and all(low <= t <= high for t in ticks) and 0.1 in ticks
