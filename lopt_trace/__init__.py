"""lopt-trace: meta-train learned optimizers, record their dynamics, and take them apart."""

__version__ = "0.1.0"

from lopt_trace import tasks, optimizers  # noqa: E402,F401


def open_store(path, **kwargs):
    """Open a recorded store as a validated, Dask-backed ``xarray.DataTree`` (see docs/store.md)."""
    from lopt_trace.store import open_store as _open

    return _open(path, **kwargs)
