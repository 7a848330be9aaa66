"""Linear regression, f(x) = ½‖Ax − b‖², with a controlled Hessian spectrum."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lopt_trace.tasks.base import Params, Problem, Task, TensorInfo


class LinearRegression(Task):
    """Noisy-free least squares with Hessian AᵀA = Q diag(λ) Qᵀ.

    Q is a random orthogonal matrix, λ is log-uniform in [lambda_min, lambda_max],
    ``A = diag(√λ) Qᵀ``, b ~ N(0, I) and x0 ~ N(0, I). Default: 5 parameters, 200 steps.
    """

    name = "linear_regression"
    default_steps = 200

    def __init__(self, steps: int | None = None, dim: int = 5,
                 lambda_min: float = 1e-3, lambda_max: float = 1.0):
        super().__init__(steps)
        if int(dim) < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if not 0 < lambda_min <= lambda_max:
            raise ValueError("need 0 < lambda_min <= lambda_max")
        self.dim = int(dim)
        self.lambda_min = float(lambda_min)
        self.lambda_max = float(lambda_max)
        self.tensors = (TensorInfo("x", 0, "weight", (self.dim,)),)

    def config(self) -> dict:
        return {**super().config(), "dim": self.dim,
                "lambda_min": self.lambda_min, "lambda_max": self.lambda_max}

    def sample(self, key: jax.Array) -> Problem:
        kq, kl, kb, kx = jax.random.split(key, 4)
        q, _ = jnp.linalg.qr(jax.random.normal(kq, (self.dim, self.dim)))
        log_lam = jax.random.uniform(kl, (self.dim,), minval=jnp.log(self.lambda_min),
                                     maxval=jnp.log(self.lambda_max))
        lam = jnp.exp(log_lam)
        a = jnp.sqrt(lam)[:, None] * q.T
        b = jax.random.normal(kb, (self.dim,))
        x0 = jax.random.normal(kx, (self.dim,))
        return Problem(params={"x": x0}, data={"A": a, "b": b, "eigenvalues": lam})

    def loss(self, data, params: Params, step) -> jax.Array:
        r = data["A"] @ params["x"] - data["b"]
        return 0.5 * jnp.sum(r * r)

    # -- closed forms -------------------------------------------------------------------------
    @staticmethod
    def optimum(problem: Problem) -> jax.Array:
        """The minimiser x* = (AᵀA)⁻¹ Aᵀ b."""
        a, b = problem.data["A"], problem.data["b"]
        return jnp.linalg.lstsq(a, b)[0]

    def optimal_loss(self, problem: Problem) -> jax.Array:
        """f(x*), the smallest loss reachable."""
        return self.loss(problem.data, {"x": self.optimum(problem)}, 0)

    @staticmethod
    def condition_number(problem: Problem) -> jax.Array:
        """λ_max / λ_min of the Hessian AᵀA."""
        lam = problem.data["eigenvalues"]
        return jnp.max(lam) / jnp.min(lam)
