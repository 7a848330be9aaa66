"""JAX's persistent compilation cache for the ``lopt-trace`` command.

A second ``lopt-trace record --task mnist`` in a new process loads its compiled steps from disk
instead of compiling them again (docs/performance.md measures both). The cache lives in

- ``$LOPT_TRACE_COMPILE_CACHE`` if it is set to a folder;
- else ``$XDG_CACHE_HOME/lopt-trace/jax``, or ``~/.cache/lopt-trace/jax``.

``LOPT_TRACE_COMPILE_CACHE=off`` (or ``0``, ``false``, ``no``, empty) turns it off. Entries are
keyed by JAX on the computation, the JAX and XLA versions and the device, so a stale entry is
never used; deleting the folder is always safe. Only computations that took at least
:data:`MIN_COMPILE_SECONDS` to compile are stored.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: environment variable: a folder for the cache, or ``off``
ENV = "LOPT_TRACE_COMPILE_CACHE"
#: compilations faster than this are not worth a file
MIN_COMPILE_SECONDS = 0.3
_OFF = {"", "0", "off", "false", "no", "none"}


def cache_dir(environ: dict | None = None) -> Path | None:
    """The cache folder the environment asks for, or None when it is turned off."""
    env = os.environ if environ is None else environ
    value = env.get(ENV)
    if value is not None:
        if value.strip().lower() in _OFF:
            return None
        return Path(value).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lopt-trace" / "jax"


def enable(path: str | os.PathLike | None = None) -> Path | None:
    """Turn JAX's persistent compilation cache on at ``path`` (default :func:`cache_dir`).

    Returns the folder in use, or None when the cache is off or its folder cannot be created (a
    read-only home, say: then a one-line note goes to stderr and everything still works, only
    without the cache).
    """
    folder = cache_dir() if path is None else Path(path)
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        sys.stderr.write(f"lopt-trace: note: compilation cache off ({folder}: {exc.strerror or exc}); "
                         f"set {ENV} to a writable folder, or to off\n")
        return None
    import jax  # here: every CLI command enables the cache; those that need no JAX load none when it is off

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


__all__ = ["ENV", "MIN_COMPILE_SECONDS", "cache_dir", "enable"]
