"""The task protocol: a task samples problems; a problem is a pytree with a loss of (params, step).

Parameters are a dict ``{tensor name: array}``. Component-wise optimizers see them as one flat
vector of n scalars, in the order of ``Task.tensors`` (see :func:`Task.flatten`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Metadata for one parameter tensor.

    Attributes:
      name: unique name, e.g. ``"conv1/weight"``.
      layer: index of the layer the tensor belongs to (0-based).
      kind: ``"weight"`` or ``"bias"``.
      shape: the tensor's shape.
    """

    name: str
    layer: int
    kind: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class Problem(NamedTuple):
    """One sampled problem (a pytree, so problems batch with ``vmap``).

    Attributes:
      params: the initial parameters, ``{tensor name: array}``.
      data: task-specific arrays that define the loss (e.g. ``A`` and ``b``, or a minibatch key).
    """

    params: Params
    data: Any


class Task:
    """Base class for tasks. Subclasses set ``name``, ``default_steps`` and ``tensors`` and
    implement :meth:`sample` and :meth:`loss`.

    Configuration (problem size, default steps, ...) is passed to the constructor and reported by
    :meth:`config`, so a task can be rebuilt from a store's attributes.
    """

    name: str = ""
    default_steps: int = 0
    tensors: tuple[TensorInfo, ...] = ()
    stochastic: bool = False

    def __init__(self, steps: int | None = None):
        if steps is not None:
            if int(steps) < 1:
                raise ValueError(f"steps must be a positive integer, got {steps}")
            self.default_steps = int(steps)

    # -- to implement ------------------------------------------------------------------------
    def sample(self, key: jax.Array) -> Problem:
        """Sample a problem from a PRNG key."""
        raise NotImplementedError

    def loss(self, data: Any, params: Params, step: jax.Array) -> jax.Array:
        """Scalar training loss of ``params`` at inner step ``step`` for the problem ``data``.

        Stochastic tasks choose the minibatch from ``step`` and a key held in ``data``.
        """
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def config(self) -> dict:
        """JSON-serialisable configuration that rebuilds this task via ``get_task(**config)``."""
        return {"name": self.name, "steps": self.default_steps}

    def bind(self, problem: Problem) -> Callable[[Params, jax.Array], jax.Array]:
        """The problem's loss as a function of ``(params, step)``."""
        return lambda params, step: self.loss(problem.data, params, step)

    @property
    def num_params(self) -> int:
        return sum(t.size for t in self.tensors)

    def flatten(self, params: Params) -> jax.Array:
        """Concatenate a parameter dict into a flat vector of shape (n,), in ``tensors`` order."""
        return jnp.concatenate([jnp.ravel(params[t.name]) for t in self.tensors])

    def unflatten(self, flat: jax.Array) -> Params:
        """Inverse of :meth:`flatten`: (n,) -> ``{tensor name: array}``."""
        out, start = {}, 0
        for t in self.tensors:
            out[t.name] = jnp.reshape(flat[start : start + t.size], t.shape)
            start += t.size
        return out

    def flat_loss(self, data: Any, flat: jax.Array, step: jax.Array) -> jax.Array:
        """The loss as a function of the flat parameter vector."""
        return self.loss(data, self.unflatten(flat), step)

    def tensor_index(self) -> jax.Array:
        """For each of the n flat parameters, the index of its tensor in ``tensors``; shape (n,)."""
        return jnp.concatenate(
            [jnp.full((t.size,), i, dtype=jnp.int32) for i, t in enumerate(self.tensors)]
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"
