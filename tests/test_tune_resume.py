"""Resumable tuning searches, the near-tie selection rule, validation and the tuning curve."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import xarray as xr

import lopt_trace.tune as tunelib
from lopt_trace.cli import main
from lopt_trace.errors import UserError
from lopt_trace.metatrain import checkpoint_path
from lopt_trace.tasks import get_task
from lopt_trace.tune import (
    best_config,
    plateau_improvement,
    read_tune_store,
    select,
    selected_config,
    tune,
    tune_to_store,
    tuning_curve,
)

#: what may differ between an interrupted-and-resumed search and an uninterrupted one
TIMING_ATTRS = {"compile_seconds", "eval_seconds", "candidates_per_second", "created"}

SEARCH = dict(samples=10, problems=3, batch=3, validation_problems=4, checkpoint_every=1,
              progress=False)  # 4 batches of 3 candidates per optimizer


@pytest.fixture
def counted(monkeypatch):
    """Count the calls of every evaluator the search makes, by the number of problems given."""
    calls = {}
    real = tunelib.make_evaluator

    def make(*args, **kwargs):
        fn = real(*args, **kwargs)

        def counting(thetas, problems):
            n = int(jax.tree.leaves(problems)[0].shape[0])
            calls[n] = calls.get(n, 0) + 1
            return fn(thetas, problems)

        return counting

    for module in (tunelib.scoring, tunelib.search, tunelib.selection):  # every caller
        monkeypatch.setattr(module, "make_evaluator", make)
    return calls


def _assert_same_store(a, b):
    ra, rb = read_tune_store(a), read_tune_store(b)
    assert list(ra) == list(rb)
    for name in ra:
        xr.testing.assert_identical(ra[name].drop_attrs(), rb[name].drop_attrs())  # bit for bit
        for k in ra[name].variables:
            np.testing.assert_array_equal(ra[name][k].values, rb[name][k].values)
        keep = lambda d: {k: v for k, v in d.items() if k not in TIMING_ATTRS}  # noqa: E731
        assert keep(ra[name].attrs) == keep(rb[name].attrs)


def test_interrupted_search_resumes_without_repeating_a_batch(tmp_path, counted):
    task = get_task("linear_regression", steps=10)
    names = ["sgd", "momentum"]
    full = tune_to_store(task, names, tmp_path / "full.zarr", **SEARCH)
    assert full.stopped is None and full.batches == {"sgd": (4, 4), "momentum": (4, 4)}
    assert counted == {3: 8, 4: 2}  # 8 candidate batches on the 3 tuning problems, 2 validations
    counted.clear()

    out = tmp_path / "resumed.zarr"
    first = tune_to_store(task, names, out, stop_after=3, **SEARCH)  # inside sgd's search
    assert first.stopped == "stop_after" and first.batches == {"sgd": (3, 4), "momentum": (0, 4)}
    assert checkpoint_path(out).exists() and not out.exists()
    with pytest.raises(UserError, match="other settings"):
        tune_to_store(task, names, out, resume=True, **{**SEARCH, "samples": 11})
    with pytest.raises(UserError, match="--resume"):  # an unfinished search is not silently replaced
        tune_to_store(task, names, out, **SEARCH)
    second = tune_to_store(task, names, out, stop_after=6, resume=True, **SEARCH)  # past sgd
    assert second.batches == {"sgd": (4, 4), "momentum": (2, 4)} and list(second.results) == ["sgd"]
    last = tune_to_store(task, names, out, resume=True, **SEARCH)
    assert last.stopped is None and out.exists() and not checkpoint_path(out).exists()
    assert counted == {3: 8, 4: 2}  # every batch evaluated exactly once over the three calls
    _assert_same_store(tmp_path / "full.zarr", out)

    with pytest.raises(UserError, match="nothing to resume"):
        tune_to_store(task, names, tmp_path / "none.zarr", resume=True, **SEARCH)


def test_time_budget_stops_and_resumes_from_the_cli(tmp_path, capsys, counted, monkeypatch):
    out, bundle = tmp_path / "t.zarr", tmp_path / "t.json"
    argv = ["tune", "--task", "rosenbrock", "--optimizer", "momentum", "--samples", "12", "--seeds",
            "2", "--steps", "20", "--batch", "4", "--validation-problems", "3", "--checkpoint-every",
            "1", "--out", str(out), "--bundle", str(bundle), "--no-progress"]
    # a clock that advances 10 s per evaluator call: a 15 s budget allows one batch per call
    real = tunelib.tune_to_store
    fake = lambda: 10.0 * sum(counted.values())  # noqa: E731
    monkeypatch.setattr(tunelib, "tune_to_store", lambda *a, **k: real(*a, **k, clock=fake))
    assert main([*argv, "--time-budget", "15s"]) == 0
    text = capsys.readouterr().out
    assert "time budget spent" in text and "momentum 1/3" in text and "--resume" in text
    assert not bundle.exists() and checkpoint_path(out).exists()
    for _ in range(2):  # two more batches; the validation is left
        assert main([*argv, "--time-budget", "15s", "--resume"]) == 0
        assert not out.exists()
    assert main([*argv, "--time-budget", "15s", "--resume"]) == 0
    assert out.exists() and counted[2] == 3 and counted[3] == 1
    text = capsys.readouterr().out
    assert "momentum: best" in text and "validation" in text and f"wrote {out}" in text
    entry = json.loads(bundle.read_text())["optimizers"]["momentum"]
    assert entry["samples"] == 12 and entry["validation"]["problems"] == 3
    assert entry["selection"]["tied_count"] >= 1 and "plateaued" in entry["tuning_curve"]
    assert main(argv) == 2  # the finished store is not replaced without --overwrite
    assert "already exists" in capsys.readouterr().err


def test_time_budget_leaves_a_validation_that_costs_more_than_a_batch(tmp_path, counted):
    """On MNIST the validation (2 candidates x 16 problems) costs two tuning batches (4 x 4): the
    budget must count it so, not as one batch."""
    task = get_task("linear_regression", steps=10)
    clock = lambda: 10.0 * sum(counted.values())  # noqa: E731  (10 s per evaluator call)
    search = dict(samples=2, problems=1, batch=1, validation_problems=8, progress=False)
    # validation = 2 x 8 candidate-problems = 16 batches of 1 x 1: 20 s spent + 160 s > 45 s
    first = tune_to_store(task, ["sgd"], tmp_path / "t.zarr", time_budget=45.0, clock=clock, **search)
    assert first.stopped == "time budget" and first.batches == {"sgd": (2, 2)}
    assert counted == {1: 2} and checkpoint_path(tmp_path / "t.zarr").exists()  # no validation ran
    done = tune_to_store(task, ["sgd"], tmp_path / "t.zarr", resume=True, time_budget=45.0,
                         clock=clock, **search)  # no batch left: the validation runs
    assert done.stopped is None and counted[8] == 1 and (tmp_path / "t.zarr").exists()


def test_selection_breaks_near_ties_toward_the_steadier_candidate():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=16)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # mean 0, std 1 over the 16 problems
    obj = np.stack([
        1.00 + 0.30 * noise,                 # 0: lowest mean, spread 0.3
        1.01 + 0.05 * noise,                 # 1: within one paired sem of 0, spread 0.05: chosen
        1.50 + 0.01 * noise,                 # 2: steadiest but clearly worse: not tied
        np.r_[np.inf, np.ones(15)],          # 3: failed on one problem
    ])
    sel = select(obj)
    assert sel["lowest_mean"] == 0 and sel["selected"] == 1
    assert sel["rule"] == "least spread among near-ties" and sel["tied_count"] == 2
    assert list(sel["tied"]) == [True, True, False, False]
    d = obj[1] - obj[0]
    assert sel["paired_sem"][1] == pytest.approx(d.std(ddof=1) / 4)
    # no near-tie: the lowest mean; one problem: no sem, so the lowest mean too
    assert select(obj[[0, 2]])["selected"] == 0 and select(obj[[0, 2]])["rule"] == "lowest mean"
    assert select(obj[:, :1])["selected"] == int(np.argmin(obj[:3, 0]))
    assert select(np.full((3, 2), np.inf))["selected"] == -1


def test_tune_records_selection_and_validation_and_best_config_is_lowest_mean():
    task = get_task("linear_regression", steps=20)
    ds = tune(task, "adam", samples=24, problems=4, progress=False, validation_problems=5)
    sel = select(ds["objective"].values)
    assert ds.attrs["selected_sample"] == sel["selected"] and ds.attrs["tied_count"] == sel["tied_count"]
    assert ds.attrs["best_sample"] == best_config(ds)["sample"] == int(np.argmin(ds["mean_objective"].values))
    chosen = selected_config(ds)
    assert chosen["sample"] == sel["selected"] and set(chosen["theta"]) == {"learning_rate", "b1", "b2", "eps"}
    v = ds["validation_objective"]
    assert v.dims == ("choice", "validation_problem") and v.sizes["validation_problem"] == 5
    assert ds.attrs["validation_mean"] == pytest.approx(float(v.sel(choice="selected").mean()))
    seeds = ds["validation_problem"].values
    assert not set(seeds) & set(ds["problem"].values)
    # the validation numbers are the candidate's own scores on those problems
    again = tune(task, "adam", samples=24, problems=5, progress=False,
                 seed_base=int(tunelib.TUNE_VALIDATION_SEED_BASE))
    assert set(again["problem"].values) == set(seeds)
    np.testing.assert_allclose(again["objective"].values[chosen["sample"]],
                               v.sel(choice="selected").values, rtol=1e-6)


def test_tuning_curve_band_and_plateau():
    ds = xr.Dataset({"mean_objective": ("sample", np.r_[np.inf, np.linspace(2.0, 1.0, 19)])})
    c = tuning_curve(ds, permutations=50)
    assert list(c.sizes) == ["candidates"] and c.sizes["candidates"] == 20
    for k in ("in_order", "median", "low", "high", "mean"):
        assert np.all(np.diff(c[k].values[np.isfinite(c[k].values)]) <= 0)  # never gets worse
    assert np.all(c["low"].values <= c["median"].values) and np.all(c["median"].values <= c["high"].values)
    assert c["median"].values[-1] == c["low"].values[-1] == c["high"].values[-1] == 1.0
    assert c["in_order"].values[0] == np.inf and c["in_order"].values[-1] == 1.0
    # steps of 5.6 % between the best candidates: the first half's best is well above the best
    assert not c.attrs["plateaued"] and c.attrs["improvement_last_half"] > 0.01
    flat = xr.Dataset({"mean_objective": ("sample", np.r_[np.full(97, 3.0), 1.0, 1.0, 1.0])})
    assert not tuning_curve(flat).attrs["plateaued"]  # the best came late: half the orders miss it
    early = xr.Dataset({"mean_objective": ("sample", np.r_[np.full(50, 1.0), np.full(50, 3.0)])})
    assert tuning_curve(early).attrs["plateaued"]
    assert plateau_improvement(np.array([np.inf, 2.0, 1.0])) == 1.0
    assert plateau_improvement(np.array([np.inf, np.inf, 1.0])) == np.inf
    assert np.isnan(plateau_improvement(np.array([1.0])))
