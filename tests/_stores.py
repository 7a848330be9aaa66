"""Tiny stores for the analysis tests, recorded with the real recorder (:mod:`lopt_trace.recorder`).

The ground-truth optimizers (momentum, SGD, clipped SGD, RMSProp, a GRU built by hand to implement
momentum) go through exactly the path a user's store takes: ``record`` writes schema v1 and
``lopt_trace.open_store`` opens and validates it. The shared stores are built once per session by
the fixtures ``ground_truth_store`` and ``two_moons_store`` of ``conftest.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.recorder import OptimizerEntry, RecordConfig, record
from lopt_trace.store import open_store as _open_store


def make_store(path, task, optimizers: dict, runs: int = 3, steps: int | None = None,
               every: int = 1, params_per_tensor: int | None = None, seed_base: int = 0) -> str:
    """Record ``optimizers`` (group name -> (optimizer, θ)) on ``task`` into ``path``."""
    entries = [OptimizerEntry(name, opt, {k: np.asarray(v) for k, v in theta.items()}, "test", name)
               for name, (opt, theta) in optimizers.items()]
    cfg = RecordConfig(runs=runs, steps=steps, params=params_per_tensor, every=every, seed=seed_base)
    record(task, entries, cfg, str(path), overwrite=True, progress=False)
    return str(path)


def open_store(path) -> xr.DataTree:
    """Open a store Dask-backed and validated (``lopt_trace.open_store``)."""
    return _open_store(path)


# -- shared stores for the analysis tests (built once per session: conftest.py) -------------------
#: hyperparameters of the ground-truth optimizers
GT = {"momentum": {"learning_rate": 0.05, "beta": 0.8},
      "sgd": {"learning_rate": 0.1},
      "clip": 0.3,
      "rmsprop": {"learning_rate": 0.01, "decay": 0.9, "eps": 1e-8},
      "gru": {"beta": 0.7, "learning_rate": 0.04}}


def _f32(d):
    return {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}


def ground_truth_optimizers() -> dict:
    """Group name -> (optimizer, θ) with known answers."""
    from lopt_trace.optimizers import make_optimizer, momentum_gru

    gru, gru_theta = momentum_gru(GT["gru"]["beta"], GT["gru"]["learning_rate"], units=2)
    return {
        "momentum": (make_optimizer("momentum"), _f32(GT["momentum"])),
        "sgd": (make_optimizer("sgd"), _f32(GT["sgd"])),
        "sgd_clip": (make_optimizer("sgd", clip=GT["clip"]), _f32(GT["sgd"])),
        "rmsprop": (make_optimizer("rmsprop"), _f32(GT["rmsprop"])),
        "learned": (gru, gru_theta),
    }


def build_ground_truth_store(path) -> str:
    """A linear-regression store with momentum, SGD, clipped SGD, RMSProp and the hand-built
    momentum GRU (as ``learned``): 3 runs of 40 steps."""
    from lopt_trace.tasks import get_task

    return make_store(path, get_task("linear_regression", steps=40), ground_truth_optimizers(), runs=3)


def build_two_moons_store(path) -> str:
    """A small two-moons store (4 parameters kept per tensor, every 2nd step) with a random GRU
    as ``learned``."""
    from lopt_trace.optimizers import LearnedGRU
    from lopt_trace.tasks import get_task

    gru = LearnedGRU(units=4, output_scale=0.01)
    theta = gru.init_theta(jax.random.PRNGKey(3))
    theta = {**theta, "readout": jax.random.normal(jax.random.PRNGKey(4), (4,)),
             "b_h": 0.3 * jax.random.normal(jax.random.PRNGKey(5), (4,))}
    return make_store(path, get_task("two_moons", steps=12, n_samples=128),
                      {"learned": (gru, theta)},
                      runs=2, every=2, params_per_tensor=4)
