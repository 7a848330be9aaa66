"""The component-wise check of an optax transform, and the layout of its state (see
:mod:`lopt_trace.optimizers.optax_wrap`): run once per transform and cached."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from lopt_trace.errors import UserError

if TYPE_CHECKING:  # for annotations only: optax_wrap imports this module
    from lopt_trace.optimizers.optax_wrap import OptaxOptimizer

#: the name of the last state component, the update Δx
UPDATE = "update"


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
