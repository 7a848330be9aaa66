"""Component-wise optimizers: one protocol (see :mod:`lopt_trace.optimizers.base`), implemented
by the learned GRU, by SGD, momentum, RMSProp and Adam, by the distilled optimizer that
``lopt-trace distill`` builds from a store's analyses, and by any component-wise optax transform
(:func:`from_optax`, specs ``optax:NAME(k=v,...)``)."""

from __future__ import annotations

from lopt_trace.errors import UserError
from lopt_trace.optimizers.base import ComponentwiseOptimizer, Theta
from lopt_trace.optimizers.baselines import BASELINES, SGD, Adam, Momentum, RMSProp
from lopt_trace.optimizers.distilled import Distilled
from lopt_trace.optimizers.learned import LearnedGRU, fold_scales, momentum_gru, sign_momentum_gru
from lopt_trace.optimizers.optax_adapter import ComponentwiseState, as_gradient_transformation
from lopt_trace.optimizers.optax_wrap import (OptaxOptimizer, from_optax, is_optax_spec,
                                              optax_from_config, optax_from_spec)

OPTIMIZERS: dict[str, type[ComponentwiseOptimizer]] = {**BASELINES, "learned": LearnedGRU,
                                                       "distilled": Distilled}


def make_optimizer(config: dict | str, **overrides) -> ComponentwiseOptimizer:
    """Build an optimizer from a name, an ``optax:NAME(k=v,...)`` spec or a
    :meth:`ComponentwiseOptimizer.config` dict."""
    if is_optax_spec(config):
        return optax_from_spec(config, **overrides)
    config = {"name": config} if isinstance(config, str) else dict(config)
    config.update(overrides)
    if config.get("name") == OptaxOptimizer.name:
        return optax_from_config(config)
    name = config.pop("name")
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}, "
                        "or optax:NAME for an optax transform") from None
    return cls(**config)


__all__ = ["ComponentwiseOptimizer", "Theta", "SGD", "Momentum", "RMSProp", "Adam", "LearnedGRU", "Distilled",
           "BASELINES", "OPTIMIZERS", "make_optimizer", "momentum_gru",
           "sign_momentum_gru", "fold_scales", "ComponentwiseState",
           "as_gradient_transformation", "OptaxOptimizer", "from_optax", "is_optax_spec",
           "optax_from_spec"]
