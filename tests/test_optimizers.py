"""The component-wise protocol, the baselines' exactness against optax, the GRU, the adapter."""

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
import optax
import pytest

from lopt_trace.optimizers import (BASELINES, OPTIMIZERS, LearnedGRU, as_gradient_transformation,
                                   make_optimizer, momentum_gru, fold_scales, sign_momentum_gru)
from lopt_trace.optimizers.io import load_optimizer, save_optimizer
from lopt_trace.errors import UserError


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_protocol_shapes(name):
    opt = make_optimizer(name) if name != "learned" else LearnedGRU(units=6)
    theta = opt.init_theta(jax.random.PRNGKey(0))
    h = opt.init_state(theta, 7)
    assert h.shape == (7, opt.state_size) and len(opt.state_names) == opt.state_size
    g = jnp.linspace(-1, 1, 7)
    h1 = opt.F(theta, h, g)
    assert h1.shape == (7, opt.state_size)
    assert opt.readout(theta, h1).shape == (7,)
    # one component at a time gives the same answer (F broadcasts over leading dims)
    single = jax.vmap(lambda hh, gg: opt.readout(theta, opt.F(theta, hh, gg)))(h, g)
    np.testing.assert_allclose(single, opt.readout(theta, h1), rtol=1e-6, atol=1e-7)
    assert make_optimizer(opt.config()).config() == opt.config()


def test_unknown_optimizer():
    with pytest.raises(UserError, match="unknown optimizer"):
        make_optimizer("lion")


def test_momentum_jacobian_is_beta_exactly():
    opt = make_optimizer("momentum")
    theta = {"learning_rate": jnp.float32(0.05), "beta": jnp.float32(0.8125)}
    for h, g in [(0.0, 0.0), (3.0, -2.0), (-1e3, 7.0)]:
        jac = jax.jacobian(opt.F, argnums=1)(theta, jnp.array([h]), jnp.float32(g))
        assert jac.shape == (1, 1) and float(jac[0, 0]) == 0.8125


def test_sgd_update_is_minus_alpha_g():
    opt = make_optimizer("sgd")
    theta = {"learning_rate": jnp.float32(0.3)}
    g = jnp.array([1.0, -2.0, 0.5])
    _, dx = opt.step(theta, opt.init_state(theta, 3), g)
    np.testing.assert_array_equal(dx, -jnp.float32(0.3) * g)


def test_clipping_is_stateless_and_bounds_the_update():
    opt = make_optimizer("sgd", clip=0.5)
    theta = opt.init_theta()
    _, dx = opt.step(theta, opt.init_state(theta, 3), jnp.array([10.0, -10.0, 0.1]))
    np.testing.assert_allclose(dx, [-0.05, 0.05, -0.01], rtol=1e-6)
    with pytest.raises(ValueError):
        make_optimizer("sgd", clip=0.0)


OPTAX_EQUIVALENTS = {
    "sgd": (lambda t: optax.sgd(t["learning_rate"])),
    "momentum": (lambda t: optax.sgd(t["learning_rate"], momentum=t["beta"])),
    "rmsprop": (lambda t: optax.rmsprop(t["learning_rate"], decay=t["decay"], eps=t["eps"])),
    "adam": (lambda t: optax.adam(t["learning_rate"], b1=t["b1"], b2=t["b2"], eps=t["eps"])),
}


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_equal_optax(name):
    opt = make_optimizer(name)
    theta = opt.init_theta()
    ref = OPTAX_EQUIVALENTS[name](theta)
    grads = jax.random.normal(jax.random.PRNGKey(1), (20, 11))
    h = opt.init_state(theta, 11)
    ref_state = ref.init(jnp.zeros(11))
    for g in grads:
        h, dx = opt.step(theta, h, g)
        ref_dx, ref_state = ref.update(g, ref_state)
        np.testing.assert_allclose(dx, ref_dx, rtol=2e-5, atol=1e-8)


def test_gru_readout_starts_at_zero_and_h0_is_shared():
    opt = LearnedGRU(units=5, output_scale=0.1)
    theta = opt.init_theta(jax.random.PRNGKey(0))
    theta["h0"] = jnp.arange(5.0)
    h = opt.init_state(theta, 4)
    np.testing.assert_array_equal(h, jnp.tile(jnp.arange(5.0), (4, 1)))
    _, dx = opt.step(opt.init_theta(jax.random.PRNGKey(0)), opt.init_state(opt.init_theta(), 4), jnp.ones(4))
    np.testing.assert_array_equal(dx, jnp.zeros(4))


