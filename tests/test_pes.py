"""PES (lopt_trace.pes): an unbiased meta-gradient estimate, persistent across truncations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt_trace import pes
from lopt_trace.metatrain import MetaTrainConfig, MetaTrainer, checkpoint_path, train
from lopt_trace.optimizers import LearnedGRU
from lopt_trace.optimizers.io import load_optimizer
from lopt_trace.tasks import get_task
from lopt_trace.unroll import run


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(tree)])


def _cosine(a, b):
    a, b = _flat(a), _flat(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _setup(steps, truncation, pairs, std=1e-3):
    task = get_task("linear_regression", dim=3, steps=steps)
    opt = LearnedGRU(units=2, output_scale=0.3)
    cfg = MetaTrainConfig(batch=2, truncation=truncation, estimator="pes", pes_pairs=pairs, pes_std=std)
    trainer = MetaTrainer(task, opt, cfg)
    theta = opt.init_theta(jax.random.PRNGKey(1))
    keys = jax.random.split(jax.random.PRNGKey(2), len(theta))
    theta = {k: jnp.asarray(v, jnp.float64) + 0.3 * jax.random.normal(kk, v.shape, jnp.float64)
             for (k, v), kk in zip(theta.items(), keys)}
    pop = trainer.sample_population(theta, 0)
    return task, opt, trainer, theta, pop


@pytest.mark.slow
def test_pes_estimate_matches_the_exact_meta_gradient_over_one_truncation():
    with jax.enable_x64(True):
        task, opt, trainer, theta, pop = _setup(steps=6, truncation=6, pairs=1000)
        exact = jax.grad(lambda t: trainer.meta_loss(t, pop, True)[0])(theta)
        state = pes.init_state(opt, theta, pop.inner, 1000)
        loss, est, _, losses = jax.jit(lambda th, s: pes.estimate(
            task, opt, th, s, pop.data, pop.f0, pop.inner, jax.random.PRNGKey(7), std=1e-3,
            truncation=6))(theta, state)
        assert losses.shape == (2, 2000)
        # the mean over particles is the unperturbed meta-objective, up to O(σ²)
        assert float(loss) == pytest.approx(float(trainer.meta_loss(theta, pop, True)[0]), rel=1e-4)
        assert _cosine(est, exact) > 0.97  # 28 weights, 2000 pairs: an unbiased estimate is close
        ratio = np.linalg.norm(_flat(est)) / np.linalg.norm(_flat(exact))
        assert 0.85 < ratio < 1.2


@pytest.mark.slow
def test_pes_accumulates_perturbations_across_truncations_and_resets_per_episode():
    with jax.enable_x64(True):
        task, opt, trainer, theta, pop = _setup(steps=6, truncation=3, pairs=1000)
        step = jax.jit(lambda th, s, start, key: pes.estimate(
            task, opt, th, s, pop.data, pop.f0, start, key, std=1e-3, truncation=3))
        keys = jax.random.split(jax.random.PRNGKey(3), 3)
        eps = [pes.perturbations(k, theta, (2, 1000), 1e-3) for k in keys]
        state = pes.init_state(opt, theta, pop.inner, 1000)
        _, g1, state, _ = step(theta, state, pop.inner, keys[0])   # fresh episode
        for k in theta:
            np.testing.assert_allclose(state.accumulator[k], eps[0][k], rtol=1e-9, atol=1e-15)
        assert (np.asarray(state.particles.step) == 3).all()
        _, g2, state2, _ = step(theta, state, None, keys[1])        # carries on
        for k in theta:
            np.testing.assert_allclose(state2.accumulator[k], eps[0][k] + eps[1][k], rtol=1e-9, atol=1e-15)
        assert (np.asarray(state2.particles.step) == 6).all()
        # the second truncation's estimate is of the gradient through the whole episode so far:
        # θ shaped the state at the boundary too, which a truncated estimator leaves out
        def second_truncation(th, hold):
            def one(inner, data, f0):
                inner = inner._replace(h=opt.init_state(th, inner.x.shape[0]))
                mid, _ = run(task, opt, th, data, inner, 3)
                if hold:
                    mid = jax.lax.stop_gradient(mid)
                _, losses = run(task, opt, th, data, mid, 3)
                return jnp.mean(losses) / f0
            return jnp.mean(jax.vmap(one)(pop.inner, pop.data, pop.f0))

        full = jax.grad(second_truncation)(theta, False)
        trunc = jax.grad(second_truncation)(theta, True)
        assert _cosine(full, trunc) < 0.9       # the test can tell the two apart
        assert _cosine(g2, full) > 0.95
        assert _cosine(g2, full) > _cosine(g2, trunc) + 0.05
        # a fresh episode restarts the particles and the accumulators
        _, _, state3, _ = step(theta, state2, pop.inner, keys[2])
        for k in theta:
            np.testing.assert_allclose(state3.accumulator[k], eps[2][k], rtol=1e-9, atol=1e-15)
        assert (np.asarray(state3.particles.step) == 3).all()


@pytest.mark.slow
def test_pes_training_stopped_by_a_time_budget_resumes_bit_for_bit(tmp_path):
    task = get_task("linear_regression", steps=20)
    opt = LearnedGRU(units=3, output_scale=0.1)
    cfg = MetaTrainConfig(iterations=5, batch=2, truncation=10, checkpoint_every=2, seed=3,
                          estimator="pes", pes_pairs=2, pes_std=0.02)
    full = train(task, opt, cfg, tmp_path / "full.zarr", progress=False)
    out = tmp_path / "resumed.zarr"
    ticks = iter(range(10**6))  # a clock that advances 1 s per reading: the budget ends mid-episode
    partial = train(task, opt, cfg, out, progress=False, time_budget=9.5,
                    clock=lambda: float(next(ticks)))
    assert partial.attrs["stopped"] == "time budget"
    assert partial.sizes["iteration"] == 3  # odd: the second truncation of an episode is next
    assert checkpoint_path(out).exists() and not out.exists()
    from lopt_trace.zarr_io import open_tree

    spent = open_tree(checkpoint_path(out)).attrs["wall_time_s"]  # real seconds so far
    assert spent > 0
    resumed = train(task, opt, cfg, out, progress=False, resume=True)  # particles were in flight
    assert load_optimizer(out).attrs["metatrain"]["wall_time_s"] > spent  # summed over both commands
    assert not checkpoint_path(out).exists() and "stopped" not in resumed.attrs
    np.testing.assert_array_equal(full["meta_loss"].values, resumed["meta_loss"].values)
    a, b = load_optimizer(tmp_path / "full.zarr"), load_optimizer(out)
    for k in a.theta:
        np.testing.assert_array_equal(a.theta[k], b.theta[k])  # bit for bit
    settings = a.attrs["metatrain"]
    assert (settings["estimator"], settings["pes_pairs"], settings["pes_std"]) == ("pes", 2, 0.02)
    assert np.isfinite(full["meta_loss"].values).all() and float(full["meta_grad_norm"][0]) > 0
    # backpropagation's settings carry no estimator keys: files and checkpoints read as before
    assert not set(MetaTrainConfig().settings()) & {"estimator", "pes_std", "pes_pairs"}
