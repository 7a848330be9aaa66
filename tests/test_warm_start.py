"""Warm starts: the (β, α, s) search, and meta-training and resuming from its best candidate."""

import subprocess
import sys

import jax
import numpy as np
import pytest
import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.metatrain import MetaTrainConfig, checkpoint_path, train
from lopt_trace.optimizers.io import load_optimizer
from lopt_trace.tasks import get_task
from lopt_trace.tune import best_config, sample_problems, tuning_seeds
from lopt_trace.unroll import loss_curve, meta_objective
from lopt_trace.warm_start import SPACE, SPACE_NORMALIZED, search, warm_start


def test_search_scores_and_the_warm_gru_reproduces_the_best_candidate():
    task = get_task("linear_regression", steps=30)
    opt, theta, ds = warm_start(task, units=6, key=jax.random.PRNGKey(2), samples=24, problems=3,
                                progress=False)
    assert dict(ds.sizes) == {"sample": 24, "problem": 3}
    assert set(SPACE) <= set(ds.data_vars) and ds.attrs["warm_start"] == "sign-momentum"
    for name, dist in SPACE.items():
        lo, hi = sorted((1 - dist.high, 1 - dist.low) if dist.complement else (dist.low, dist.high))
        assert np.all((ds[name] >= lo * 0.999) & (ds[name] <= hi * 1.001))
    best = best_config(ds)
    assert best["objective"] == pytest.approx(float(ds["mean_objective"].min()))
    assert best["objective"] < float(np.median(ds["mean_objective"]))  # the candidates do differ
    assert opt.units == 6 and opt.input_scale == pytest.approx(best["theta"]["sharpness"])
    # the 6-unit GRU starts exactly as the one-unit candidate that was scored
    problems = sample_problems(task, tuning_seeds(3))
    curves = jax.vmap(lambda p: loss_curve(task, opt, theta, p, 30))(problems)
    np.testing.assert_allclose(meta_objective(curves), ds["objective"].values[best["sample"]], rtol=2e-3)


@pytest.mark.slow
def test_normalised_input_warm_start_searches_its_own_space_and_reproduces_the_best():
    task = get_task("two_moons", steps=25)
    opt, theta, ds = warm_start(task, units=4, key=jax.random.PRNGKey(0), samples=12, problems=2,
                                input_norm=0.999, progress=False)
    assert opt.input_norm == 0.999 and opt.state_names[-1] == "gmax"
    assert ds.attrs["input_norm"] == 0.999
    s = SPACE_NORMALIZED["sharpness"]
    assert np.all((ds["sharpness"] >= s.low * 0.999) & (ds["sharpness"] <= s.high * 1.001))
    best = best_config(ds)
    problems = sample_problems(task, tuning_seeds(2))
    curves = jax.vmap(lambda p: loss_curve(task, opt, theta, p, 25))(problems)
    np.testing.assert_allclose(meta_objective(curves), ds["objective"].values[best["sample"]], rtol=2e-3)


