"""``optax:NAME(key=value, ...)`` specs: parsing, formatting, labels and resolving NAME to a
factory (see :mod:`lopt_trace.optimizers.optax_wrap`)."""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Callable

import optax

from lopt_trace.errors import UserError

PREFIX = "optax:"

_LITERALS = (bool, int, float, str, type(None))


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
