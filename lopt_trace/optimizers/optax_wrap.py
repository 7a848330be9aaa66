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

import ast
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lopt_trace.errors import UserError
from lopt_trace.optimizers.base import ComponentwiseOptimizer

PREFIX = "optax:"
#: learning rate used when the factory requires one and the spec gives none
DEFAULT_LEARNING_RATE = 1e-3
#: the name of the last state component, the update Δx
UPDATE = "update"

_LITERALS = (bool, int, float, str, type(None))


# -- specs ---------------------------------------------------------------------------------------
def is_optax_spec(spec) -> bool:
    """True for ``optax:...`` strings."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_optax_spec(spec: str) -> tuple[str, dict]:
    """``"optax:adabelief(learning_rate=1e-3,b1=0.9)"`` -> ``("adabelief", {"learning_rate": ...})``.

    Parsed with :mod:`ast` (values with :func:`ast.literal_eval`); nothing is evaluated.
    """
    if not is_optax_spec(spec):
        raise UserError(f"not an optax spec: {spec!r}; write optax:NAME or optax:NAME(key=value,...)")
    body = spec[len(PREFIX):].strip()
    try:
        node = ast.parse(body, mode="eval").body
    except SyntaxError:
        raise UserError(f"cannot parse {spec!r}; write optax:NAME or optax:NAME(key=value,...), "
                        "e.g. optax:lion(learning_rate=1e-4,b1=0.9)") from None
    call = node if isinstance(node, ast.Call) else None
    target = call.func if call is not None else node
    name = _dotted(target)
    if name is None:
        raise UserError(f"cannot parse {spec!r}: {body!r} is not a name or name(key=value,...)")
    kwargs = {}
    if call is not None:
        if call.args or any(k.arg is None for k in call.keywords):
            raise UserError(f"{spec!r}: give hyperparameters by keyword, e.g. optax:{name}(learning_rate=1e-3)")
        for k in call.keywords:
            try:
                value = ast.literal_eval(k.value)
            except ValueError:
                raise UserError(f"{spec!r}: the value of {k.arg} is not a literal (a number, True, "
                                "False, None or a quoted string)") from None
            if not isinstance(value, _LITERALS):
                raise UserError(f"{spec!r}: the value of {k.arg} must be a number, True, False, None "
                                f"or a string, got {value!r}")
            if k.arg in kwargs:
                raise UserError(f"{spec!r}: {k.arg} is given twice")
            kwargs[k.arg] = value
    return name, kwargs


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def format_optax_spec(name: str, hyperparameters: dict) -> str:
    """The canonical spec: ``optax:NAME(k=v,...)`` (``optax:NAME`` without hyperparameters)."""
    if not hyperparameters:
        return f"{PREFIX}{name}"
    return f"{PREFIX}{name}(" + ",".join(f"{k}={v!r}" for k, v in hyperparameters.items()) + ")"


def optax_label(spec: str) -> str:
    """A short group / label name for a spec: ``optax:lion(...)`` -> ``optax_lion``."""
    name = parse_optax_spec(spec)[0]
    return "optax_" + re.sub(r"[^A-Za-z0-9_]", "_", name.split(".")[-1])


def resolve_factory(name: str) -> Callable:
    """The factory NAME refers to: an attribute of optax (``lion``, ``contrib.x``), else a dotted
    ``module.function`` path in an importable module."""
    import optax

    obj = optax
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            break
    if obj is not None and callable(obj):
        return obj
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"optax:{name}: optax has no {name!r} and module {module!r} cannot be "
                            f"imported ({exc})") from None
        obj = getattr(mod, attr, None)
        if callable(obj):
            return obj
        raise UserError(f"optax:{name}: module {module!r} has no callable {attr!r}")
    raise UserError(f"optax has no transform {name!r}; e.g. optax:lion, optax:adabelief, optax:yogi, "
                    "optax:nadam, optax:sign_sgd, or mypackage.module.factory for your own")


def _factory_name(factory: Callable) -> str | None:
    """NAME such that :func:`resolve_factory` gives ``factory`` back, or None."""
    import optax

    short = getattr(factory, "__name__", None)
    if short and getattr(optax, short, None) is factory:
        return short
    module, qual = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if module and qual and "<" not in qual and "." not in qual:
        try:
            if getattr(importlib.import_module(module), qual, None) is factory:
                return f"{module}.{qual}"
        except ImportError:
            pass
    return None


# -- the optimizer ---------------------------------------------------------------------------------
def _leaf_name(state, path) -> str:
    """``ScaleByAdamState.mu`` for a leaf path (the state type that holds the field, the field)."""
    node, owner, parts = state, None, []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            owner, parts = type(node).__name__, [key.name]
            node = getattr(node, key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            if parts:
                parts.append(f"[{key.idx}]")
            node = node[key.idx]
        elif isinstance(key, jax.tree_util.DictKey):
            parts.append(f"[{key.key!r}]")
            node = node[key.key]
        else:
            parts.append(str(key))
    if owner is None:
        return jax.tree_util.keystr(path) or "state"
    return owner + "." + "".join(parts)


def _field(full: str) -> str:
    return full.split(".", 1)[1] if "." in full else full


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
        import optax

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- the component-wise check ----------------------------------------------------------------------
_SETUPS: dict = {}


def _cache_key(opt: OptaxOptimizer):
    try:
        key = (opt.factory, tuple(sorted(opt.static.items())), tuple(sorted(opt._theta0.items())))
        hash(key)
        return key
    except TypeError:
        return None


def _native(opt: OptaxOptimizer, params, grads, param_values=None):
    """Run the transform as optax does on ``params``' shape: updates and states per step."""
    tx = opt._build(opt._theta0)
    state = tx.init(params)
    pv = jnp.zeros_like(params) if param_values is None else param_values
    ups, states = [], []
    for g in grads:
        u, state = tx.update(g, state, pv)
        ups.append(np.asarray(u, np.float64))
        states.append([np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(state)])
    return ups, states


