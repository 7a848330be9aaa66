"""The component-wise optimizer protocol.

A component-wise optimizer is a discrete dynamical system run on every scalar parameter in parallel
with shared weights θ (the hyperparameters, for a hand-designed optimizer)::

    h_{k+1} = F(θ, h_k, g_k)          state (..., d), gradient (...)  ->  state (..., d)
    Δx_k    = readout(θ, h_{k+1})     state (..., d)                  ->  update (...)
    x_{k+1} = x_k + Δx_k

Both functions broadcast over any leading shape, so the same code runs on one component (h of
shape (d,) and a scalar g, as the analyses do) and on n components (h of shape (n, d)). θ is a
pytree of arrays, so a batch of hyperparameters can be ``vmap``-ed (tuning does this).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Theta = Any  # a pytree of arrays


class ComponentwiseOptimizer:
    """Base class. Subclasses set ``name`` and ``state_names`` and implement ``init_theta``,
    ``_F`` and ``readout``.

    Args:
      clip: if given, gradients are clipped element-wise to [-clip, clip] before F (stateless
        gradient clipping).
    """

    name: str = ""
    #: labels of the d state components (the ``unit`` coordinate in a store)
    state_names: tuple[str, ...] = ()
    #: state components that fixed-point analyses hold at a given value instead of solving for:
    #: scales and clocks with no fixed point of their own worth analysing (e.g. a normaliser that
    #: decays to 0 without gradients); see :mod:`lopt_trace.analysis.fixed_points`
    held_state: tuple[str, ...] = ()
    #: the state's range, per component name: ``{name: (low, high)}``; components not listed are
    #: unbounded. A range is a closed interval that holds every fixed point of F and that F maps
    #: into itself (a state inside stays inside for any gradient), so fixed-point solvers keep their
    #: iterates there and reject solutions outside it. See :meth:`state_bounds`.
    state_range: dict[str, tuple[float, float]] = {}

    def __init__(self, clip: float | None = None):
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.clip = None if clip is None else float(clip)

    # -- protocol ----------------------------------------------------------------------------
    @property
    def state_size(self) -> int:
        """d, the number of state components per parameter."""
        return len(self.state_names)

    def state_bounds(self, theta: Theta | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-component ``(low, high)`` float64 arrays of shape (d,) (±inf: unbounded) from
        :attr:`state_range`. Subclasses whose range depends on θ or on the configuration
        override this method."""
        low = np.array([self.state_range.get(n, (-math.inf, math.inf))[0] for n in self.state_names],
                       dtype=np.float64)
        high = np.array([self.state_range.get(n, (-math.inf, math.inf))[1] for n in self.state_names],
                        dtype=np.float64)
        return low, high

    def init_theta(self, key: jax.Array | None = None) -> Theta:
        """Default θ (hyperparameters, or freshly initialised weights for a learned optimizer)."""
        raise NotImplementedError

    def init_state(self, theta: Theta, n: int) -> jax.Array:
        """The initial state for n parameters, shape (n, d), in θ's floating dtype."""
        return jnp.zeros((n, self.state_size), dtype=jnp.result_type(*jax.tree.leaves(theta)))

    def F(self, theta: Theta, h: jax.Array, g: jax.Array) -> jax.Array:
        """State transition h' = F(θ, h, g): (..., d), (...) -> (..., d)."""
        if self.clip is not None:
            g = jnp.clip(g, -self.clip, self.clip)
        return self._F(theta, h, g)

    def _F(self, theta: Theta, h: jax.Array, g: jax.Array) -> jax.Array:
        raise NotImplementedError

    def readout(self, theta: Theta, h: jax.Array) -> jax.Array:
        """Parameter update Δx = readout(θ, h'): (..., d) -> (...)."""
        raise NotImplementedError

    # -- conveniences ------------------------------------------------------------------------
    def step(self, theta: Theta, h: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step: returns the new state and the update, ``(F(θ, h, g), readout(θ, F(θ, h, g)))``."""
        h_next = self.F(theta, h, g)
        return h_next, self.readout(theta, h_next)

    def config(self) -> dict:
        """JSON-serialisable configuration; ``make_optimizer(config)`` rebuilds the optimizer."""
        return {"name": self.name, "clip": self.clip}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"