def test_hand_built_momentum_gru_tracks_momentum():
    beta, lr = 0.9, 0.05
    gru, theta = momentum_gru(beta, lr)
    mom = make_optimizer("momentum")
    mtheta = {"learning_rate": jnp.float32(lr), "beta": jnp.float32(beta)}
    hg, hm = gru.init_state(theta, 3), mom.init_state(mtheta, 3)
    for g in jax.random.normal(jax.random.PRNGKey(0), (30, 3)):
        hg, dxg = gru.step(theta, hg, g)
        hm, dxm = mom.step(mtheta, hm, g)
        np.testing.assert_allclose(dxg, dxm, rtol=2e-3, atol=1e-6)
    jac = jax.jacobian(gru.F, argnums=1)(theta, hg[0], jnp.float32(0.3))
    assert float(jac[0, 0]) == pytest.approx(beta, rel=1e-6)


def test_sign_momentum_gru_is_soft_sign_momentum_and_folding_keeps_it():
    beta, lr, sharp = 0.8, 0.03, 50.0
    gru, theta = sign_momentum_gru(beta, lr, sharp, units=5, key=jax.random.PRNGKey(1))
    assert (gru.input_scale, gru.output_scale) == (sharp, pytest.approx(lr))
    folded, ftheta = fold_scales(gru, theta)
    assert (folded.input_scale, folded.output_scale) == (1.0, 1.0)
    h, hf, v = gru.init_state(theta, 4), folded.init_state(ftheta, 4), np.zeros(4)
    for g in 0.05 * jax.random.normal(jax.random.PRNGKey(0), (25, 4)):
        h, dx = gru.step(theta, h, g)
        hf, dxf = folded.step(ftheta, hf, g)
        v = beta * v + np.tanh(sharp * np.asarray(g, np.float64))
        np.testing.assert_allclose(dx, -lr * v, rtol=1e-4, atol=1e-7)   # v' = βv + tanh(sg), Δx = −αv'
        np.testing.assert_allclose(dxf, dx, rtol=1e-5, atol=1e-8)
    assert np.any(np.abs(np.asarray(h[:, 1:])) > 1e-3)  # the spare units run, silently
    jac = jax.jacobian(gru.F, argnums=1)(theta, h[0], jnp.float32(0.01))
    assert float(jac[0, 0]) == pytest.approx(beta, rel=1e-5)
    assert np.allclose(jac[0, 1:], 0.0) and np.allclose(jac[1:, 0], 0.0)  # unit 0 is decoupled
    with pytest.raises(ValueError, match="beta"):
        sign_momentum_gru(1.0, lr, sharp)


def test_input_normalised_gru_sees_g_over_its_running_max():
    beta, lr, sharp, decay = 0.6, 4e-3, 1.5, 0.9
    gru, theta = sign_momentum_gru(beta, lr, sharp, units=3, key=jax.random.PRNGKey(1), input_norm=decay)
    assert gru.state_names == ("u0", "u1", "u2", "gmax")
    rebuilt = make_optimizer(gru.config())
    assert rebuilt.input_norm == decay and rebuilt.state_names == gru.state_names
    assert "input_norm" not in LearnedGRU(units=2).config()  # raw-gradient files are unchanged
    # components with gradients six orders of magnitude apart, and one that is always zero
    scale = jnp.array([1e-4, 1e-2, 1.0, 0.0, 3.0])
    grads = scale * jax.random.normal(jax.random.PRNGKey(0), (30, 5))
    # first step: g / gmax' = sign(g), so the step is the same size at every gradient scale
    first = gru.step(theta, gru.init_state(theta, 5), grads[0])[1]
    np.testing.assert_allclose(first, -lr * np.tanh(sharp) * np.sign(grads[0]), rtol=1e-5)
    h, u, v = gru.init_state(theta, 5), np.zeros(5), np.zeros(5)
    for g in grads:
        h, dx = gru.step(theta, h, g)
        g = np.asarray(g, np.float64)
        u = np.maximum(decay * u, np.abs(g))
        v = beta * v + np.tanh(sharp * np.divide(g, u, out=np.zeros(5), where=u > 0))
        np.testing.assert_allclose(dx, -lr * v, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(h[:, -1], u, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(h))) and float(first[3]) == 0.0  # zero gradient: no step
    folded, ftheta = fold_scales(gru, theta)
    g = jnp.full(5, 0.01)
    np.testing.assert_allclose(folded.step(ftheta, h, g)[1], gru.step(theta, h, g)[1], rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="input_norm"):
        LearnedGRU(units=2, input_norm=1.5)


