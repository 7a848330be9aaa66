"""The trained-optimizer file: a small Zarr tree holding θ and everything needed to rebuild it.

Layout (see docs/optimizers.md)::

    /             attrs: format, format_version, optimizer (config), task (config),
                         metatrain (settings), versions, created
    /theta        one variable per θ entry
    /meta_train   optional meta-training history (same schema as a store's /meta_train)
    /warm_start   optional: the warm-start search meta-training began from
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.optimizers import ComponentwiseOptimizer, make_optimizer
from lopt_trace.provenance import utc_now, versions
from lopt_trace.theta import theta_from_dataset, theta_to_dataset
from lopt_trace.zarr_io import exists, open_tree, write_tree

FORMAT = "lopt-trace-optimizer"
FORMAT_VERSION = 1


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
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": optimizer.config(),
        "task": task,
        "metatrain": metatrain or {},
        "versions": versions(),
        "created": utc_now(),
    }
    nodes = {"/": xr.Dataset(attrs=attrs),
             "/theta": theta_to_dataset({k: np.asarray(v) for k, v in theta.items()})}
    if meta_train is not None:
        nodes["/meta_train"] = meta_train
    if warm_start is not None:
        nodes["/warm_start"] = warm_start
    write_tree(xr.DataTree.from_dict(nodes), path, overwrite=overwrite)


def load_optimizer(path: str | os.PathLike) -> TrainedOptimizer:
    """Load an optimizer file written by :func:`save_optimizer`; θ comes back bit for bit."""
    if not exists(path):
        raise UserError(f"no optimizer file at {path}; train one with `lopt-trace train --task TASK --out {path}`")
    try:
        tree = open_tree(path)
    except Exception as exc:
        raise UserError(f"{path} is not a readable optimizer file ({type(exc).__name__}: {exc})") from None
    attrs = dict(tree.attrs)
    if attrs.get("format") != FORMAT or "theta" not in tree.children:
        raise UserError(f"{path} is not a lopt-trace optimizer file (no '{FORMAT}' format attribute or /theta group)")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has optimizer-file version {attrs.get('format_version')}; "
                        f"this lopt-trace reads version {FORMAT_VERSION}")
    theta = theta_from_dataset(tree["theta"].to_dataset())
    meta = tree["meta_train"].to_dataset().load() if "meta_train" in tree.children else None
    return TrainedOptimizer(make_optimizer(attrs["optimizer"]), theta, attrs, meta)
