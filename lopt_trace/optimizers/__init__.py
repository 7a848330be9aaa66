"""Component-wise optimizers: one protocol (see :mod:`lopt_trace.optimizers.base`), implemented
by the learned GRU and by SGD, momentum, RMSProp and Adam."""

from __future__ import annotations

from lopt_trace.errors import UserError
from lopt_trace.optimizers.base import ComponentwiseOptimizer, Theta
from lopt_trace.optimizers.baselines import BASELINES, SGD, Adam, Momentum, RMSProp
from lopt_trace.optimizers.learned import LearnedGRU, fold_scales, momentum_gru, sign_momentum_gru
from lopt_trace.optimizers.optax_adapter import ComponentwiseState, as_gradient_transformation

OPTIMIZERS: dict[str, type[ComponentwiseOptimizer]] = {**BASELINES, "learned": LearnedGRU}


def make_optimizer(config: dict | str, **overrides) -> ComponentwiseOptimizer:
    """Build an optimizer from a name or a :meth:`ComponentwiseOptimizer.config` dict."""
    config = {"name": config} if isinstance(config, str) else dict(config)
    config.update(overrides)
    name = config.pop("name")
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}") from None
    return cls(**config)


__all__ = ["ComponentwiseOptimizer", "Theta", "SGD", "Momentum", "RMSProp", "Adam", "LearnedGRU",
           "BASELINES", "OPTIMIZERS", "make_optimizer", "momentum_gru",
           "sign_momentum_gru", "fold_scales", "ComponentwiseState",
           "as_gradient_transformation"]
