"""Search spaces of the baselines: log-uniform ranges, sampled candidates, fixed hyperparameters."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.optimizers import ComponentwiseOptimizer, make_optimizer
from lopt_trace.optimizers.optax_wrap import optax_search_space


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """A hyperparameter drawn log-uniformly from [low, high].

    With ``complement``, the log-uniform draw is 1 − value (for decay rates such as β), so the
    value itself lies in [1 − high, 1 − low].
    """

    low: float
    high: float
    complement: bool = False

    def __post_init__(self):
        if not 0 < self.low <= self.high:
            raise ValueError(f"need 0 < low <= high, got [{self.low}, {self.high}]")
        if self.complement and self.high > 1:
            raise ValueError("a complement range must lie within (0, 1]")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = np.exp(rng.uniform(math.log(self.low), math.log(self.high), size=n))
        return 1.0 - u if self.complement else u

    def describe(self) -> str:
        if self.complement:
            return f"1 − value log-uniform in [{self.low:g}, {self.high:g}]"
        return f"log-uniform in [{self.low:g}, {self.high:g}]"

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "complement": self.complement,
                "description": self.describe()}


#: The documented search space of each baseline (see docs/tuning.md). Keys are θ entries.
SEARCH_SPACES: dict[str, dict[str, LogUniform]] = {
    "sgd": {"learning_rate": LogUniform(1e-6, 10.0)},
    "momentum": {"learning_rate": LogUniform(1e-6, 10.0),
                 "beta": LogUniform(1e-3, 1.0, complement=True)},
    "rmsprop": {"learning_rate": LogUniform(1e-6, 1.0),
                "decay": LogUniform(1e-4, 1.0, complement=True),
                "eps": LogUniform(1e-10, 1.0)},
    "adam": {"learning_rate": LogUniform(1e-6, 1.0),
             "b1": LogUniform(1e-3, 1.0, complement=True),
             "b2": LogUniform(1e-5, 1.0, complement=True),
             "eps": LogUniform(1e-10, 1.0)},
}


#: what a candidate's per-problem score is
OBJECTIVES = {
    "meta": "meta-objective: mean_k f_k / f_0 over k = 1..K (non-finite: inf)",
    "final": "final normalised loss f_K / f_0 (non-finite: inf)",
}


def search_space(optimizer: str) -> dict[str, LogUniform]:
    """The search space of a baseline or of an ``optax:`` spec (derived from its hyperparameters'
    names, :func:`lopt_trace.optimizers.optax_wrap.optax_search_space`), or a :class:`UserError`
    naming the choices."""
    if optimizer.startswith("optax:"):
        return optax_search_space(make_optimizer(optimizer))
    try:
        return SEARCH_SPACES[optimizer]
    except KeyError:
        raise UserError(f"cannot tune {optimizer!r}; choose one of: {', '.join(SEARCH_SPACES)}, all, "
                        "optax:NAME") from None


def sample_candidates(space: dict[str, LogUniform], samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``samples`` random candidates, ``{name: float32 array (samples,)}``.

    Values are rounded to float32 here, so what is stored (and bundled) is exactly what was run.
    """
    rng = np.random.default_rng(seed)
    return {name: dist.sample(rng, samples).astype(np.float32) for name, dist in space.items()}


def tuning_setup(optimizer: str, space: dict[str, LogUniform] | None = None
                 ) -> tuple[ComponentwiseOptimizer, dict[str, LogUniform], Callable, dict]:
    """``(optimizer, space, to_theta, fixed)`` of a baseline's search: ``to_theta`` fills the
    θ entries that ``space`` does not search with their defaults, ``fixed`` (float32)."""
    opt = make_optimizer(optimizer)
    space = dict(space or search_space(optimizer))
    default = {k: np.float32(v) for k, v in opt.init_theta().items()}
    unknown = set(space) - set(default)
    if unknown:
        raise UserError(f"search space names {sorted(unknown)} are not hyperparameters of {optimizer}")
    fixed = {k: v for k, v in default.items() if k not in space}

    def to_theta(candidates):
        n = len(next(iter(candidates.values())))
        return {k: candidates[k] if k in candidates else np.full(n, default[k], np.float32)
                for k in default}

    return opt, space, to_theta, fixed


def with_fixed(ds: xr.Dataset, fixed: dict, optimizer: str) -> xr.Dataset:
    """``ds`` with the hyperparameters the search did not vary, as constant ``sample`` variables."""
    ds.attrs["fixed"] = {k: float(v) for k, v in fixed.items()}
    for k, v in fixed.items():
        ds[k] = xr.Variable("sample", np.full(ds.sizes["sample"], float(v)),
                            {"long_name": f"{optimizer} {k} (fixed at its default)", "units": "1"})
    return ds

