"""Provenance recorded with every file lopt-trace writes."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import sys

from lopt_trace._version import __version__


def versions() -> dict[str, str]:
    """Versions of lopt-trace and the libraries whose behaviour shapes the results."""
    out = {"python": sys.version.split()[0], "lopt_trace": __version__}
    for dist in ("jax", "jaxlib", "optax", "numpy", "xarray", "zarr", "dask"):
        try:
            out[dist.replace("-", "_")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist.replace("-", "_")] = "not installed"
    return out


def machine() -> dict:
    """What a run was computed on (recorded with finished and exported optimizer files alike)."""
    return {"platform": platform.platform(), "processor": platform.machine(),
            "cpu_count": os.cpu_count() or 0}


def utc_now() -> str:
    """The current UTC time, ISO 8601 with a ``Z``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def command_line() -> str:
    """The command that is running, as typed."""
    return " ".join(shlex.quote(a) for a in ["lopt-trace", *sys.argv[1:]]) if sys.argv else ""
