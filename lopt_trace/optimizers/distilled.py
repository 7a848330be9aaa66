"""The distilled optimizer: the mechanisms the analyses found, put back together by hand.

``lopt-trace distill`` builds it from a store's ``/analysis/{momentum,schedule,clipping,adaptation}``
(:mod:`lopt_trace.distill.build`) and asks whether it does what the learned optimizer does. Per
parameter, with gradient g::

    gmax' = max(δ·gmax, |g|),   ĝ = g · norm_scale / gmax'    normalisation (only with input_norm δ)
    u'    = c(ĝ)                                              clipping (clip_at="gradient")
    v'    = β v + u'                                          momentum (heavy ball)
    m'    = β_a m + (1 − β_a) ĝ                               slow mean gradient, for adaptation
    t'    = t + 1                                             step count, for the schedule
    η     = s(t' − 1) · (α + α_fast)                          learning rate of the current gradient
    Δx    = −a(m') · (α v' + (η − α) u')

With ``clip_at="update"`` the gradient enters unclipped (u' = ĝ) and the update is clipped
instead, in the same units: Δx = −η · c(d/η) for d = a(m')·(α v' + (η − α) u'). Both give the
update function the clipping recipe measured one step from h0 (v = 0): Δx = −η(0)·c(ĝ).

From θ:

- ``c(g) = τ·tanh(g/τ)``: a soft clip at τ, one τ per sign of g (``clip_threshold``:
  [g < 0, g ≥ 0]); τ = inf leaves that side linear. c(g) ≈ g for |g| ≪ τ, → ±τ for |g| ≫ τ.
- α (``learning_rate``) and β (``beta``): one heavy-ball mode; α_fast (``fast_learning_rate``):
  the learning rate of every faster mode, lumped into an instantaneous term (quasi-hyperbolic
  momentum), so α + α_fast is the effective learning rate −∂Δx/∂g at the fixed point.
- ``s(k)``: the schedule, ``schedule[k]`` for step k = 0, 1, … (linear interpolation, the last
  value after the table ends). It scales the learning rate of the current gradient only
  (η − α is the instantaneous term's), so the memory's gain stays that of the fixed point.
- ``a(m)``: the adaptation curve, ``adaptation_ratio`` over ``adaptation_gradient`` (ascending
  g*), interpolated linearly and held beyond its ends; β_a (``adaptation_beta``) sets how slowly
  m follows the gradient. ``norm_scale``: the normalised gradient's scale (0: no normalisation).

θ = {learning_rate, fast_learning_rate, beta, adaptation_beta, norm_scale: (); schedule: (T,);
clip_threshold: (2,); adaptation_gradient, adaptation_ratio: (A,)}. The default θ
(:meth:`Distilled.init_theta`) is heavy-ball momentum with α = 0.1, β = 0.9 and every other
mechanism neutral.

**Switches.** Each mechanism in :data:`MECHANISMS` can be switched off in the configuration
(``Distilled(schedule=False)``, ``make_optimizer({"name": "distilled", "schedule": False})``).
Off means its θ entries take their neutral values (:func:`neutral`): β = 0 (v' = u', so
Δx = −a·η·u'), s ≡ 1, τ = inf, a ≡ 1, norm_scale = 0 (ĝ = g). The neutral θ with every switch on
gives the same updates, which is how ``distill`` runs all the ablations as one batch of θ.

State: ``velocity`` (v), ``gradient`` (u, the instantaneous term), ``mean_gradient`` (m),
``count`` (t) and, with ``input_norm``, ``gmax``. ``count`` and ``gmax`` are held in fixed-point
analyses (a clock and a scale) and are non-negative.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lopt_trace.optimizers.base import ComponentwiseOptimizer

#: the mechanisms, in the order ``distill`` removes them
MECHANISMS = ("momentum", "schedule", "clipping", "adaptation", "normalization")
#: where the soft clip acts: on the gradient before the memory, or on the update
CLIP_AT = ("gradient", "update")


def neutral(theta: dict, mechanism: str) -> dict:
    """θ with ``mechanism``'s entries at their neutral values (the mechanism does nothing).

    Works on a single θ and on a stack of θ (any leading axes)."""
    th = dict(theta)
    if mechanism == "momentum":
        th["beta"] = jnp.zeros_like(th["beta"])
    elif mechanism == "schedule":
        th["schedule"] = jnp.ones_like(th["schedule"])
    elif mechanism == "clipping":
        th["clip_threshold"] = jnp.full_like(th["clip_threshold"], jnp.inf)
    elif mechanism == "adaptation":
        th["adaptation_ratio"] = jnp.ones_like(th["adaptation_ratio"])
    elif mechanism == "normalization":
        th["norm_scale"] = jnp.zeros_like(th["norm_scale"])
    else:
        raise ValueError(f"unknown mechanism {mechanism!r}; choose one of: {', '.join(MECHANISMS)}")
    return th


def soft_clip(g: jax.Array, threshold: jax.Array) -> jax.Array:
    """c(g) = τ·tanh(g/τ) with τ = threshold[1] for g ≥ 0 and threshold[0] for g < 0;
    c(g) = g where τ is infinite. g (...), threshold (2,) -> (...); c'(0) = 1."""
    tau = jnp.where(g >= 0, threshold[1], threshold[0])
    finite = jnp.isfinite(tau)
    safe = jnp.where(finite, tau, 1.0)
    return jnp.where(finite, safe * jnp.tanh(g / safe), g)


