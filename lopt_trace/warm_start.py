"""Warm starts for meta-training: the GRU begins as tuned soft-sign momentum.

Meta-training a GRU from random weights needs far more compute than a 2-core CPU has before it
passes tuned Adam on two_moons or MNIST (docs/results.md). A GRU can, however, be *set* to a
good hand-designed optimizer and meta-trained from there. :func:`sign_momentum_gru` sets unit 0
to soft-sign momentum, v' = β v + tanh(s·g), Δx = −α v' (momentum on a clipped gradient, two
mechanisms the paper's optimizers learn), with the other units silent. :func:`search` tunes
(β, α, s) by the same vmapped random search, on the same training-range problems, as
:func:`lopt_trace.tune.tune` uses for the baselines; :func:`warm_start` returns the optimizer and
θ that meta-training starts from.

The search is run on a one-unit GRU with its scales folded into θ (:func:`fold_scales`), so that
every candidate is the same function of θ and a batch of candidates is one ``vmap``. Units 1…
have zero readout, so the one-unit result is the full GRU's starting behaviour exactly.
"""

from __future__ import annotations

import jax
import numpy as np
import xarray as xr

from lopt_trace.optimizers.learned import LearnedGRU, fold_scales, sign_momentum_gru
from lopt_trace.tasks.base import Task
from lopt_trace.tune import TUNE_SEED_BASE, LogUniform, best_config, random_search

#: the only warm start there is (the CLI's ``--warm-start`` choices)
KINDS = ("sign-momentum",)

#: search space of the warm start: β (1 − β log-uniform), α and the sharpness s of tanh(s·g)
SPACE = {
    "beta": LogUniform(1e-3, 0.5, complement=True),
    "learning_rate": LogUniform(1e-5, 1.0),
    "sharpness": LogUniform(1.0, 1e5),
}

#: the same with a normalised input (``input_norm``): |g / gmax| ≤ 1, so s is O(1) and the
#: step size α is in parameter units
SPACE_NORMALIZED = {
    "beta": LogUniform(1e-2, 0.9, complement=True),
    "learning_rate": LogUniform(1e-4, 1e-1),
    "sharpness": LogUniform(0.1, 10.0),
}


def candidate_thetas(candidates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch of one-unit, scale-folded GRU θ, one per candidate (leading axis)."""
    thetas = []
    for beta, lr, sharp in zip(candidates["beta"], candidates["learning_rate"], candidates["sharpness"]):
        opt, theta = sign_momentum_gru(float(beta), float(lr), float(sharp), units=1)
        thetas.append(fold_scales(opt, theta)[1])
    return {k: np.stack([np.asarray(t[k], np.float32) for t in thetas]) for k in thetas[0]}


def search(task: Task, samples: int = 64, problems: int = 4, steps: int | None = None,
           batch: int | None = None, seed: int = 0, seed_base: int = TUNE_SEED_BASE,
           lr_range: tuple[float, float] | None = None, input_norm: float | None = None,
           progress: bool = True) -> xr.Dataset:
    """Random search for (β, α, s); the dataset has dims ``sample`` and ``problem`` as in tuning.

    ``lr_range`` narrows α's log-uniform range (for small searches on expensive tasks);
    ``input_norm`` searches the GRU with a normalised input (:class:`LearnedGRU`), over
    :data:`SPACE_NORMALIZED`.
    """
    space = dict(SPACE if input_norm is None else SPACE_NORMALIZED)
    if lr_range is not None:
        space["learning_rate"] = LogUniform(*map(float, lr_range))
    opt = LearnedGRU(units=1, input_scale=1.0, output_scale=1.0, input_norm=input_norm)
    ds = random_search(task, opt, space, candidate_thetas, samples, problems, steps, batch, seed,
                       seed_base, "meta", progress, label="warm start (sign-momentum)")
    ds.attrs["warm_start"] = "sign-momentum"
    if input_norm is not None:
        ds.attrs["input_norm"] = float(input_norm)
    return ds


def warm_start(task: Task, units: int, key: jax.Array | None = None, **search_kwargs
               ) -> tuple[LearnedGRU, dict, xr.Dataset]:
    """Search, then build the ``units``-unit GRU (and θ) that starts from the best candidate."""
    ds = search(task, **search_kwargs)
    p = best_config(ds)["theta"]
    opt, theta = sign_momentum_gru(p["beta"], p["learning_rate"], p["sharpness"], units=units,
                                   key=key, input_norm=search_kwargs.get("input_norm"))
    return opt, theta, ds
