"""Any component-wise optax transform as a protocol optimizer: :func:`from_optax`.

``from_optax(optax.lion, learning_rate=1e-4)`` (or the spec ``optax:lion(learning_rate=1e-4)``)
runs the optax transform on every scalar parameter as h' = F(θ, h, g), Δx = readout(θ, h'):

* **State components** are the leaves of ``tx.init(params)`` in ``jax.tree_util`` flatten order
  (the order of the ``chain``, then each state's fields in declaration order), named by their
  field (``count``, ``mu``, ``nu``, ``trace``; a name that repeats is qualified by its state type,
  ``ScaleByAdamState.mu``). A leaf must have the parameter's shape (one value per parameter) or be
  a scalar (a step count: each parameter keeps its own copy, as in the built-in Adam). Integer
  leaves (counts) are held by the fixed-point analyses (``held_state``), like a clock.
* The last component is ``update``, the update Δx optax returned. F runs ``tx.update(g, state)``
  on one scalar parameter (``vmap``-ed over all of them) and stores the new optax state *and*
  the update; readout(θ, h') returns that component. This is exact for every transform, which a
  readout recomputed from the optax state alone could not be (Lion's update needs the gradient
  and the *old* momentum, which h' no longer holds). The analyses see the true Jacobians: the
  ``update`` row of ∂F/∂h carries the readout's dependence on the old state and its column is
  zero, so it adds an eigenvalue 0 with α = 0 (for ``optax.sgd(α, momentum=β)`` the modes are
  λ = β with learning rate α, and λ = 0 with learning rate 0).
* **θ** are the float hyperparameters: those passed and those the factory gives a float default
  (``learning_rate``, ``b1``, ``b2``, ``eps``, ...), as float32 scalars. The transform is built
  inside F from θ, so θ can be traced (differentiated, ``vmap``-ed by ``tune``). Everything else
  (booleans, integers, strings, None) is fixed configuration.
* ``learning_rate`` defaults to :data:`DEFAULT_LEARNING_RATE` when the factory requires one, and
  ``weight_decay`` to 0: weight decay needs the parameter values, which F does not see.

Construction checks that the transform is component-wise, and refuses it in one line naming the
offending state leaf otherwise: a leaf whose shape is not the parameter's (factored second
moments, histories), a leaf that is not a number (a random key), a state that starts from the
parameter values, an update that depends on the parameter values (weight decay), and a state or
update that couples parameters (a global-norm clip: running the transform on a vector of
parameters must give what running it on each parameter alone gives, checked on random gradients
spanning six orders of magnitude).

Specs (``lopt-trace record|compare|tune --optimizer``): ``optax:NAME`` or
``optax:NAME(key=value, ...)``, with NAME an optax attribute (``lion``, ``adabelief``, ``yogi``,
``nadam``, ``sign_sgd``, ``contrib.xyz``) or the dotted path of a factory in an importable module
(``mypackage.transforms.my_tx``); values are Python literals (parsed, never evaluated).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt_trace.errors import UserError
from lopt_trace.optimizers.base import ComponentwiseOptimizer
from lopt_trace.optimizers.optax_check import (_SETUPS, UPDATE, _cache_key, _field,  # noqa: F401
                                               _first_line, _inspect, _leaf_name)
from lopt_trace.optimizers.optax_spec import (_LITERALS, PREFIX, _factory_name, format_optax_spec,  # noqa: F401
                                              is_optax_spec, optax_label, parse_optax_spec,
                                              resolve_factory)

#: learning rate used when the factory requires one and the spec gives none
DEFAULT_LEARNING_RATE = 1e-3


# -- the optimizer ---------------------------------------------------------------------------------
def _is_float_hyperparameter(value, default) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, float) or not (isinstance(default, int) and not isinstance(default, bool))


class OptaxOptimizer(ComponentwiseOptimizer):
    """A component-wise optax transform run as h' = F(θ, h, g), Δx = readout(θ, h').

    Build it with :func:`from_optax` or :func:`optax_from_spec`; see the module docstring.
    """

    name = "optax"

    def __init__(self, factory: Callable | str, hyperparameters: dict | None = None,
                 clip: float | None = None):
        super().__init__(clip)
        given = dict(hyperparameters or {})
        if isinstance(factory, str):
            self.factory_name: str | None = factory
            factory = resolve_factory(factory)
        else:
            self.factory_name = _factory_name(factory)
        if not callable(factory):
            raise UserError(f"from_optax needs a function that returns an optax transform, got {factory!r}")
        self.factory = factory
        label = self.factory_name or getattr(factory, "__qualname__", repr(factory))
        self.where = f"optax:{label}"
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        unknown = [k for k in given if params and k not in params
                   and not any(p.kind is p.VAR_KEYWORD for p in params.values())]
        if unknown:
            raise UserError(f"{self.where} has no hyperparameter {unknown[0]!r}; it takes: "
                            f"{', '.join(params)}")
        hp = {}
        for k, p in params.items():  # signature order, then the rest as given
            if k in given:
                hp[k] = given[k]
            elif k == "learning_rate" and p.default is inspect.Parameter.empty:
                hp[k] = DEFAULT_LEARNING_RATE
            elif k == "weight_decay":
                hp[k] = 0.0  # weight decay needs x, which F does not see
        hp.update({k: v for k, v in given.items() if k not in hp})
        defaults = {k: p.default for k, p in params.items()
                    if p.default is not inspect.Parameter.empty}
        theta = {}
        for k, v in hp.items():
            if k != "weight_decay" and _is_float_hyperparameter(v, defaults.get(k)):
                theta[k] = float(v)
        for k, v in defaults.items():
            if (k not in hp and k != "weight_decay" and isinstance(v, float)
                    and _keyword(params[k])):
                theta[k] = float(v)
        self._theta0 = {k: theta[k] for k in [*params, *theta] if k in theta}
        self.static = {k: v for k, v in hp.items() if k not in self._theta0}
        self.hyperparameters = {**hp, **self._theta0}
        self.spec = (format_optax_spec(self.factory_name, {**self._theta0, **self.static})
                     if self.factory_name is not None
                     and all(isinstance(v, _LITERALS) for v in self.static.values()) else None)
        self._setup()

    # -- construction --------------------------------------------------------------------------
    def _build(self, theta) -> Any:
        try:
            tx = self.factory(**self.static, **theta)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"{self.where}: building the transform failed "
                            f"({type(exc).__name__}: {_first_line(exc)})") from None
        if not isinstance(tx, optax.GradientTransformation):
            raise UserError(f"{self.where} returned {type(tx).__name__}, not an optax GradientTransformation")
        return tx

    def _setup(self) -> None:
        key = _cache_key(self)
        cached = _SETUPS.get(key) if key is not None else None
        if cached is None:
            cached = _inspect(self)
            if key is not None:
                _SETUPS[key] = cached
        (self._treedef, self._leaf_names, self._leaf_int, self._init_leaves, moved,
         self._int_cast) = cached
        for k in moved:  # hyperparameters the factory cannot take as traced arrays
            self.static[k] = self._theta0.pop(k)
        labels = [_field(n) for n in self._leaf_names]
        names = [lab if labels.count(lab) == 1 else full for lab, full in zip(labels, self._leaf_names)]
        names = [n if names.count(n) == 1 else f"{i}:{n}" for i, n in enumerate(names)]
        upd = UPDATE
        while upd in names:
            upd = "_" + upd
        self.state_names = (*names, upd)
        self.held_state = tuple(n for n, i in zip(names, self._leaf_int) if i)
        self.state_range = {n: (0.0, float("inf")) for n in self.held_state}  # counts

    # -- protocol ------------------------------------------------------------------------------
    def init_theta(self, key=None):
        return {k: jnp.asarray(v, dtype=jnp.float32) for k, v in self._theta0.items()}

    def init_state(self, theta, n: int) -> jax.Array:
        leaves = jax.tree.leaves(theta)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        h0 = jnp.asarray([*self._init_leaves, 0.0], dtype=dtype)
        return jnp.broadcast_to(h0, (n, self.state_size))

    def _state_from(self, hh):
        leaves = [jnp.round(hh[j]).astype(jnp.int32) if (self._leaf_int[j] and self._int_cast) else hh[j]
                  for j in range(len(self._leaf_names))]
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

    _int_cast = False  # integer leaves (counts) are given to optax as floats unless that fails

    def _F(self, theta, h, g):
        tx = self._build(theta)
        d = self.state_size
        g = jnp.broadcast_to(g, h.shape[:-1]).astype(h.dtype)

        def one(hh, gg):
            upd, new = tx.update(gg, self._state_from(hh), jnp.zeros_like(gg))
            new_leaves = jax.tree_util.tree_leaves(new)
            return jnp.stack([jnp.asarray(x).astype(hh.dtype) for x in new_leaves]
                             + [jnp.asarray(upd).astype(hh.dtype)])

        out = jax.vmap(one)(h.reshape(-1, d), g.reshape(-1))
        return out.reshape(h.shape)

    def readout(self, theta, h):
        return h[..., -1]

    def config(self) -> dict:
        """``{"name": "optax", "spec": ..., "clip": ...}``; ``make_optimizer(config)`` rebuilds it
        (the spec holds the factory and every hyperparameter, θ at its default value)."""
        config = {"name": self.name, "spec": self.spec, "clip": self.clip}
        if self.spec is None:  # built in Python from something that cannot be named
            config["transform"] = f"{self.where}({', '.join(f'{k}={v!r}' for k, v in self.hyperparameters.items())})"
            config["instance"] = id(self.factory)  # keeps compiled-function caches apart
        return config


def _keyword(p: inspect.Parameter) -> bool:
    return p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


# -- entry points -------------------------------------------------------------------------------------
def from_optax(tx_factory: Callable | str, clip: float | None = None, **hyperparameters) -> OptaxOptimizer:
    """Wrap a component-wise optax transform as a protocol optimizer.

    ``tx_factory`` is a function returning an ``optax.GradientTransformation`` (``optax.lion``,
    your own) or its name (``"lion"``, ``"mypackage.module.factory"``); ``hyperparameters`` are
    passed to it (the float ones are θ). ``clip``: element-wise gradient clipping before F, as
    for every protocol optimizer. Raises :class:`UserError` for a transform that is not
    component-wise. See the module docstring for the state layout.
    """
    return OptaxOptimizer(tx_factory, hyperparameters, clip=clip)


def optax_from_spec(spec: str, clip: float | None = None) -> OptaxOptimizer:
    """The optimizer of an ``optax:NAME(k=v,...)`` spec."""
    name, kwargs = parse_optax_spec(spec)
    return OptaxOptimizer(name, kwargs, clip=clip)


def optax_from_config(config: dict) -> OptaxOptimizer:
    """Inverse of :meth:`OptaxOptimizer.config`."""
    config = dict(config)
    config.pop("name", None)
    spec = config.pop("spec", None)
    clip = config.pop("clip", None)
    if spec is None and "transform" not in config:
        raise UserError("an optax optimizer needs a transform: optax:NAME, e.g. optax:lion")
    if spec is None:
        what = config["transform"]
        raise UserError(f"{what} was wrapped in Python from a function that cannot be imported by "
                        "name; define it at module level (or wrap it again with from_optax)")
    config.pop("transform", None)
    config.pop("instance", None)
    if config:
        raise UserError(f"unknown optax optimizer settings {sorted(config)}")
    return optax_from_spec(spec, clip=clip)


# -- tuning ---------------------------------------------------------------------------------------------
_DECAYS = re.compile(r"^(b\d|beta\d?|decay|momentum|rho|gamma_decay)$")


def optax_search_space(opt: OptaxOptimizer) -> dict:
    """A random-search space from θ's names (docs/tuning.md): ``learning_rate`` (and ``*_rate``)
    log-uniform over [θ₀/1000, θ₀·1000]; ``eps*`` log-uniform over [min(θ₀, 1e-10), 1]; decays
    (``b1``, ``b2``, ``beta``, ``decay``, ``momentum``, ...) with 1 − value log-uniform over
    [min(1e-4, (1 − θ₀)/10), 1]. Entries that are 0, out of range or of another kind stay fixed."""
    from lopt_trace.tune import LogUniform  # here: lopt_trace.tune imports the optimizers (a cycle)

    space = {}
    for k, v in opt._theta0.items():
        if k == "learning_rate" or k.endswith("_rate") or k in ("lr", "step_size"):
            if v > 0:
                space[k] = LogUniform(v / 1000.0, v * 1000.0)
        elif k.startswith("eps"):
            if v > 0:
                space[k] = LogUniform(min(v, 1e-10), 1.0)
        elif _DECAYS.match(k):
            if 0.0 <= v < 1.0:
                space[k] = LogUniform(min(1e-4, (1.0 - v) / 10.0), 1.0, complement=True)
    if not space:
        raise UserError(f"{opt.where} has no hyperparameter tune knows how to search "
                        f"(θ: {', '.join(opt._theta0) or 'none'})")
    return space


def optax_entry(spec: str) -> tuple[str, OptaxOptimizer, dict]:
    """``(label, optimizer, θ as float32 NumPy arrays)`` of a spec, for the recorder, ``compare``
    and ``tune``."""
    opt = optax_from_spec(spec)
    return optax_label(spec), opt, {k: np.asarray(v, np.float32) for k, v in opt.init_theta().items()}
