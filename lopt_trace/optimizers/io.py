"""Saving and loading a trained optimizer: its configuration and θ, rebuilt into an optimizer.

The file's layout, and writing, opening and checking it, are
:mod:`lopt_trace.store.optimizer_file` (see docs/optimizers.md); ``FORMAT`` and
``FORMAT_VERSION`` are re-exported here for old imports.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import xarray as xr

from lopt_trace.optimizers import ComponentwiseOptimizer, make_optimizer
from lopt_trace.store.optimizer_file import (FORMAT, FORMAT_VERSION, open_optimizer_file,  # noqa: F401
                                             write_optimizer_file)
from lopt_trace.theta import theta_from_dataset, theta_to_dataset


@dataclasses.dataclass
class TrainedOptimizer:
    """A loaded optimizer file."""

    optimizer: ComponentwiseOptimizer
    theta: dict
    attrs: dict
    meta_train: xr.Dataset | None

    @property
    def task(self) -> dict | None:
        return self.attrs.get("task")


def save_optimizer(path: str | os.PathLike, optimizer: ComponentwiseOptimizer, theta: dict, *,
                   task: dict | None = None, metatrain: dict | None = None,
                   meta_train: xr.Dataset | None = None, warm_start: xr.Dataset | None = None,
                   overwrite: bool = False) -> None:
    """Write ``theta`` and the optimizer's whole configuration to ``path`` (a Zarr folder).

    Groups: ``/theta``; ``/meta_train`` (the history) and ``/warm_start`` (the search a
    warm-started run began from) when given.
    """
    write_optimizer_file(path, optimizer.config(), theta_to_dataset({k: np.asarray(v) for k, v in theta.items()}),
                         task=task, metatrain=metatrain, meta_train=meta_train, warm_start=warm_start,
                         overwrite=overwrite)


def load_optimizer(path: str | os.PathLike) -> TrainedOptimizer:
    """Load an optimizer file written by :func:`save_optimizer`; θ comes back bit for bit."""
    tree = open_optimizer_file(path)
    attrs = dict(tree.attrs)
    theta = theta_from_dataset(tree["theta"].to_dataset())
    meta = tree["meta_train"].to_dataset().load() if "meta_train" in tree.children else None
    return TrainedOptimizer(make_optimizer(attrs["optimizer"]), theta, attrs, meta)