def _inspect(opt: OptaxOptimizer):
    """Check that the transform is component-wise; returns its flattened state's layout."""
    where = opt.where
    tx = opt._build(opt._theta0)
    scalar = jnp.zeros((), jnp.float32)
    try:
        s0 = tx.init(scalar)
    except Exception as exc:
        raise UserError(f"{where}: init on one parameter failed ({type(exc).__name__}: {_first_line(exc)})") from None
    paths, treedef = jax.tree_util.tree_flatten_with_path(s0)
    names = [_leaf_name(s0, p) for p, _ in paths]
    rng = np.random.default_rng(0)
    for shape in ((5,), (2, 3)):
        params = jnp.asarray(rng.normal(size=shape), jnp.float32)
        try:
            s = tx.init(params)
        except Exception as exc:
            raise UserError(f"{where}: init failed on parameters of shape {shape} "
                            f"({type(exc).__name__}: {_first_line(exc)})") from None
        leaves, td = jax.tree_util.tree_flatten_with_path(s)
        for path, leaf in leaves:
            name = _leaf_name(s, path)
            leaf = jnp.asarray(leaf)
            if not (jnp.issubdtype(leaf.dtype, jnp.floating) or jnp.issubdtype(leaf.dtype, jnp.integer)):
                raise UserError(f"{where} is not component-wise: state leaf {name} is a {leaf.dtype} "
                                "(e.g. a random key), not a number per parameter")
            if leaf.shape not in (params.shape, ()):
                raise UserError(f"{where} is not component-wise: state leaf {name} has shape "
                                f"{leaf.shape} for parameters of shape {params.shape}, neither the "
                                "parameters' shape nor a scalar (e.g. factored moments or a history)")
        if td != treedef:
            raise UserError(f"{where} is not component-wise: its state's structure depends on the "
                            f"parameters' shape ({shape} vs a scalar)")
        zero_init = jax.tree_util.tree_leaves(tx.init(jnp.zeros_like(params)))
        for name, a, b in zip(names, [x for _, x in leaves], zero_init):
            if not np.array_equal(np.asarray(a), np.asarray(b)):
                raise UserError(f"{where} is not component-wise: state leaf {name} starts from the "
                                "parameter values, which F(θ, h, g) does not see")
    is_int = [bool(jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer)) for _, x in paths]
    init_leaves = [float(np.asarray(x)) for _, x in paths]

    # random gradients spanning six orders of magnitude, on a vector of parameters
    n, steps = 6, 4
    grads = [jnp.asarray(rng.normal(size=n) * 10.0 ** rng.uniform(-3, 3, size=n), jnp.float32)
             for _ in range(steps)]
    x = jnp.asarray(rng.normal(size=n), jnp.float32)
    try:
        ups, states = _native(opt, jnp.zeros(n, jnp.float32), grads)
        ups_x, _ = _native(opt, jnp.zeros(n, jnp.float32), grads, param_values=x)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{where}: update failed on a probe ({type(exc).__name__}: {_first_line(exc)})") from None
    if not all(_close(a, b) for a, b in zip(ups, ups_x)):
        raise UserError(f"{where} is not component-wise: its update depends on the parameter values "
                        "(e.g. weight decay; pass weight_decay=0), which F(θ, h, g) does not see")

    layout = (treedef, names, is_int, init_leaves)
    moved = _traceable(opt, layout)
    failure = None
    # integer leaves (counts) go to optax as floats, so that ∂F/∂h sees the clock advance; if the
    # transform needs integers, they are rounded and cast instead
    for int_cast in ((False, True) if any(is_int) else (False,)):
        failure = _compare(opt, layout, moved, int_cast, grads, ups, states)
        if failure is None:
            return (*layout, moved, int_cast)
    raise UserError(failure)


