"""Timing a jitted call the way every JAX benchmark here does: one call that compiles, then the
minimum wall time of ``repeat`` calls (absolute times on a shared machine are noise; the minimum
is the least disturbed)."""

from __future__ import annotations

import time

import jax
import numpy as np


def best_time_and_output(fn, args, repeat: int):
    """``(seconds, output)``: the minimum wall seconds of ``repeat`` calls of ``fn(*args)`` after
    one call that compiles, and that first call's output."""
    out = jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best, out


def best_time(fn, args, repeat: int) -> float:
    """Minimum wall seconds of ``repeat`` calls (after one call that compiles)."""
    return best_time_and_output(fn, args, repeat)[0]
