"""The learned optimizer: a GRU run on every parameter, with a linear readout.

For each scalar parameter, with x = input_scale · g::

    z  = σ(W_z x + h U_z + b_z)            update gate
    r  = σ(W_r x + h U_r + b_r)            reset gate
    h̃  = tanh(W_h x + (r ⊙ h) U_h + b_h)
    h' = (1 − z) ⊙ h + z ⊙ h̃
    Δx = output_scale · (h' · w)           linear readout, w starts at zero

With ``input_norm`` = δ the gradient is first normalised by its running maximum (AdaMax's u),
a state component ``gmax`` after the GRU units::

    gmax' = max(δ · gmax, |g|),   x = input_scale · g / gmax'     (|x| ≤ input_scale)

so the GRU sees every parameter's gradient on the same scale. This normalisation is given by
hand, not learned; see docs/metatrain.md.

θ = {"W_z", "W_r", "W_h": (u,), "U_z", "U_r", "U_h": (u, u), "b_z", "b_r", "b_h": (u,),
     "h0": (u,), "readout": (u,)}; ``h0`` is the learned initial state shared by all parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lopt_trace.optimizers.base import ComponentwiseOptimizer

GATES = ("z", "r", "h")


class LearnedGRU(ComponentwiseOptimizer):
    """Component-wise GRU optimizer with ``units`` hidden units (the paper uses 256)."""

    name = "learned"

    def __init__(self, units: int = 32, input_scale: float = 1.0, output_scale: float = 1e-2,
                 clip: float | None = None, input_norm: float | None = None):
        super().__init__(clip)
        if int(units) < 1:
            raise ValueError(f"units must be positive, got {units}")
        if input_norm is not None and not 0.0 <= input_norm <= 1.0:
            raise ValueError(f"input_norm is a decay in [0, 1], got {input_norm}")
        self.units = int(units)
        self.input_scale = float(input_scale)
        self.output_scale = float(output_scale)
        self.input_norm = None if input_norm is None else float(input_norm)
        self.state_names = tuple(f"u{i}" for i in range(self.units))
        if self.input_norm is not None:
            self.state_names += ("gmax",)
            self.held_state = ("gmax",)  # decays to 0 without gradients, where g / gmax is sign(g)

    def config(self) -> dict:
        config = {**super().config(), "units": self.units, "input_scale": self.input_scale,
                  "output_scale": self.output_scale}
        if self.input_norm is not None:  # absent, not None, so older files read the same
            config["input_norm"] = self.input_norm
        return config

    def init_theta(self, key: jax.Array | None = None):
        """Input weights ~ N(0, 1), recurrent weights orthogonal, biases, h0 and readout zero."""
        key = jax.random.PRNGKey(0) if key is None else key
        u = self.units
        keys = jax.random.split(key, 6)
        theta = {}
        ortho = jax.nn.initializers.orthogonal()
        for i, gate in enumerate(GATES):
            theta[f"W_{gate}"] = jax.random.normal(keys[i], (u,), dtype=jnp.float32)
            theta[f"U_{gate}"] = ortho(keys[3 + i], (u, u), jnp.float32)
            theta[f"b_{gate}"] = jnp.zeros((u,), jnp.float32)
        theta["h0"] = jnp.zeros((u,), jnp.float32)
        theta["readout"] = jnp.zeros((u,), jnp.float32)
        return theta

    def init_state(self, theta, n: int) -> jax.Array:
        h = jnp.broadcast_to(theta["h0"], (n, self.units))
        if self.input_norm is not None:
            h = jnp.concatenate([h, jnp.zeros((n, 1), h.dtype)], axis=-1)
        return h

    def _F(self, theta, h, g):
        if self.input_norm is not None:
            gmax = jnp.maximum(self.input_norm * h[..., -1], jnp.abs(g))
            h = h[..., :-1]
            g = g / jnp.where(gmax > 0, gmax, 1.0)
        x = (self.input_scale * g)[..., None]
        z = jax.nn.sigmoid(x * theta["W_z"] + h @ theta["U_z"] + theta["b_z"])
        r = jax.nn.sigmoid(x * theta["W_r"] + h @ theta["U_r"] + theta["b_r"])
        h_tilde = jnp.tanh(x * theta["W_h"] + (r * h) @ theta["U_h"] + theta["b_h"])
        h_next = (1.0 - z) * h + z * h_tilde
        if self.input_norm is not None:
            h_next = jnp.concatenate([h_next, gmax[..., None]], axis=-1)
        return h_next

    def readout(self, theta, h):
        return self.output_scale * (h[..., : self.units] @ theta["readout"])


def momentum_gru(beta: float, learning_rate: float, units: int = 1,
                 input_scale: float = 1e-3) -> tuple[LearnedGRU, dict]:
    """A GRU whose weights are set by hand so that it implements heavy-ball momentum.

    With constant gates (z = 1 − β, U = 0) and a small input the candidate is linear in g, so
    h' = β h + (1 − β) tanh(W_h · input_scale · g) ≈ β h + (1 − β) W_h input_scale g. The readout
    is chosen so that Δx ≈ −α (β v + g) in the small-gradient regime, i.e. momentum with
    learning rate α and β. ∂F/∂h = β exactly at every state. Used to test the analyses.
    """
    opt = LearnedGRU(units=units, input_scale=input_scale, output_scale=1.0)
    u = units
    z = 1.0 - beta
    theta = {f"{p}_{gate}": jnp.zeros((u, u) if p == "U" else (u,), jnp.float32)
             for gate in GATES for p in ("W", "U", "b")}
    theta["b_z"] = jnp.full((u,), np.log(z / (1.0 - z)), jnp.float32)
    theta["b_r"] = jnp.zeros((u,), jnp.float32)
    theta["W_h"] = jnp.zeros((u,), jnp.float32).at[0].set(1.0)
    theta["h0"] = jnp.zeros((u,), jnp.float32)
    # h'_0 ≈ (1 − β)·input_scale·(β v + g) when h_0 = (1 − β)·input_scale·v, so α·v' needs:
    theta["readout"] = jnp.zeros((u,), jnp.float32).at[0].set(-learning_rate / (z * input_scale))
    return opt, theta


def sign_momentum_gru(beta: float, learning_rate: float, sharpness: float, units: int = 1,
                      key: jax.Array | None = None, input_norm: float | None = None
                      ) -> tuple[LearnedGRU, dict]:
    """A GRU set by hand to *soft-sign momentum*, the warm start of :mod:`lopt_trace.warm_start`.

    Unit 0 runs heavy-ball momentum on a saturating function of the gradient::

        v' = β v + tanh(s · g),     Δx = −α v'

    (linear, i.e. plain momentum with learning rate α·s, for |g| ≪ 1/s; sign-like, i.e. clipped,
    for |g| ≫ 1/s). It is stored as h_0 = (1 − β) v with a constant update gate z = 1 − β, a
    candidate tanh(s·g), and readout −1/(1 − β); the GRU's input and output scales are s and α,
    so θ stays O(1). Unit 0 is decoupled from the others (zero recurrent weights in and out).
    Units 1… start as :meth:`LearnedGRU.init_theta` makes them but with zero readout, so they do
    not change the update until meta-training recruits them. With ``input_norm`` the GRU's
    input is normalised (see :class:`LearnedGRU`), so g above is g / gmax'.
    """
    if not 0.0 < beta < 1.0 or not learning_rate > 0 or not sharpness > 0:
        raise ValueError(f"need 0 < beta < 1 and positive learning_rate and sharpness, got "
                         f"{beta}, {learning_rate}, {sharpness}")
    opt = LearnedGRU(units=units, input_scale=sharpness, output_scale=learning_rate,
                     input_norm=input_norm)
    theta = {k: np.array(v) for k, v in opt.init_theta(key).items()}
    for gate in GATES:
        theta[f"U_{gate}"][0, :] = 0.0
        theta[f"U_{gate}"][:, 0] = 0.0
        theta[f"W_{gate}"][0] = 0.0
        theta[f"b_{gate}"][0] = 0.0
    z = 1.0 - beta
    theta["b_z"][0] = np.log(z / (1.0 - z))
    theta["W_h"][0] = 1.0
    theta["readout"][0] = -1.0 / z
    return opt, {k: jnp.asarray(v, jnp.float32) for k, v in theta.items()}


def fold_scales(opt: LearnedGRU, theta: dict) -> tuple[LearnedGRU, dict]:
    """The same optimizer with input and output scales 1, the scales moved into θ.

    The input weights are multiplied by ``input_scale`` and the readout by ``output_scale``, so
    every step is unchanged (up to rounding). Hyperparameter searches use this to put the scales
    in θ, where they can vary from candidate to candidate under ``vmap``.
    """
    folded = LearnedGRU(units=opt.units, input_scale=1.0, output_scale=1.0, clip=opt.clip,
                        input_norm=opt.input_norm)
    theta = dict(theta)
    for gate in GATES:
        theta[f"W_{gate}"] = theta[f"W_{gate}"] * opt.input_scale
    theta["readout"] = theta["readout"] * opt.output_scale
    return folded, theta
