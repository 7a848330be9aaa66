"""Running a component-wise optimizer on a task: the inner loop, as a ``lax.scan``.

Everything here is pure and jit-able; ``vmap`` it over problems or over θ.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

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


#: names of the values a meta-gradient step keeps instead of recomputing (see :func:`run_population`)
TASK_GRADIENT = "lopt_trace_task_gradient"


@jax.custom_jvp
def loss_with_gradient(loss: jax.Array, x: jax.Array, grad: jax.Array) -> jax.Array:
    """``loss`` = f(x), differentiated as ``grad · ẋ`` with the gradient already computed.

    loss (...), x (..., n), grad (..., n) -> (...). The value is ``loss`` itself; the derivative
    is the exact one (grad = ∇f(x) on the same batch), but reverse mode does not have to
    linearise f's forward pass again to get it.
    """
    return loss


@loss_with_gradient.defjvp
def _loss_with_gradient_jvp(primals, tangents):
    loss, x, grad = primals
    return loss, jnp.sum(grad * tangents[1], axis=-1)


def run_population(task: Task, opt: ComponentwiseOptimizer, theta: Theta, data: Any,
                   state: InnerState, steps: int, first_order: bool = False
                   ) -> tuple[InnerState, jax.Array]:
    """:func:`run` for a population of problems, arranged for reverse-mode meta-gradients.

    ``data`` and ``state`` have a leading problem axis P (x (P, n), h (P, n, d), step (P,)).
    Returns the final state and the losses f(x_{k+1}), shape (P, steps), as :func:`run` does
    for each problem; the values agree with :func:`run` to float32 round-off. Differences, all
    for speed (``benchmarks/metatrain_speed.py``):

    - The task's gradient is vmapped over problems, the optimizer's step is not: a
      :class:`~lopt_trace.optimizers.LearnedGRU` runs on all P·n components at once through
      ``fast_step`` (a hand-written VJP), so its weight gradients are single (u, P·n) @ (P·n, u)
      products.
    - The loss's derivative with respect to x is the gradient already computed
      (:func:`loss_with_gradient`).
    - Each step is rematerialised (``jax.checkpoint``), keeping the task's gradient and the
      optimizer's input: with ``first_order`` the backward pass then recomputes only the
      optimizer's step, never the task's loss and gradient. Exact meta-gradients need the task's
      second derivatives and recompute its forward pass, as :func:`run` with ``remat`` does.
    """
    step_fn = getattr(opt, "fast_step", opt.step)
    value_and_grad = jax.vmap(jax.value_and_grad(task.flat_loss, argnums=1))

    def body(s, _):
        loss, grad = value_and_grad(data, s.x, s.step)
        grad = checkpoint_name(grad, TASK_GRADIENT)
        if first_order:
            grad = jax.lax.stop_gradient(grad)
        loss = loss_with_gradient(loss, s.x, jax.lax.stop_gradient(grad))
        h, dx = step_fn(theta, s.h, grad)
        return InnerState(s.x + dx, h, s.step + 1), loss

    saved = (TASK_GRADIENT,) + tuple(getattr(opt, "remat_saved_names", ()))
    body = jax.checkpoint(body, policy=jax.checkpoint_policies.save_only_these_names(*saved))
    final, losses = jax.lax.scan(body, state, None, length=steps)
    last = jax.vmap(task.flat_loss)(data, final.x, final.step)
    return final, jnp.concatenate([losses[1:], last[None]]).T


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
