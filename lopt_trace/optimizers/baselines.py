"""Hand-designed optimizers with their state written out, so F and readout are exact.

Defaults (θ from :meth:`init_theta`) are the usual ones; ``lopt-trace tune`` finds better ones
per task and ``lopt-trace record`` uses those when they are bundled.

=========  =====================================  ==========================================
optimizer  state (unit names)                     F and readout
=========  =====================================  ==========================================
sgd        gradient                               h' = g;  Δx = −α h'
momentum   velocity                               v' = β v + g;  Δx = −α v'   (heavy ball)
rmsprop    mean_square, gradient                  s' = ρ s + (1−ρ) g²;  Δx = −α g / √(s' + ε)
adam       m, v, count                            optax.adam with bias correction, exactly
=========  =====================================  ==========================================

State ranges (``state_range``, used by the fixed-point solver): second moments (RMSProp's
``mean_square``, Adam's ``v``) and Adam's ``count`` are non-negative; the rest is unbounded.
Adam's ``count`` is held by the fixed-point analyses (``held_state``): t' = t + 1 has no fixed
point, so the analyses fix the clock (at the starts' median) and solve for m and v, as for every
optax transform wrapped by ``from_optax``.

The update rules equal optax's ``sgd``, ``sgd(momentum=β)``, ``rmsprop`` and ``adam``.
"""

from __future__ import annotations

import jax.numpy as jnp

from lopt_trace.optimizers.base import ComponentwiseOptimizer


def _f32(**kw):
    return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in kw.items()}


class SGD(ComponentwiseOptimizer):
    """Plain gradient descent. θ = {learning_rate}. Default α = 0.1."""

    name = "sgd"
    state_names = ("gradient",)

    def init_theta(self, key=None):
        return _f32(learning_rate=0.1)

    def _F(self, theta, h, g):
        return g[..., None] + 0.0 * h

    def readout(self, theta, h):
        return -theta["learning_rate"] * h[..., 0]


class Momentum(ComponentwiseOptimizer):
    """Heavy-ball momentum. θ = {learning_rate, beta}. Defaults α = 0.1, β = 0.9."""

    name = "momentum"
    state_names = ("velocity",)

    def init_theta(self, key=None):
        return _f32(learning_rate=0.1, beta=0.9)

    def _F(self, theta, h, g):
        return theta["beta"] * h + g[..., None]

    def readout(self, theta, h):
        return -theta["learning_rate"] * h[..., 0]


class RMSProp(ComponentwiseOptimizer):
    """RMSProp as in ``optax.rmsprop``. θ = {learning_rate, decay, eps}.

    Defaults α = 1e-3, ρ = 0.9, ε = 1e-8. The last gradient is part of the state because the
    update needs it.
    """

    name = "rmsprop"
    state_names = ("mean_square", "gradient")
    state_range = {"mean_square": (0.0, float("inf"))}

    def init_theta(self, key=None):
        return _f32(learning_rate=1e-3, decay=0.9, eps=1e-8)

    def _F(self, theta, h, g):
        rho = theta["decay"]
        ms = rho * h[..., 0] + (1.0 - rho) * g * g
        return jnp.stack([ms, g + 0.0 * h[..., 1]], axis=-1)

    def readout(self, theta, h):
        return -theta["learning_rate"] * h[..., 1] / jnp.sqrt(h[..., 0] + theta["eps"])


class Adam(ComponentwiseOptimizer):
    """Adam with bias correction, as in ``optax.adam``. θ = {learning_rate, b1, b2, eps}.

    Defaults α = 1e-3, β1 = 0.9, β2 = 0.999, ε = 1e-8. The step counter is a state component,
    held (a clock) by the fixed-point analyses.
    """

    name = "adam"
    state_names = ("m", "v", "count")
    held_state = ("count",)
    state_range = {"v": (0.0, float("inf")), "count": (0.0, float("inf"))}

    def init_theta(self, key=None):
        return _f32(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8)

    def _F(self, theta, h, g):
        m = theta["b1"] * h[..., 0] + (1.0 - theta["b1"]) * g
        v = theta["b2"] * h[..., 1] + (1.0 - theta["b2"]) * g * g
        return jnp.stack([m, v, h[..., 2] + 1.0], axis=-1)

    def readout(self, theta, h):
        count = h[..., 2]
        m_hat = h[..., 0] / (1.0 - theta["b1"] ** count)
        v_hat = h[..., 1] / (1.0 - theta["b2"] ** count)
        return -theta["learning_rate"] * m_hat / (jnp.sqrt(v_hat) + theta["eps"])


BASELINES: dict[str, type[ComponentwiseOptimizer]] = {
    cls.name: cls for cls in (SGD, Momentum, RMSProp, Adam)
}