class Distilled(ComponentwiseOptimizer):
    """Momentum, schedule, clipping, adaptation (and a gradient normaliser) as one small optimizer.

    Args:
      momentum, schedule, clipping, adaptation, normalization: switch a mechanism on or off
        (see the module doc).
      input_norm: δ of the gradient normaliser gmax' = max(δ·gmax, |g|) (the learned GRU's
        ``input_norm``, copied); None: no normaliser and no ``gmax`` state.
      clip_at: ``"gradient"`` (default) or ``"update"``: where the soft clip acts.
      clip: stateless element-wise gradient clipping before F (the protocol's ``clip``).
    """

    name = "distilled"
    state_range = {"count": (0.0, math.inf), "gmax": (0.0, math.inf)}

    def __init__(self, momentum: bool = True, schedule: bool = True, clipping: bool = True,
                 adaptation: bool = True, normalization: bool = True,
                 input_norm: float | None = None, clip_at: str = "gradient",
                 clip: float | None = None):
        super().__init__(clip)
        if input_norm is not None and not 0.0 <= input_norm <= 1.0:
            raise ValueError(f"input_norm is a decay in [0, 1], got {input_norm}")
        if clip_at not in CLIP_AT:
            raise ValueError(f"clip_at is one of {CLIP_AT}, got {clip_at!r}")
        self.clip_at = clip_at
        self.switches = {"momentum": bool(momentum), "schedule": bool(schedule),
                         "clipping": bool(clipping), "adaptation": bool(adaptation),
                         "normalization": bool(normalization)}
        self.input_norm = None if input_norm is None else float(input_norm)
        self.state_names = ("velocity", "gradient", "mean_gradient", "count")
        self.held_state = ("count",)
        if self.input_norm is not None:
            self.state_names += ("gmax",)
            self.held_state += ("gmax",)

    @property
    def mechanisms(self) -> tuple[str, ...]:
        """The mechanisms this optimizer has (normalisation only with ``input_norm``)."""
        return tuple(m for m in MECHANISMS if m != "normalization" or self.input_norm is not None)

    def config(self) -> dict:
        return {**super().config(), **self.switches, "input_norm": self.input_norm,
                "clip_at": self.clip_at}

    def init_theta(self, key=None) -> dict:
        """Heavy-ball momentum (α = 0.1, β = 0.9) with every other mechanism neutral."""
        f32 = jnp.float32
        return {"learning_rate": jnp.asarray(0.1, f32), "fast_learning_rate": jnp.asarray(0.0, f32),
                "beta": jnp.asarray(0.9, f32), "adaptation_beta": jnp.asarray(0.9, f32),
                "norm_scale": jnp.asarray(0.0, f32), "schedule": jnp.ones((2,), f32),
                "clip_threshold": jnp.full((2,), jnp.inf, f32),
                "adaptation_gradient": jnp.asarray([-1.0, 1.0], f32),
                "adaptation_ratio": jnp.ones((2,), f32)}

    def active_theta(self, theta: dict) -> dict:
        """θ with every switched-off mechanism at its neutral values."""
        for mechanism, on in self.switches.items():
            if not on:
                theta = neutral(theta, mechanism)
        return theta

    # -- protocol --------------------------------------------------------------------------------
    def _F(self, theta, h, g):
        th = self.active_theta(theta)
        if self.input_norm is not None:
            gmax = jnp.maximum(self.input_norm * h[..., 4], jnp.abs(g))
            scaled = g * th["norm_scale"] / jnp.where(gmax > 0, gmax, 1.0)
            g_hat = jnp.where(th["norm_scale"] > 0, scaled, g)
        else:
            g_hat = g
        u = g_hat
        if self.clip_at == "gradient":
            u = soft_clip(g_hat, th["clip_threshold"])
        v = th["beta"] * h[..., 0] + u
        m = th["adaptation_beta"] * h[..., 2] + (1.0 - th["adaptation_beta"]) * g_hat
        parts = [v, u, m, h[..., 3] + 1.0]
        if self.input_norm is not None:
            parts.append(gmax)
        return jnp.stack(parts, axis=-1)

    def readout(self, theta, h):
        th = self.active_theta(theta)
        table = th["schedule"]
        steps = jnp.arange(table.shape[-1], dtype=table.dtype)
        alpha = th["learning_rate"]
        eta = jnp.interp(h[..., 3] - 1.0, steps, table) * (alpha + th["fast_learning_rate"])
        a = jnp.interp(h[..., 2], th["adaptation_gradient"], th["adaptation_ratio"])
        d = a * (alpha * h[..., 0] + (eta - alpha) * h[..., 1])
        if self.clip_at == "update":  # the same clip, on the update expressed as a gradient
            safe = jnp.where(eta != 0, eta, 1.0)
            clipped = safe * soft_clip(d / safe, th["clip_threshold"])
            d = jnp.where(eta != 0, clipped, d)
        return -d


__all__ = ["CLIP_AT", "Distilled", "MECHANISMS", "neutral", "soft_clip"]
