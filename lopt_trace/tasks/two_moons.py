"""Binary classification of scikit-learn's two moons with a 2→64→64→64→1 tanh MLP."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt_trace.tasks.base import Params, Problem, Task, TensorInfo


@functools.lru_cache(maxsize=4)
def moons_data(n_samples: int = 1024, noise: float = 0.1, random_state: int = 0):
    """The fixed data set: inputs (n, 2) float32 and labels (n,) in {0, 1}."""
    from sklearn.datasets import make_moons  # here: scikit-learn is slow to import; tasks load without it

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=random_state)
    return x.astype(np.float32), y.astype(np.float32)


class TwoMoons(Task):
    """Full-batch logistic regression with a tanh MLP, 8,577 parameters. Default 200 steps.

    A problem is a draw of the network's initial weights (LeCun-normal weights, zero biases).
    """

    name = "two_moons"
    default_steps = 200
    widths = (2, 64, 64, 64, 1)

    def __init__(self, steps: int | None = None, n_samples: int = 1024, noise: float = 0.1,
                 data_seed: int = 0):
        super().__init__(steps)
        self.n_samples, self.noise, self.data_seed = int(n_samples), float(noise), int(data_seed)
        tensors = []
        for layer, (fan_in, fan_out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            tensors.append(TensorInfo(f"dense{layer}/weight", layer, "weight", (fan_in, fan_out)))
            tensors.append(TensorInfo(f"dense{layer}/bias", layer, "bias", (fan_out,)))
        self.tensors = tuple(tensors)

    def config(self) -> dict:
        return {**super().config(), "n_samples": self.n_samples, "noise": self.noise,
                "data_seed": self.data_seed}

    def sample(self, key: jax.Array) -> Problem:
        params = {}
        keys = jax.random.split(key, len(self.tensors))
        for k, t in zip(keys, self.tensors):
            if t.kind == "weight":
                params[t.name] = jax.random.normal(k, t.shape) / jnp.sqrt(t.shape[0])
            else:
                params[t.name] = jnp.zeros(t.shape)
        return Problem(params=params, data=())

    def logits(self, params: Params, x: jax.Array) -> jax.Array:
        """Network output (n,) for inputs (n, 2)."""
        h = x
        n_layers = len(self.widths) - 1
        for layer in range(n_layers):
            h = h @ params[f"dense{layer}/weight"] + params[f"dense{layer}/bias"]
            if layer < n_layers - 1:
                h = jnp.tanh(h)
        return h[:, 0]

    def loss(self, data, params: Params, step) -> jax.Array:
        x, y = moons_data(self.n_samples, self.noise, self.data_seed)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(self.logits(params, x), y))
