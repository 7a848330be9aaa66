"""The four tasks: sizes, losses against hand computations, closed forms, determinism."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt_trace.errors import UserError
from lopt_trace.tasks import TASKS, get_task, load_mnist


def test_registry_and_unknown_task():
    assert set(TASKS) == {"linear_regression", "rosenbrock", "two_moons", "mnist"}
    with pytest.raises(UserError, match="unknown task 'nope'"):
        get_task("nope")
    assert get_task("rosenbrock", steps=17).default_steps == 17
    with pytest.raises(UserError):
        get_task("rosenbrock", steps=0)


@pytest.mark.parametrize("name,count", [("two_moons", 8_577), ("mnist", 82_250),
                                        ("linear_regression", 5), ("rosenbrock", 2)])
def test_exact_parameter_counts(name, count):
    task = get_task(name)
    assert task.num_params == count
    problem = task.sample(jax.random.PRNGKey(0))
    assert sum(v.size for v in problem.params.values()) == count
    assert task.flatten(problem.params).shape == (count,)
    assert {t.kind for t in task.tensors} <= {"weight", "bias"}


@pytest.mark.parametrize("name", list(TASKS))
def test_flatten_roundtrip_and_determinism(name):
    task = get_task(name)
    a, b = task.sample(jax.random.PRNGKey(3)), task.sample(jax.random.PRNGKey(3))
    c = task.sample(jax.random.PRNGKey(4))
    fa = task.flatten(a.params)
    np.testing.assert_array_equal(fa, task.flatten(b.params))
    assert not np.array_equal(fa, task.flatten(c.params))
    back = task.unflatten(fa)
    for k in a.params:
        np.testing.assert_array_equal(back[k], a.params[k])
    # the loss, minibatch included, is a function of the key and the step alone
    assert float(task.loss(a.data, a.params, 5)) == float(task.loss(b.data, b.params, 5))


def test_linear_regression_loss_by_hand_and_optimum():
    task = get_task("linear_regression")
    problem = task.sample(jax.random.PRNGKey(1))
    a, b, x = (np.asarray(problem.data["A"], np.float64), np.asarray(problem.data["b"], np.float64),
               np.asarray(problem.params["x"], np.float64))
    expected = 0.5 * np.sum((a @ x - b) ** 2)
    assert float(task.loss(problem.data, problem.params, 0)) == pytest.approx(expected, rel=1e-5)
    # Hessian spectrum as specified, condition number from it
    lam = np.linalg.eigvalsh(a.T @ a)
    assert lam.min() >= 1e-3 * 0.999 and lam.max() <= 1.0 * 1.001
    np.testing.assert_allclose(np.sort(lam), np.sort(np.asarray(problem.data["eigenvalues"])), rtol=1e-3)
    assert float(task.condition_number(problem)) == pytest.approx(lam.max() / lam.min(), rel=1e-2)
    # at the optimum the loss is the closed-form optimum and the gradient vanishes
    x_star = task.optimum(problem)
    np.testing.assert_allclose(x_star, np.linalg.solve(a, b), rtol=1e-3, atol=1e-3)
    assert float(task.optimal_loss(problem)) == pytest.approx(0.0, abs=1e-6)
    g = jax.grad(lambda p: task.loss(problem.data, p, 0))({"x": x_star})["x"]
    assert float(jnp.max(jnp.abs(g))) < 1e-3


def test_rosenbrock_loss_by_hand_and_init_range():
    task = get_task("rosenbrock")
    for (x, y), value in [((1.0, 1.0), 0.0), ((0.0, 0.0), 1.0), ((-1.0, 2.0), 104.0)]:
        assert float(task.loss((), {"xy": jnp.array([x, y])}, 0)) == pytest.approx(value)
    starts = jax.vmap(lambda k: task.sample(k).params["xy"])(jax.random.split(jax.random.PRNGKey(0), 500))
    assert starts[:, 0].min() >= -2 and starts[:, 0].max() <= 2
    assert starts[:, 1].min() >= -1 and starts[:, 1].max() <= 3


def test_two_moons_loss_by_hand():
    from sklearn.datasets import make_moons

    task = get_task("two_moons")
    problem = task.sample(jax.random.PRNGKey(2))
    x, y = make_moons(n_samples=1024, noise=0.1, random_state=0)
    h = x
    p = {k: np.asarray(v, np.float64) for k, v in problem.params.items()}
    for layer in range(4):
        h = h @ p[f"dense{layer}/weight"] + p[f"dense{layer}/bias"]
        if layer < 3:
            h = np.tanh(h)
    z = h[:, 0]
    expected = np.mean(np.logaddexp(0, z) - y * z)  # stable logistic loss
    assert float(task.loss((), problem.params, 0)) == pytest.approx(expected, rel=1e-5)
    zero = {k: jnp.zeros_like(v) for k, v in problem.params.items()}
    assert float(task.loss((), zero, 0)) == pytest.approx(math.log(2.0), rel=1e-6)
    huge = {k: v * 1e4 for k, v in problem.params.items()}  # numerically stable: finite loss
    assert np.isfinite(float(task.loss((), huge, 0)))


def _conv_valid(x, w):
    """Reference 3×3 VALID convolution in NumPy: x (B, H, W, C), w (3, 3, C, O)."""
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # B, H-2, W-2, C, 3, 3
    return np.einsum("bhwcij,ijco->bhwo", win, w)


def test_mnist_loss_by_hand():
    task = get_task("mnist")
    problem = task.sample(jax.random.PRNGKey(0))
    images, labels = task.batch(problem.data, 3)
    assert images.shape == (100, 28, 28, 1) and float(images.max()) <= 1.0 and float(images.min()) >= 0.0
    p = {k: np.asarray(v, np.float64) for k, v in problem.params.items()}
    h = np.asarray(images, np.float64)
    for layer in range(3):
        h = np.maximum(_conv_valid(h, p[f"conv{layer}/weight"]) + p[f"conv{layer}/bias"], 0)
    logits = h.reshape(100, -1) @ p["dense3/weight"] + p["dense3/bias"]
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.mean(logp[np.arange(100), np.asarray(labels)])
    assert float(task.loss(problem.data, problem.params, 3)) == pytest.approx(expected, rel=1e-4)
    zero = {k: jnp.zeros_like(v) for k, v in problem.params.items()}
    assert float(task.loss(problem.data, zero, 0)) == pytest.approx(math.log(10.0), rel=1e-6)
    # different steps see different minibatches
    assert not np.array_equal(task.batch(problem.data, 0)[1], task.batch(problem.data, 1)[1])


def test_mnist_missing_and_corrupt_data(tmp_path):
    load_mnist.cache_clear()
    with pytest.raises(UserError, match="missing.*Fix"):
        load_mnist(str(tmp_path / "absent.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="corrupt.*Fix"):
        load_mnist(str(bad))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x_train=np.zeros((5, 10, 10), np.uint8), y_train=np.zeros(5, np.uint8))
    with pytest.raises(UserError, match="unexpected shapes"):
        load_mnist(str(wrong))
    with pytest.raises(UserError, match="missing"):
        get_task("mnist", data=str(tmp_path / "absent.npz")).sample(jax.random.PRNGKey(0))


def test_mnist_explicit_path(tmp_path):
    path = tmp_path / "small.npz"
    x = np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8)
    np.savez(path, x_train=x, y_train=np.arange(50) % 10)
    task = get_task("mnist", data=str(path))
    problem = task.sample(jax.random.PRNGKey(0))
    images, _ = task.batch(problem.data, 0)
    assert images.shape == (100, 28, 28, 1)
    assert set(np.unique(np.asarray(images) * 255).round().astype(int)) <= set(np.unique(x))


def test_im2col_convolution_equals_lax_conv():
    from lopt_trace.tasks.mnist import conv3x3_valid

    h = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 9, 7))  # channels first: (C, B, H, W)
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
    ref = jax.lax.conv_general_dilated(h, w, (1, 1), "VALID", dimension_numbers=("CNHW", "HWIO", "CNHW"))
    assert conv3x3_valid(h, w).shape == ref.shape == (4, 2, 7, 5)
    np.testing.assert_allclose(conv3x3_valid(h, w), ref, rtol=1e-5, atol=1e-5)


def test_mnist_logits_equal_the_cnn_written_with_lax_conv():
    """The CNN as documented (NHWC, 3×3 VALID convolutions, ReLU, flatten as (H, W, C), dense)."""
    task = get_task("mnist")
    problem = task.sample(jax.random.PRNGKey(0))
    images, _ = task.batch(problem.data, 0)
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 8))  # biases are 0 at init: not here
    p = {k: v + 0.1 * jax.random.normal(next(keys), v.shape) if k.endswith("bias") else v
         for k, v in problem.params.items()}
    h = images[:8]
    for layer in range(3):
        h = jax.nn.relu(jax.lax.conv_general_dilated(h, p[f"conv{layer}/weight"], (1, 1), "VALID",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
                        + p[f"conv{layer}/bias"])
    ref = h.reshape(8, -1) @ p["dense3/weight"] + p["dense3/bias"]
    np.testing.assert_allclose(task.logits(p, images[:8]), ref, rtol=1e-4, atol=1e-5)
