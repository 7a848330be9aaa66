"""The trained-optimizer file and the checkpoint of an unfinished meta-training run: their layout,
and the one way to write, open and check each.

Optimizer file (``data/optimizers/*.zarr``, ``lopt-trace train --out``; see docs/optimizers.md)::

    /             attrs: format, format_version, optimizer (config), task (config),
                         metatrain (settings), versions, created
    /theta        one variable per θ entry
    /meta_train   optional meta-training history (same schema as a store's /meta_train)
    /warm_start   optional: the warm-start search meta-training began from

Training checkpoint (``OUT.checkpoint`` next to the optimizer file a run will write)::

    /             attrs: next_iteration, settings, wall_time_s (optional)
    /state        the training state's leaves, ``leaf0000``, ``leaf0001``, ... in pytree order
    /history      the meta-training history so far
    /warm_start   optional, as in the optimizer file

This module knows the layout only; building optimizers and θ dicts from it is
:mod:`lopt_trace.optimizers.io`, the training state :mod:`lopt_trace.metatrain_history`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.provenance import utc_now, versions
from lopt_trace.store.zarr_io import exists, open_tree, write_tree

FORMAT = "lopt-trace-optimizer"
FORMAT_VERSION = 1


# -- optimizer file ------------------------------------------------------------------------------
def write_optimizer_file(path: str | os.PathLike, optimizer: dict, theta: xr.Dataset, *,
                         task: dict | None = None, metatrain: dict | None = None,
                         meta_train: xr.Dataset | None = None, warm_start: xr.Dataset | None = None,
                         overwrite: bool = False) -> None:
    """Write an optimizer file: ``optimizer`` is the optimizer's configuration, ``theta`` θ as a
    Dataset (:func:`lopt_trace.theta.theta_to_dataset`); ``meta_train`` and ``warm_start`` become
    the optional groups."""
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": optimizer,
        "task": task,
        "metatrain": metatrain or {},
        "versions": versions(),
        "created": utc_now(),
    }
    nodes = {"/": xr.Dataset(attrs=attrs), "/theta": theta}
    if meta_train is not None:
        nodes["/meta_train"] = meta_train
    if warm_start is not None:
        nodes["/warm_start"] = warm_start
    write_tree(xr.DataTree.from_dict(nodes), path, overwrite=overwrite)


def open_optimizer_file(path: str | os.PathLike) -> xr.DataTree:
    """An optimizer file, opened and checked: a :class:`UserError` when there is none at ``path``,
    it cannot be read, is something else, or has another format version."""
    if not exists(path):
        raise UserError(f"no optimizer file at {path}; train one with `lopt-trace train --task TASK --out {path}`")
    try:
        tree = open_tree(path)
    except Exception as exc:
        raise UserError(f"{path} is not a readable optimizer file ({type(exc).__name__}: {exc})") from None
    attrs = tree.attrs
    if attrs.get("format") != FORMAT or "theta" not in tree.children:
        raise UserError(f"{path} is not a lopt-trace optimizer file (no '{FORMAT}' format attribute or /theta group)")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has optimizer-file version {attrs.get('format_version')}; "
                        f"this lopt-trace reads version {FORMAT_VERSION}")
    return tree


# -- training checkpoint -------------------------------------------------------------------------
def checkpoint_path(out: str | os.PathLike) -> Path:
    """Where a run writing ``out`` keeps its resumable checkpoint."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoint")


def leaf_name(i: int) -> str:
    return f"leaf{i:04d}"


def write_checkpoint_file(path, leaves: list, next_iteration: int, history: xr.Dataset, settings: dict,
                          warm_start: xr.Dataset | None = None, wall_time_s: float | None = None) -> None:
    """Write a checkpoint (replacing the previous one): the training state's ``leaves`` (arrays, in
    pytree order), the iteration to continue from, the history, the run's settings and, apart from
    them, its wall time so far."""
    attrs = {"next_iteration": int(next_iteration), "settings": settings}
    if wall_time_s is not None:
        attrs["wall_time_s"] = round(float(wall_time_s), 1)
    state = xr.Dataset({leaf_name(i): xr.Variable(tuple(f"{leaf_name(i)}_{j}" for j in range(np.ndim(v))),
                                                   np.asarray(v)) for i, v in enumerate(leaves)})
    nodes = {"/": xr.Dataset(attrs=attrs), "/state": state, "/history": history}
    if warm_start is not None:
        nodes["/warm_start"] = warm_start
    write_tree(xr.DataTree.from_dict(nodes), path, overwrite=True)


def open_checkpoint_file(path) -> xr.DataTree:
    """A training checkpoint, opened and checked (a :class:`UserError` when there is none at
    ``path`` or it is something else)."""
    if not exists(path):
        raise UserError(f"no meta-training checkpoint at {path}")
    tree = open_tree(path)
    if "history" not in tree.children or "settings" not in tree.attrs:
        raise UserError(f"{path} is not a lopt-trace meta-training checkpoint")
    return tree


def checkpoint_leaves(tree: xr.DataTree) -> list[np.ndarray]:
    """The training state's leaves of an opened checkpoint, in pytree order."""
    ds = tree["state"].to_dataset().load()
    return [ds[leaf_name(i)].values for i in range(len(ds.data_vars))]


__all__ = ["FORMAT", "FORMAT_VERSION", "checkpoint_leaves", "checkpoint_path", "open_checkpoint_file",
           "open_optimizer_file", "write_checkpoint_file", "write_optimizer_file"]