def _close(a, b) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        a, b = np.broadcast_arrays(a, b)
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-30)
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-6 * scale, equal_nan=True))


def _with_layout(opt, layout, int_cast):
    opt._treedef, opt._leaf_names, opt._leaf_int, opt._init_leaves = layout
    opt._int_cast = int_cast
    opt.state_names = (*[f"s{i}" for i in range(len(layout[1]))], UPDATE)


def _traceable(opt, layout) -> list[str]:
    """θ entries the factory cannot take as traced arrays (they become fixed configuration)."""
    _with_layout(opt, layout, False)
    h = opt.init_state(opt.init_theta(), 1)
    g = jnp.ones((1,), jnp.float32)

    def attempt(names):
        fixed = {k: v for k, v in opt._theta0.items() if k not in names}
        saved = opt.static
        opt.static = {**saved, **fixed}
        try:
            jax.jit(lambda th: opt._F(th, h, g)).lower({k: opt.init_theta()[k] for k in names})
            return True
        except Exception:  # a Python branch on a hyperparameter, e.g. `if b1 == 0`
            return False
        finally:
            opt.static = saved

    names = list(opt._theta0)
    if attempt(names):
        return []
    return [k for k in names if not attempt([k])]


def _compare(opt, layout, moved, int_cast, grads, ups, states) -> str | None:
    """None when running each parameter alone (the wrapper) matches optax on the vector."""
    _with_layout(opt, layout, int_cast)
    saved_theta, saved_static = dict(opt._theta0), dict(opt.static)
    for k in moved:
        opt.static[k] = opt._theta0.pop(k)
    try:
        theta = opt.init_theta()
        step = opt.step  # eager: a few steps cost less than compiling
        h = opt.init_state(theta, len(grads[0]))
        names = layout[1]
        for k, g in enumerate(grads):
            try:
                h, dx = step(theta, h, g)
            except Exception as exc:
                return (f"{opt.where}: running it on one parameter failed "
                        f"({type(exc).__name__}: {_first_line(exc)})")
            hv = np.asarray(h, np.float64)
            bad = [j for j in range(len(names)) if not _close(hv[:, j], states[k][j])]
            shared = [j for j in bad if np.ndim(states[k][j]) == 0]
            if shared:  # a scalar per tensor that mixes its parameters: the likely cause
                return (f"{opt.where} is not component-wise: state leaf {names[shared[0]]} is one "
                        "number per tensor that depends on all its parameters (it couples them, "
                        "e.g. a norm over the tensor)")
            if bad:
                return (f"{opt.where} is not component-wise: state leaf {names[bad[0]]} differs "
                        "between a vector of parameters and each parameter alone (it couples "
                        "parameters, e.g. a norm over the tensor)")
            if not _close(np.asarray(dx), ups[k]):
                return (f"{opt.where} is not component-wise: its update of a vector of parameters "
                        "differs from the updates of each parameter alone (it couples parameters, "
                        "e.g. a global-norm clip)")
        return None
    finally:
        opt._theta0, opt.static = saved_theta, saved_static


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
    from lopt_trace.tune import LogUniform

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
