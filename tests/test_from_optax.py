"""``from_optax``: any component-wise optax transform as a protocol optimizer, recorded and analysed.

Ground truth: wrapped ``optax.sgd(α, momentum=β)`` has one momentum mode with |λ| = β and α;
wrapped ``optax.adam`` is the built-in Adam; wrapped ``optax.lion`` is a sign update, so its
update function saturates at |g| → 0; ``optax.clip_by_global_norm`` couples parameters and is
refused.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _stores import make_store, open_store

from lopt_trace import recipes_loader
from lopt_trace.cli import main
from lopt_trace.errors import UserError
from lopt_trace.optimizers import OptaxOptimizer, from_optax, make_optimizer
from lopt_trace.optimizers.optax_wrap import format_optax_spec, optax_label, parse_optax_spec
from lopt_trace.tasks import get_task

LR, BETA = 0.05, 0.8
LION_LR = 0.01


def signum(learning_rate: float, beta: float = 0.9) -> optax.GradientTransformation:
    """A user's own transform: sign of the momentum (signSGD with momentum)."""
    return optax.chain(optax.trace(decay=beta),
                       optax.stateless(lambda u, p: jax.tree.map(jnp.sign, u)),
                       optax.scale(-learning_rate))


@functools.cache
def _store(tmp: str) -> str:
    return make_store(f"{tmp}/optax.zarr", get_task("linear_regression", steps=16), {
        "sgd": (from_optax(optax.sgd, learning_rate=LR, momentum=BETA),
                {"learning_rate": jnp.float32(LR), "momentum": jnp.float32(BETA)}),
        "lion": (make_optimizer(f"optax:lion(learning_rate={LION_LR})"),
                 make_optimizer(f"optax:lion(learning_rate={LION_LR})").init_theta()),
    }, runs=2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _store(str(tmp_path_factory.mktemp("optax")))


# -- the wrapper -------------------------------------------------------------------------------------
def test_state_layout_theta_and_config():
    opt = make_optimizer("optax:adabelief(learning_rate=1e-3,b1=0.9)")
    assert isinstance(opt, OptaxOptimizer)
    assert opt.state_names == ("count", "mu", "nu", "update")  # optax's flatten order, then Δx
    assert opt.held_state == ("count",)
    theta = opt.init_theta()
    assert list(theta) == ["learning_rate", "b1", "b2", "eps", "eps_root"]
    assert all(v.dtype == jnp.float32 and v.shape == () for v in theta.values())
    assert float(theta["b1"]) == pytest.approx(0.9) and float(theta["b2"]) == pytest.approx(0.999)
    config = opt.config()
    assert config["spec"].startswith("optax:adabelief(learning_rate=0.001,b1=0.9,")
    again = make_optimizer(config)
    assert again.config() == config and again.state_names == opt.state_names
    h = opt.init_state(theta, 5)
    assert h.shape == (5, 4)
    h1, dx = opt.step(theta, h, jnp.linspace(-1, 1, 5))
    np.testing.assert_array_equal(dx, h1[:, -1])  # readout is the update component
    np.testing.assert_array_equal(h1[:, 0], 1.0)  # count


def test_weight_decay_is_zero_and_lion_defaults():
    opt = make_optimizer("optax:lion")
    assert opt.static == {"weight_decay": 0.0} and "weight_decay" not in opt.init_theta()
    assert opt.state_names == ("count", "mu", "update")
    assert make_optimizer("optax:sgd").init_theta() == {"learning_rate": pytest.approx(1e-3)}


def test_spec_parsing():
    assert parse_optax_spec("optax:lion") == ("lion", {})
    assert parse_optax_spec("optax:adabelief(learning_rate=1e-3, b1=0.9, nesterov=True)") == (
        "adabelief", {"learning_rate": 1e-3, "b1": 0.9, "nesterov": True})
    assert parse_optax_spec("optax:contrib.sophia(learning_rate=-1)")[0] == "contrib.sophia"
    assert format_optax_spec("sgd", {"learning_rate": 0.1}) == "optax:sgd(learning_rate=0.1)"
    assert optax_label("optax:adabelief(b1=0.9)") == "optax_adabelief"
    for bad, match in [("optax:lion(1e-3)", "by keyword"),
                       ("optax:sgd(learning_rate=__import__('os'))", "not a literal"),
                       ("optax:lion(", "cannot parse"),
                       ("optax:no_such_thing", "optax has no transform 'no_such_thing'"),
                       ("optax:lion(lr=1)", "has no hyperparameter 'lr'")]:
        with pytest.raises(UserError, match=match):
            make_optimizer(bad)


def test_wrapped_adam_equals_builtin_adam_step_for_step():
    hp = {"learning_rate": 0.01, "b1": 0.8, "b2": 0.99, "eps": 1e-6}
    wrapped, adam = from_optax(optax.adam, **hp), make_optimizer("adam")
    tw, ta = wrapped.init_theta(), {k: jnp.float32(v) for k, v in hp.items()}
    hw, ha = wrapped.init_state(tw, 9), adam.init_state(ta, 9)
    step_w, step_a = jax.jit(wrapped.step), jax.jit(adam.step)
    rng = np.random.default_rng(0)
    for _ in range(30):
        g = jnp.asarray(rng.normal(size=9) * 10.0 ** rng.uniform(-3, 2, size=9), jnp.float32)
        hw, dw = step_w(tw, hw, g)
        ha, da = step_a(ta, ha, g)
        np.testing.assert_allclose(dw, da, rtol=2e-6, atol=1e-10)
        # the same state: optax's (count, mu, nu) are Adam's (count, m, v)
        np.testing.assert_allclose(hw[:, [1, 2, 0]], ha, rtol=2e-6, atol=1e-12)
    # and on a task, through the inner loop
    from lopt_trace.unroll import loss_curve

    task = get_task("linear_regression", steps=10)
    problem = task.sample(jax.random.PRNGKey(1))
    curve = jax.jit(loss_curve, static_argnums=(0, 1, 4))
    np.testing.assert_allclose(curve(task, wrapped, tw, problem, 10), curve(task, adam, ta, problem, 10),
                               rtol=1e-5)


def test_own_transform_by_function_and_by_name():
    opt = from_optax(signum, learning_rate=0.1, beta=0.5)
    assert opt.state_names == ("trace", "update") and set(opt.init_theta()) == {"learning_rate", "beta"}
    h, dx = opt.step(opt.init_theta(), opt.init_state(opt.init_theta(), 3), jnp.array([2.0, -1e-3, 0.0]))
    np.testing.assert_allclose(dx, [-0.1, 0.1, 0.0], rtol=1e-6)
    assert make_optimizer(opt.config()).config() == opt.config()  # rebuilt by its dotted name
    local = from_optax(lambda learning_rate: optax.sign_sgd(learning_rate), learning_rate=0.1)
    with pytest.raises(UserError, match="cannot be imported by name"):
        make_optimizer(local.config())


# -- refusals -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, match", [
    ("optax:clip_by_global_norm(max_norm=1.0)",
     "optax:clip_by_global_norm is not component-wise: its update of a vector of parameters differs"),
    ("optax:adafactor", "state leaf FactoredState.v_row has shape"),
    ("optax:novograd", "state leaf ScaleByNovogradState.nu is one number per tensor"),
    ("optax:lbfgs", "state leaf ScaleByLBFGSState.diff_params_memory has shape"),
    ("optax:lion(weight_decay=0.01)", "depends on the parameter values"),
])
def test_non_componentwise_transforms_are_refused(spec, match):
    with pytest.raises(UserError, match=match) as info:
        make_optimizer(spec)
    assert "\n" not in str(info.value)