@pytest.mark.slow
def test_warm_started_training_stores_the_search_and_resumes_bit_for_bit(tmp_path):
    task = get_task("linear_regression", steps=20)
    opt, theta, ds = warm_start(task, units=3, samples=8, problems=2, progress=False)
    cfg = MetaTrainConfig(iterations=6, batch=2, checkpoint_every=2, seed=1)
    full = train(task, opt, cfg, tmp_path / "full.zarr", progress=False, theta0=theta, warm_start=ds)
    # iteration 0 is scored with the warm θ itself, so it is the warm start's own objective
    first = float(full["meta_loss"].values[0])
    assert np.isfinite(first) and first < float(np.median(ds["mean_objective"]))
    out = tmp_path / "resumed.zarr"
    train(task, opt, cfg, out, progress=False, theta0=theta, warm_start=ds, stop_after=3)
    assert checkpoint_path(out).exists() and not out.exists()
    train(task, opt, cfg, out, progress=False, resume=True, warm_start=ds)
    a, b = load_optimizer(tmp_path / "full.zarr"), load_optimizer(out)
    for k in a.theta:
        np.testing.assert_array_equal(a.theta[k], b.theta[k])
    tree = xr.open_datatree(out, engine="zarr")
    assert "warm_start" in tree.children and tree["warm_start"].sizes["sample"] == 8
    settings = tree.attrs["metatrain"]["warm_start"]
    assert settings["kind"] == "sign-momentum"
    assert settings["theta"] == pytest.approx(best_config(ds)["theta"])


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lopt_trace.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cli_warm_start(tmp_path):
    out = tmp_path / "w.zarr"
    base = ["train", "--task", "rosenbrock", "--steps", "10", "--units", "3", "--batch", "2",
            "--warm-start", "sign-momentum", "--warm-start-samples", "6", "--warm-start-seeds", "2",
            "--out", str(out)]
    r = _cli(*base, "--output-scale", "0.1")
    assert r.returncode == 2 and "--output-scale" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli(*base, "--iterations", "2")
    assert r.returncode == 0, r.stderr
    assert "warm start: sign-momentum" in r.stdout and f"wrote {out}" in r.stdout
    loaded = load_optimizer(out)
    ws = loaded.attrs["metatrain"]["warm_start"]
    assert loaded.optimizer.input_scale == pytest.approx(ws["theta"]["sharpness"])
    assert loaded.optimizer.output_scale == pytest.approx(ws["theta"]["learning_rate"])
    r = _cli(*base, "--iterations", "2")  # exists: refused before any search
    assert r.returncode == 2 and "--overwrite" in r.stderr and "warm start" not in r.stdout
    r = _cli(*base[:-1], str(tmp_path / "new.zarr"), "--iterations", "2", "--resume")
    assert r.returncode == 2 and "nothing to resume" in r.stderr
    assert not (tmp_path / "new.zarr").exists()
    r = _cli(*base[:-1], str(tmp_path / "n.zarr"), "--input-norm", "1.5")
    assert r.returncode == 2 and "[0, 1]" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli(*base[:-1], str(tmp_path / "n.zarr"), "--input-norm", "0.999", "--iterations", "2")
    assert r.returncode == 0, r.stderr
    assert "warm start: normalised sign-momentum" in r.stdout
    normed = load_optimizer(tmp_path / "n.zarr")
    assert normed.optimizer.input_norm == 0.999 and normed.optimizer.state_names[-1] == "gmax"
    assert xr.open_datatree(tmp_path / "n.zarr", engine="zarr")["warm_start"].attrs["input_norm"] == 0.999


@pytest.mark.slow
def test_validation_scores_checkpoints_and_keeps_the_best_theta(tmp_path):
    from lopt_trace import seeds
    from lopt_trace.metatrain import VALIDATION_SEED_BASE

    task = get_task("linear_regression", steps=15)
    opt, theta, ds = warm_start(task, units=3, samples=6, problems=2, progress=False)
    # a reckless meta learning rate: later θ may be worse than the start, and must then lose
    cfg = MetaTrainConfig(iterations=6, batch=2, checkpoint_every=2, validation=3, learning_rate=0.3)
    history = train(task, opt, cfg, tmp_path / "v.zarr", progress=False, theta0=theta, warm_start=ds)
    assert history["checkpoint"].values.tolist() == [0, 2, 4, 6]
    scores = history["validation"].values
    keys = seeds.problem_keys(seeds.train_seeds(VALIDATION_SEED_BASE, 0, 3))
    problems = jax.vmap(task.sample)(keys)
    start = jax.vmap(lambda p: meta_objective(loss_curve(task, opt, theta, p, 15)))(problems)
    assert scores[0] == pytest.approx(float(np.mean(start)), rel=1e-5)
    best = int(np.argmin(np.where(np.isfinite(scores), scores, np.inf)))
    assert int(history["selected_checkpoint"]) == history["checkpoint"].values[best]
    saved = load_optimizer(tmp_path / "v.zarr").theta
    kept = xr.open_datatree(tmp_path / "v.zarr", engine="zarr")["meta_train"].to_dataset()
    for k in saved:
        np.testing.assert_array_equal(saved[k], kept[f"theta_{k}"].values[best])
    with pytest.raises(UserError, match="--validation"):
        MetaTrainConfig(validation=-1).validate()


@pytest.mark.slow
def test_cli_resumes_a_warm_started_run_without_searching_again(tmp_path):
    task = get_task("rosenbrock")
    opt, theta, ds = warm_start(task, 3, key=jax.random.PRNGKey(0), samples=6, problems=2, steps=10,
                                progress=False)
    out = tmp_path / "r.zarr"
    cfg = MetaTrainConfig(iterations=4, batch=2, steps=10, checkpoint_every=2)  # the CLI's defaults
    train(task, opt, cfg, out, progress=False, theta0=theta, warm_start=ds, stop_after=2)
    r = _cli("train", "--task", "rosenbrock", "--steps", "10", "--units", "3", "--batch", "2",
             "--iterations", "4", "--checkpoint-every", "2", "--warm-start", "sign-momentum",
             "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    assert "warm start:" not in r.stdout and f"wrote {out}" in r.stdout
    assert load_optimizer(out).optimizer.config() == opt.config()
    assert load_optimizer(out).meta_train.sizes["iteration"] == 4
