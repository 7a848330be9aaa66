"""The two-dimensional Rosenbrock function."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lopt_trace.tasks.base import Params, Problem, Task, TensorInfo


class Rosenbrock(Task):
    """f(x, y) = (1 − x)² + 100 (y − x²)², from x0 ~ U(−2, 2), y0 ~ U(−1, 3). Default 300 steps.

    The parameters are one tensor ``"xy"`` of shape (2,); the minimum is f(1, 1) = 0.
    """

    name = "rosenbrock"
    default_steps = 300
    tensors = (TensorInfo("xy", 0, "weight", (2,)),)

    def sample(self, key: jax.Array) -> Problem:
        kx, ky = jax.random.split(key)
        x = jax.random.uniform(kx, (), minval=-2.0, maxval=2.0)
        y = jax.random.uniform(ky, (), minval=-1.0, maxval=3.0)
        return Problem(params={"xy": jnp.stack([x, y])}, data=())

    def loss(self, data, params: Params, step) -> jax.Array:
        x, y = params["xy"][0], params["xy"][1]
        return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2