def test_clip_by_global_norm_is_refused_in_python_and_on_the_cli(tmp_path, capsys):
    with pytest.raises(UserError, match="not component-wise.*couples parameters"):
        from_optax(optax.clip_by_global_norm, max_norm=1.0)
    rc = main(["record", "--task", "linear_regression", "--optimizer",
               "optax:clip_by_global_norm(max_norm=1.0)", "--out", str(tmp_path / "x.zarr")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "clip_by_global_norm is not component-wise" in err
    assert not (tmp_path / "x.zarr").exists()


# -- recorded and analysed ------------------------------------------------------------------------------
def test_momentum_recipe_on_wrapped_sgd_momentum(store):
    tree = open_store(store)
    node = tree["runs/sgd"]
    assert node.attrs["optimizer"]["spec"] == f"optax:sgd(learning_rate={LR},momentum={BETA})"
    assert list(node.attrs["state_names"]) == ["trace", "update"]
    assert make_optimizer(dict(node.attrs["optimizer"])).config() == dict(node.attrs["optimizer"])
    mom = recipes_loader.load("momentum").compute(tree, optimizer="sgd", n_starts=8, n_error=64)
    assert mom.attrs["n_fixed_points"] == 1
    assert mom.attrs["slowest_beta"] == pytest.approx(BETA, rel=1e-6)
    assert mom.attrs["slowest_alpha"] == pytest.approx(LR, rel=1e-6)
    assert mom.attrs["total_alpha"] == pytest.approx(LR, rel=1e-6)  # the update mode carries none


def test_momentum_recipe_never_reports_the_held_step_count(store):
    """Lion's state is (count, mu, update). The count is held (a clock, λ = 1 exactly) and the sign
    readout gives every mode α = 0, so the slowest mode overall is the count's: the recipe must
    report mu's decay b2 = 0.99 instead, and the count (≈ 8 here) must not set the solver's or the
    merge's scale."""
    tree = open_store(store)
    mom = recipes_loader.load("momentum").compute(tree, optimizer="lion", n_starts=16, n_error=64)
    lin_beta = mom["beta"].isel(fixed_point=0).values
    assert lin_beta[0] == pytest.approx(1.0)  # the count's mode is there ...
    assert mom.attrs["momentum_mode"] != 0    # ... and is not the one reported
    assert mom.attrs["slowest_beta"] == pytest.approx(0.99, rel=1e-6)
    assert mom.attrs["total_alpha"] == 0.0    # sign(): no learning rate in the linearisation
    mu = list(mom["unit"].values).index("mu")
    fp = mom["fixed_point_state"].values[:, mu]
    assert np.all(np.abs(fp[np.isfinite(fp)]) <= 1e-9 / (1 - 0.99) * 1.01)  # tolerance not ×(1 + count)


def test_merge_tolerance_ignores_held_components():
    from lopt_trace.analysis.fixed_points import default_merge_tol
    rng = np.random.default_rng(0)
    starts = np.stack([np.arange(100.0), 1e-3 * rng.standard_normal(100)], axis=1)  # (count, mu)
    free = np.array([False, True])
    assert default_merge_tol(starts) > 1e-2                       # the clock's spread dominates
    assert default_merge_tol(starts, free) == pytest.approx(1e-3 * np.std(starts[:, 1]), rel=1e-9)


def test_clipping_recipe_finds_lion_is_a_sign_update(store):
    tree = open_store(store)
    clip = recipes_loader.load("clipping")
    ds = clip.compute(tree, optimizer="lion", n_states=4)
    assert ds.attrs["effective_learning_rate"] == 0.0  # flat at g = 0: a sign
    assert 0.0 < ds.attrs["threshold"] < 1e-12            # saturated at |g| -> 0
    assert ds.attrs["update_limit"] == pytest.approx(LION_LR, rel=1e-6)  # |Δx| = α for every g ≠ 0
    assert ds.attrs["fraction_beyond"] == pytest.approx(1.0)
    assert "saturates beyond |g| = " in clip.summary(ds)


def test_compare_and_tune_take_optax_specs(tmp_path, capsys):
    from lopt_trace.compare import resolve
    from lopt_trace.tune import search_space

    entries, _ = resolve("linear_regression", ["optax:lion", "momentum"], untuned=True)
    assert entries[0].label == "optax:lion" and entries[0].optimizer.name == "optax"
    space = search_space("optax:adabelief(learning_rate=1e-3,b1=0.9)")
    assert set(space) == {"learning_rate", "b1", "b2", "eps", "eps_root"}
    assert (space["learning_rate"].low, space["learning_rate"].high) == pytest.approx((1e-6, 1.0))
    assert space["b1"].complement and space["b2"].complement and not space["eps"].complement
    assert "eps_root" not in search_space("optax:adam")  # 0 by default: kept fixed
    rc = main(["tune", "--task", "linear_regression", "--optimizer", "optax:sign_sgd", "--samples", "2",
               "--seeds", "2", "--steps", "5", "--out", str(tmp_path / "t.zarr"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "optax:sign_sgd: best learning_rate=" in out
    import xarray as xr

    ds = xr.open_datatree(tmp_path / "t.zarr", engine="zarr")["tune/optax_sign_sgd"]
    assert ds.attrs["optimizer"]["spec"] == "optax:sign_sgd(learning_rate=0.001)"
    assert ds["learning_rate"].size == 2
