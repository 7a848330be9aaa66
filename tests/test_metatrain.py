"""Meta-training: exact meta-gradients, progress, checkpoints, resume, history, CLI errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt_trace import seeds
from lopt_trace.errors import UserError
from lopt_trace.metatrain import MetaTrainConfig, MetaTrainer, checkpoint_path, train
from lopt_trace.optimizers import LearnedGRU
from lopt_trace.optimizers.io import load_optimizer
from lopt_trace.tasks import get_task
from lopt_trace.unroll import loss_curve, meta_objective


def test_meta_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        task = get_task("linear_regression", dim=3, steps=6)
        opt = LearnedGRU(units=3, output_scale=0.3)
        trainer = MetaTrainer(task, opt, MetaTrainConfig(batch=2, l2=1e-3))
        theta = opt.init_theta(jax.random.PRNGKey(1))
        keys = jax.random.split(jax.random.PRNGKey(2), len(theta))
        theta = {k: jnp.asarray(v, jnp.float64) + 0.3 * jax.random.normal(kk, v.shape, jnp.float64)
                 for (k, v), kk in zip(theta.items(), keys)}
        pop = trainer.sample_population(theta, 0)
        loss = lambda t: trainer.meta_loss(t, pop, True)[0]
        grad = jax.grad(loss)(theta)
        direction = {k: jax.random.normal(kk, v.shape, jnp.float64) for (k, v), kk in zip(theta.items(), keys)}
        eps = 1e-5
        plus = loss({k: theta[k] + eps * direction[k] for k in theta})
        minus = loss({k: theta[k] - eps * direction[k] for k in theta})
        numeric = (plus - minus) / (2 * eps)
        analytic = sum(jnp.vdot(grad[k], direction[k]) for k in theta)
        assert float(analytic) == pytest.approx(float(numeric), rel=1e-6)
        assert float(jnp.abs(grad["h0"]).sum()) > 0  # the learned initial state gets gradient


def test_meta_objective_definition():
    curve = jnp.array([[2.0, 1.0, 0.5, 0.5], [1.0, jnp.nan, 1.0, 1.0]])
    np.testing.assert_allclose(meta_objective(curve), [(1.0 + 0.5 + 0.5) / 3 / 2.0, np.inf])
    # the NumPy form the recipes and distillation score recorded curves with is the same formula
    from lopt_trace.analysis import meta_objective as recorded

    np.testing.assert_array_equal(recorded(np.asarray(curve)), [(1.0 + 0.5 + 0.5) / 3 / 2.0, np.inf])
    curves = np.random.default_rng(0).uniform(0.1, 2.0, (3, 5, 11)).astype(np.float32)
    np.testing.assert_allclose(recorded(curves), meta_objective(jnp.asarray(curves)), rtol=1e-6)


def test_a_few_iterations_lower_the_meta_loss(tmp_path):
    task = get_task("linear_regression", steps=50)
    opt = LearnedGRU(units=8, output_scale=0.1)
    cfg = MetaTrainConfig(iterations=60, batch=8, learning_rate=1e-2, checkpoint_every=20)
    history = train(task, opt, cfg, tmp_path / "lr.zarr", progress=False)
    loss = history["meta_loss"].values
    assert loss[:5].mean() > 0.9  # the zero readout starts at f_k / f_0 = 1
    assert loss[-10:].mean() < 0.75 * loss[:5].mean()
    assert history.sizes["checkpoint"] == 3 and list(history["checkpoint"].values) == [20, 40, 60]
    assert int(history["skipped_total"]) == 0
    # the file holds the final θ (= the last checkpoint), config and history; held-out problems improve
    trained = load_optimizer(tmp_path / "lr.zarr")
    np.testing.assert_array_equal(trained.theta["readout"], history["theta_readout"].values[-1])
    assert trained.attrs["metatrain"]["iterations"] == 60 and trained.attrs["task"]["steps"] == 50
    done = trained.attrs["metatrain"]  # a finished file says so, with its wall time and machine
    assert done["finished"] is True and done["iterations_done"] == 60
    assert 0 < done["wall_time_s"] < 3600 and done["machine"]["cpu_count"] >= 1
    assert trained.meta_train["meta_loss"].shape == (60,)
    keys = seeds.problem_keys(seeds.test_seeds(0, 16))
    problems = jax.vmap(task.sample)(keys)
    untrained = opt.init_theta(jax.random.PRNGKey(0))
    curve = lambda th: jax.vmap(lambda p: loss_curve(task, opt, th, p, 50))(problems)
    assert float(meta_objective(curve(trained.theta)).mean()) < float(meta_objective(curve(untrained)).mean())


def test_truncated_unrolls_and_non_finite_steps_are_skipped(tmp_path):
    task = get_task("linear_regression", steps=20)
    # a θ with an infinite entry makes the meta-loss NaN: the step must be skipped, not crash
    opt = LearnedGRU(units=4, output_scale=0.1)
    cfg = MetaTrainConfig(iterations=8, batch=4, truncation=5, learning_rate=1.0, checkpoint_every=4)
    trainer = MetaTrainer(task, opt, cfg)
    assert trainer.segments == 4
    state = trainer.init()
    state = state._replace(theta={**state.theta, "U_z": jnp.full_like(state.theta["U_z"], jnp.inf)})
    before = jax.tree.map(np.asarray, state.theta)
    state, metrics = trainer.step(state, 0)
    assert bool(metrics["skipped"])
    assert not np.isfinite(metrics["meta_loss"])
    for k in before:  # a skipped step leaves θ alone
        np.testing.assert_array_equal(before[k], np.asarray(state.theta[k]))
    assert int(state.opt_state.total_notfinite) == 1
    history = train(task, LearnedGRU(units=4, output_scale=0.1), cfg, tmp_path / "t.zarr", progress=False)
    assert history.sizes["iteration"] == 8 and np.isfinite(history["meta_loss"].values).all()


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(tmp_path):
    task = get_task("linear_regression", steps=20)
    opt = LearnedGRU(units=4, output_scale=0.1)
    cfg = MetaTrainConfig(iterations=12, batch=4, truncation=10, checkpoint_every=4, seed=3)
    full = train(task, opt, cfg, tmp_path / "full.zarr", progress=False)
    out = tmp_path / "resumed.zarr"
    partial = train(task, opt, cfg, out, progress=False, stop_after=6)  # "interrupted" after 6
    assert partial.sizes["iteration"] == 6 and not out.exists() and checkpoint_path(out).exists()
    with pytest.raises(UserError, match="--resume"):
        train(task, opt, cfg, out, progress=False)
    resumed = train(task, opt, cfg, out, progress=False, resume=True)
    assert not checkpoint_path(out).exists()
    np.testing.assert_array_equal(full["meta_loss"].values, resumed["meta_loss"].values)
    a, b = load_optimizer(tmp_path / "full.zarr"), load_optimizer(out)
    for k in a.theta:
        np.testing.assert_array_equal(a.theta[k], b.theta[k])  # bit for bit
    with pytest.raises(UserError, match="nothing to resume"):
        train(task, opt, cfg, tmp_path / "other.zarr", progress=False, resume=True)
    other = MetaTrainConfig(iterations=12, batch=4, truncation=10, checkpoint_every=4, seed=4)
    train(task, opt, cfg, tmp_path / "x.zarr", progress=False, stop_after=4)
    with pytest.raises(UserError, match="other settings"):
        train(task, opt, other, tmp_path / "x.zarr", progress=False, resume=True)


def test_training_and_test_seeds_are_disjoint():
    train_max = max(seeds.train_seeds(b, it, 64).max() for b in (0, 1, 99999) for it in (0, 10**6))
    assert train_max < seeds.TEST_SEED_START <= seeds.test_seeds(0, 64).min()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lopt_trace.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_cli_errors_are_one_line_and_leave_nothing(tmp_path):
    for args in (["train", "--task", "nope"], ["train", "--task", "rosenbrock", "--iterations", "-3"],
                 ["train", "--task", "rosenbrock", "--units", "many"]):
        r = _cli(*args, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "exists.zarr"
    existing.mkdir()
    (existing / "keep").write_text("precious")
    r = _cli("train", "--task", "rosenbrock", "--out", str(existing), cwd=tmp_path)
    assert r.returncode == 2 and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (existing / "keep").read_text() == "precious"


@pytest.mark.slow
def test_cli_train_and_tasks(tmp_path):
    r = _cli("tasks")
    assert r.returncode == 0 and "82,250" in r.stdout and "8,577" in r.stdout
    out = tmp_path / "opt.zarr"
    r = _cli("train", "--task", "rosenbrock", "--iterations", "3", "--batch", "2", "--steps", "10",
             "--units", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "meta-loss" in r.stdout
    assert load_optimizer(out).optimizer.units == 4
    for cmd in ("train", "tasks"):
        assert _cli(cmd, "--help").returncode == 0


@pytest.mark.slow
def test_fast_meta_gradient_paths_agree_with_the_reference():
    """The GRU's hand-written VJP and the population unroll (run_population) give the values and
    meta-gradients of the plain code (opt.step, autodiff, run per problem), exact and first-order."""
    from lopt_trace.unroll import run

    with jax.enable_x64(True):
        task = get_task("linear_regression", dim=3, steps=6)
        for opt in (LearnedGRU(units=3, output_scale=0.3),
                    LearnedGRU(units=3, output_scale=0.3, input_norm=0.9, clip=2.0)):
            theta = opt.init_theta(jax.random.PRNGKey(1))
            keys = jax.random.split(jax.random.PRNGKey(2), len(theta))
            theta = {k: jnp.asarray(v, jnp.float64) + 0.3 * jax.random.normal(kk, v.shape, jnp.float64)
                     for (k, v), kk in zip(theta.items(), keys)}
            h = jnp.abs(jax.random.normal(jax.random.PRNGKey(3), (5, opt.state_size), jnp.float64))
            g = jax.random.normal(jax.random.PRNGKey(4), (5,), jnp.float64)
            ct = (jax.random.normal(jax.random.PRNGKey(5), h.shape, jnp.float64), g[::-1])
            ref = jax.vjp(opt.step, theta, h, g)
            fast = jax.vjp(opt.fast_step, theta, h, g)
            for a, b in zip(jax.tree.leaves((ref[0], ref[1](ct))), jax.tree.leaves((fast[0], fast[1](ct)))):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
        # the population unroll: exact from a fresh episode, first-order mid-episode
        opt = LearnedGRU(units=3, output_scale=0.3, input_norm=0.9, clip=2.0)
        theta = {k: jnp.asarray(v, jnp.float64) for k, v in theta.items()}
        for first_order, fresh in ((False, True), (True, False)):
            trainer = MetaTrainer(task, opt, MetaTrainConfig(batch=2, truncation=3, first_order=first_order))
            pop = trainer.sample_population(theta, 0)

            def reference(t):
                def one(inner, data, f0):
                    if fresh:
                        inner = inner._replace(h=opt.init_state(t, inner.x.shape[0]))
                    _, losses = run(task, opt, t, data, inner, 3, remat=True, first_order=first_order)
                    return jnp.mean(losses) / f0
                return jnp.mean(jax.vmap(one)(pop.inner, pop.data, pop.f0))

            value, grad = jax.value_and_grad(lambda t: trainer.meta_loss(t, pop, fresh)[0])(theta)
            ref_value, ref_grad = jax.value_and_grad(reference)(theta)
            assert float(value) == pytest.approx(float(ref_value), rel=1e-12)
            for k in theta:
                np.testing.assert_allclose(grad[k], ref_grad[k], rtol=1e-9, atol=1e-13)
            assert float(jnp.abs(grad["U_z"]).sum()) > 0 and (float(jnp.abs(grad["h0"]).sum()) > 0) == fresh


@pytest.mark.parametrize("text,seconds", [("90m", 5400), ("2h", 7200), ("3600s", 3600), ("1h30m", 5400),
                                          ("1.5h", 5400), ("45s", 45), ("1h0m30s", 3630)])
def test_durations(text, seconds):
    from lopt_trace.cli.train import duration

    assert duration(text) == seconds


def test_bad_time_budgets_are_one_line_errors(capsys):
    from lopt_trace.cli import main

    for bad in ("soon", "90", "-5m", "0s", "1h-30m", "2 h", "", "1m1h"):
        with pytest.raises(SystemExit) as exc:
            main(["train", "--task", "rosenbrock", "--time-budget", bad])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, (bad, err)
        assert "--time-budget" in err and "Traceback" not in err
        assert "duration" in err or bad.startswith("-")  # argparse: "-5m" looks like an option


@pytest.mark.slow
def test_cli_time_budget_checkpoints_and_says_how_to_resume(tmp_path):
    out = tmp_path / "opt.zarr"
    args = ["train", "--task", "rosenbrock", "--iterations", "200", "--batch", "1", "--steps", "4",
            "--units", "2", "--checkpoint-every", "100", "--out", str(out)]
    r = _cli(*args, "--time-budget", "1s")  # compiling alone takes longer: one iteration, then stop
    assert r.returncode == 0, r.stderr
    assert "time budget spent" in r.stdout and "of 200 iterations" in r.stdout
    assert not out.exists() and checkpoint_path(out).exists()
    r = _cli(*args, "--pes-pairs", "3")
    assert r.returncode == 2 and "--estimator pes" in r.stderr and len(r.stderr.strip().splitlines()) == 1
