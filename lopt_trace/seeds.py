"""Seed ranges. Meta-training and tuning draw problems from one range, tests from another.

Every problem is sampled from ``jax.random.PRNGKey(seed)`` with an integer seed, so a stored run
is reproduced from the seed alone, and the ranges make it impossible for a test problem to have
been seen during meta-training.
"""

from __future__ import annotations

import jax
import numpy as np

#: Seeds used by meta-training and tuning: [0, TEST_SEED_START).
TRAIN_SEED_END = 1_000_000_000
#: Seeds used by held-out test runs (record, compare): [TEST_SEED_START, 2**31).
TEST_SEED_START = 1_000_000_000


def train_seeds(base: int, iteration: int, count: int) -> np.ndarray:
    """``count`` seeds for meta-training iteration ``iteration``, all below TRAIN_SEED_END."""
    start = (int(base) * 7_919_993 + int(iteration) * int(count)) % (TRAIN_SEED_END - count)
    return np.arange(start, start + count, dtype=np.int64)


def test_seeds(base: int, count: int) -> np.ndarray:
    """``count`` held-out seeds starting at ``TEST_SEED_START + base``."""
    start = TEST_SEED_START + int(base)
    if start + count >= 2**31:
        raise ValueError(f"test seed base {base} is too large")
    return np.arange(start, start + count, dtype=np.int64)


def problem_keys(seeds) -> jax.Array:
    """PRNG keys for an array of seeds, shape (len(seeds), 2)."""
    return jax.vmap(jax.random.PRNGKey)(np.asarray(seeds, dtype=np.uint32))
