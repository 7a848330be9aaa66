"""Running a component-wise optimizer on a task: the inner loop, as a ``lax.scan``.

Everything here is pure and jit-able; ``vmap`` it over problems or over θ.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lopt_trace.optimizers.base import ComponentwiseOptimizer, Theta
from lopt_trace.tasks.base import Problem, Task


class InnerState(NamedTuple):
    """Where one inner optimization is: flat parameters (n,), optimizer state (n, d), step ()."""

    x: jax.Array
    h: jax.Array
    step: jax.Array


class StepRecord(NamedTuple):
    """What one inner step sees and does (all per parameter, shape (n,) or (n, d))."""

    loss: jax.Array      # f(x_k) on step k's batch, ()
    gradient: jax.Array  # g_k, (n,)
    update: jax.Array    # Δx_k, (n,)
    state: jax.Array     # h_{k+1} = F(θ, h_k, g_k), (n, d)


def init_inner(task: Task, opt: ComponentwiseOptimizer, theta: Theta, problem: Problem) -> InnerState:
    """The start of an inner optimization: x_0, the optimizer's initial state, step 0."""
    x = task.flatten(problem.params)
    return InnerState(x, opt.init_state(theta, x.shape[0]), jnp.zeros((), jnp.int32))


def inner_step(task: Task, opt: ComponentwiseOptimizer, theta: Theta, data: Any,
               s: InnerState, first_order: bool = False) -> tuple[InnerState, StepRecord]:
    """One step of the inner loop: g = ∇f(x_k), h' = F(θ, h, g), x' = x + readout(θ, h').

    With ``first_order`` the gradient is treated as a constant input when differentiating with
    respect to θ (no second derivatives of the task's loss), which makes meta-gradients of large
    tasks several times cheaper.
    """
    loss, grad = jax.value_and_grad(task.flat_loss, argnums=1)(data, s.x, s.step)
    if first_order:
        grad = jax.lax.stop_gradient(grad)
    h, dx = opt.step(theta, s.h, grad)
    return InnerState(s.x + dx, h, s.step + 1), StepRecord(loss, grad, dx, h)


def run(task: Task, opt: ComponentwiseOptimizer, theta: Theta, data: Any, state: InnerState,
        steps: int, remat: bool = False, first_order: bool = False) -> tuple[InnerState, jax.Array]:
    """``steps`` inner steps from ``state``.

    Returns the final state and the losses f(x_{k+1}) after each step, shape (steps,): the loss at
    x_{k+1} is evaluated on step k+1's batch (for the last step one extra evaluation is made).
    With ``remat``, each step is rematerialised (``jax.checkpoint``) in the backward pass, so
    meta-gradients cost memory O(steps · n) for the carries only. ``first_order``: see
    :func:`inner_step`.
    """

    def body(s, _):
        s, rec = inner_step(task, opt, theta, data, s, first_order)
        return s, rec.loss

    if remat:
        body = jax.checkpoint(body)
    final, losses = jax.lax.scan(body, state, None, length=steps)
    last = task.flat_loss(data, final.x, final.step)
    return final, jnp.append(losses[1:], last)


def loss_curve(task: Task, opt: ComponentwiseOptimizer, theta: Theta, problem: Problem,
               steps: int) -> jax.Array:
    """f_0, f_1, ..., f_steps for one problem, shape (steps + 1,)."""
    start = init_inner(task, opt, theta, problem)
    f0 = task.flat_loss(problem.data, start.x, start.step)
    _, losses = run(task, opt, theta, problem.data, start, steps)
    return jnp.concatenate([f0[None], losses])


def meta_objective(curve: jax.Array) -> jax.Array:
    """mean_k f_k / f_0 over k = 1..K for a loss curve (..., K + 1); non-finite becomes inf."""
    value = jnp.mean(curve[..., 1:], axis=-1) / curve[..., 0]
    return jnp.where(jnp.isfinite(value), value, jnp.inf)