def test_optax_adapter_trains_a_model():
    # a small least-squares model with nested params, trained by momentum through the adapter
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (64, 3))
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3
    params = {"w": jnp.zeros(3), "b": {"bias": jnp.zeros(())}}

    def loss(p):
        return jnp.mean((x @ p["w"] + p["b"]["bias"] - y) ** 2)

    opt = make_optimizer("momentum")
    tx = as_gradient_transformation(opt, {"learning_rate": jnp.float32(0.05), "beta": jnp.float32(0.9)})
    ref = optax.sgd(0.05, momentum=0.9)
    state, ref_state, ref_params = tx.init(params), ref.init(params), params

    @jax.jit
    def step(p, s):
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    start = float(loss(params))
    for _ in range(100):
        params, state = step(params, state)
        u, ref_state = ref.update(jax.grad(loss)(ref_params), ref_state)
        ref_params = optax.apply_updates(ref_params, u)
    assert float(loss(params)) < 1e-3 * start
    np.testing.assert_allclose(params["w"], ref_params["w"], rtol=1e-4, atol=1e-6)
    # a learned optimizer works through the same adapter
    gru, theta = momentum_gru(0.9, 0.05)
    tx = as_gradient_transformation(gru, theta)
    p, s = {"w": jnp.zeros(3), "b": {"bias": jnp.zeros(())}}, None
    s = tx.init(p)
    for _ in range(100):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        p = optax.apply_updates(p, u)
    assert float(loss(p)) < 1e-2 * start


def test_optimizer_file_roundtrip(tmp_path):
    opt = LearnedGRU(units=4, input_scale=0.5, output_scale=0.02, clip=3.0)
    theta = opt.init_theta(jax.random.PRNGKey(7))
    path = tmp_path / "opt.zarr"
    save_optimizer(path, opt, theta, task={"name": "rosenbrock", "steps": 300},
                   metatrain={"iterations": 3})
    loaded = load_optimizer(path)
    assert loaded.optimizer.config() == opt.config()
    assert loaded.task == {"name": "rosenbrock", "steps": 300}
    assert loaded.attrs["metatrain"] == {"iterations": 3}
    assert {"jax", "xarray", "zarr", "lopt_trace"} <= set(loaded.attrs["versions"])
    for k, v in theta.items():
        assert loaded.theta[k].dtype == np.float32
        np.testing.assert_array_equal(loaded.theta[k], np.asarray(v))
    with pytest.raises(UserError, match="already exists"):
        save_optimizer(path, opt, theta)
    with pytest.raises(UserError, match="no optimizer file"):
        load_optimizer(tmp_path / "absent.zarr")


def test_bundled_optimizer_files_open_through_the_store_module(tmp_path):
    """The files under data/optimizers (written before the format moved to lopt_trace.store) open
    with open_optimizer_file; a checkpoint and an optimizer file are each refused as the other."""
    from pathlib import Path

    from lopt_trace.store.optimizer_file import (FORMAT, FORMAT_VERSION, open_checkpoint_file,
                                                 open_optimizer_file, write_checkpoint_file)

    files = sorted((Path(__file__).resolve().parents[1] / "data" / "optimizers").glob("*.zarr"))
    assert len(files) >= 4
    for path in files:
        tree = open_optimizer_file(path)
        assert tree.attrs["format"] == FORMAT and tree.attrs["format_version"] == FORMAT_VERSION
        loaded = load_optimizer(path)
        assert set(loaded.theta) == set(tree["theta"].to_dataset().data_vars)
        assert loaded.optimizer.config() == tree.attrs["optimizer"]
    with pytest.raises(UserError, match="not a lopt-trace meta-training checkpoint"):
        open_checkpoint_file(files[0])
    ckpt = tmp_path / "run.zarr.checkpoint"
    write_checkpoint_file(ckpt, [np.arange(3.0), np.float32(2.0)], 4, xr.Dataset(), {"seed": 0})
    tree = open_checkpoint_file(ckpt)
    assert tree.attrs["next_iteration"] == 4 and tree["state"]["leaf0000"].values.tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(UserError, match="not a lopt-trace optimizer file"):
        open_optimizer_file(ckpt)
