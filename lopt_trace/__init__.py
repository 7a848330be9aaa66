"""lopt-trace: meta-train learned optimizers, record their dynamics, and take them apart.

The root is lazy: ``lopt_trace.tasks`` and ``lopt_trace.optimizers`` (which load JAX) are imported
on first use, so ``lopt-trace --help`` and argument errors answer without loading JAX.
"""

from __future__ import annotations

import importlib

from lopt_trace._version import __version__

_LAZY = ("tasks", "optimizers")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"lopt_trace.{name}")
    raise AttributeError(f"module 'lopt_trace' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


def open_store(path, **kwargs):
    """Open a recorded store as a validated, Dask-backed ``xarray.DataTree`` (see docs/store.md)."""
    from lopt_trace.store import open_store as _open  # on call: the root stays light (see above)

    return _open(path, **kwargs)


__all__ = ["__version__", "open_store", "optimizers", "tasks"]
