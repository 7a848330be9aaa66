"""Persistent evolution strategies (PES): meta-gradients of truncated unrolls from forward passes.

Vicol, Metz & Sohl-Dickstein, *Unbiased gradient estimation in unrolled computation graphs with
persistent evolution strategies*, ICML 2021. Written for lopt-trace after the reading of
``learned_optimization/outer_trainers/truncated_pes.py``; the estimator is the same.

Every problem of the meta-batch carries K antithetic pairs of *particles*: inner optimizations
driven by θ + ε and θ − ε. A new ε ~ N(0, σ² I) is drawn for every pair at every truncation,
and each pair keeps the sum of the perturbations it has seen in the current episode, its
*accumulator* ξ (reset when a fresh meta-batch starts). With L± the mean normalised loss of a
truncation (the same meta-objective as backpropagation's), the estimate is::

    ĝ = mean over problems and pairs of  (L+ − L−) / (2σ²) · ξ,    ξ ← ξ + ε before the unroll

Because ξ holds every perturbation that shaped the particle's state, ĝ is an unbiased estimate
of the gradient of the truncation's loss through the *whole* episode so far (a truncated
estimator only sees the current truncation). Unrolls are forward-only, so a particle costs one
forward unroll: no second derivatives, no memory growing with the truncation, and no exploding
gradients through long unrolls; the price is variance that grows with the number of weights.

Shapes: B problems, K pairs, n parameters, d state components; θ-shaped leaves ``θ[k]`` get
leading axes. Particles are laid out (B, 2K): the K positive ones, then the K negative ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt_trace.optimizers.base import ComponentwiseOptimizer, Theta
from lopt_trace.tasks.base import Task
from lopt_trace.unroll import InnerState, run

#: σ of the perturbations (``--pes-std``) and antithetic pairs per problem (``--pes-pairs``)
DEFAULT_STD = 0.01
DEFAULT_PAIRS = 2


class PESState(NamedTuple):
    """What PES carries between truncations.

    particles: the inner optimizations, x (B, 2K, n), h (B, 2K, n, d), step (B, 2K).
    accumulator: per pair, the sum of this episode's perturbations, θ-shaped leaves (B, K, ...).
    """

    particles: InnerState
    accumulator: Any


def perturbations(key: jax.Array, theta: Theta, shape: tuple[int, ...], std: float) -> Theta:
    """ε ~ N(0, std²) for every leaf of θ, with leading axes ``shape``: (*shape, *leaf.shape)."""
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [
        std * jax.random.normal(k, (*shape, *leaf.shape), leaf.dtype) for k, leaf in zip(keys, leaves)])


def particle_thetas(theta: Theta, eps: Theta) -> Theta:
    """θ + ε and θ − ε side by side: ε leaves (B, K, ...) -> θ leaves (B, 2K, ...)."""
    return jax.tree.map(lambda t, e: t + jnp.concatenate([e, -e], axis=1), theta, eps)


def init_state(opt: ComponentwiseOptimizer, theta: Theta, start: InnerState, pairs: int) -> PESState:
    """Particles at the start of an episode, all at the problems' starting point with θ's initial
    state, and zero accumulators. start: x (B, n), step (B,) (its h is not used)."""
    b = start.x.shape[0]
    x = jnp.broadcast_to(start.x[:, None], (b, 2 * pairs, *start.x.shape[1:]))
    step = jnp.broadcast_to(start.step[:, None], (b, 2 * pairs))
    h = jnp.broadcast_to(opt.init_state(theta, x.shape[-1]), (*x.shape, opt.state_size))
    acc = jax.tree.map(lambda t: jnp.zeros((b, pairs, *t.shape), t.dtype), theta)
    return PESState(InnerState(x, h, step), acc)


def estimate(task: Task, opt: ComponentwiseOptimizer, theta: Theta, state: PESState, data: Any,
             f0: jax.Array, start: InnerState | None, key: jax.Array, *, std: float,
             truncation: int) -> tuple[jax.Array, Theta, PESState, jax.Array]:
    """One truncation of PES.

    Args:
      theta: the meta-parameters (unbatched leaves).
      state: particles and accumulators after the previous truncation of this episode.
      data: the problems' data, leading axis B; f0 (B,) their starting losses.
      start: the problems' starting state (x (B, n), step (B,)) when this truncation begins a
        fresh episode: the particles restart there (h from each particle's θ) and the
        accumulators from zero. ``None`` continues the particles of ``state``.
      key: PRNG key of this truncation's perturbations.

    Returns:
      loss: mean over particles of the truncation's meta-objective, ();
      grad: the PES estimate of its gradient, θ-shaped;
      state: the particles after the truncation and the updated accumulators;
      losses: per particle, (B, 2K).
    """
    pairs = jax.tree.leaves(state.accumulator)[0].shape[1]
    b = f0.shape[0]
    eps = perturbations(key, theta, (b, pairs), std)
    thetas = particle_thetas(theta, eps)
    particles, acc = state
    if start is not None:  # a fresh episode: each particle starts from its own θ's initial state
        particles = init_state(opt, theta, start, pairs).particles
        n = particles.x.shape[-1]
        particles = particles._replace(
            h=jax.vmap(jax.vmap(lambda th: opt.init_state(th, n)))(thetas))
        acc = jax.tree.map(jnp.zeros_like, acc)
    acc = jax.tree.map(jnp.add, acc, eps)

    def one(th, d, s):
        return run(task, opt, th, d, s, truncation)

    per_problem = jax.vmap(one, in_axes=(0, None, 0))              # over the 2K particles
    finals, curves = jax.vmap(per_problem)(thetas, data, particles)  # curves (B, 2K, T)
    losses = jnp.mean(curves, axis=-1) / f0[:, None]
    delta = (losses[:, :pairs] - losses[:, pairs:]) / (2.0 * std ** 2)   # (B, K)
    grad = jax.tree.map(
        lambda a: jnp.mean(delta.reshape(*delta.shape, *(1,) * (a.ndim - 2)) * a, axis=(0, 1)), acc)
    return jnp.mean(losses), grad, PESState(finals, acc), losses
