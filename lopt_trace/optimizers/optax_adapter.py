"""Wrap any component-wise optimizer as an ``optax.GradientTransformation``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt_trace.optimizers.base import ComponentwiseOptimizer, Theta


class ComponentwiseState(NamedTuple):
    """Per-leaf optimizer states, each of shape (leaf.size, d)."""

    hidden: optax.Updates


def as_gradient_transformation(opt: ComponentwiseOptimizer, theta: Theta) -> optax.GradientTransformation:
    """An optax transformation that runs ``opt`` with weights ``theta`` on every leaf.

    The returned updates are Δx (they already carry the minus sign): use them with
    ``optax.apply_updates``. Works on any parameter pytree, so a learned optimizer can train any
    JAX model::

        tx = as_gradient_transformation(opt, theta)
        state = tx.init(params)
        updates, state = tx.update(grads, state)
        params = optax.apply_updates(params, updates)
    """

    def init_fn(params):
        return ComponentwiseState(
            hidden=jax.tree.map(lambda p: opt.init_state(theta, p.size), params))

    def update_fn(updates, state, params=None):
        del params
        hidden = jax.tree.map(lambda g, h: opt.F(theta, h, jnp.ravel(g).astype(h.dtype)),
                              updates, state.hidden)
        deltas = jax.tree.map(lambda g, h: opt.readout(theta, h).reshape(g.shape).astype(g.dtype),
                              updates, hidden)
        return deltas, ComponentwiseState(hidden=hidden)

    return optax.GradientTransformation(init_fn, update_fn)
