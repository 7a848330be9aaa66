"""Rebuild an optimizer's F and readout from a store, and pick groups out of it.

A store holds, for each optimizer group ``/runs/<name>``, the optimizer's configuration in the
group's ``optimizer`` attribute and θ in the child group ``theta``; that is all an analysis needs
to evaluate F(θ, h, g) and readout(θ, h) at any state and gradient.
"""

from __future__ import annotations

import os

import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.optimizers import ComponentwiseOptimizer, make_optimizer
from lopt_trace.optimizers.sources import tuned_entry
from lopt_trace.store import open_store
from lopt_trace.theta import theta_from_dataset


def open_for_analysis(store) -> xr.DataTree:
    """A store as a lazily loaded (Dask-backed) tree. ``store`` may already be a tree.

    Uses :func:`lopt_trace.store.open_store`, which validates the schema and the manifest.
    """
    if isinstance(store, xr.DataTree):
        return store
    return open_store(store)


def optimizer_names(tree: xr.DataTree) -> list[str]:
    """Names of the optimizer groups under ``/runs``, in the order the store lists them."""
    if "runs" not in tree.children:
        raise UserError("the store has no /runs group; is it a lopt-trace store?")
    present = list(tree["runs"].children)
    listed = [str(n) for n in tree.attrs.get("optimizers", []) if str(n) in present]
    return listed + [n for n in present if n not in listed]


def select_optimizer(tree: xr.DataTree, name: str | None = None) -> str:
    """The group to analyse: ``name`` if given, else ``learned`` if recorded, else the first."""
    names = optimizer_names(tree)
    if not names:
        raise UserError("the store has no optimizer groups under /runs")
    if name is None:
        return "learned" if "learned" in names else names[0]
    if name not in names:
        raise UserError(f"no optimizer {name!r} in the store; it has: {', '.join(names)}")
    return name


def run_group(tree: xr.DataTree, name: str, complete_only: bool = True) -> xr.Dataset:
    """The lazily loaded Dataset of ``/runs/<name>`` (without θ).

    With ``complete_only`` (the default) runs whose ``run_complete`` flag is false (an
    interrupted recording) are left out; a clear error is raised if no run is complete.
    """
    ds = tree[f"runs/{name}"].to_dataset(inherit=False)
    if complete_only and "run_complete" in ds:
        done = ds["run_complete"].values.astype(bool)
        if not done.any():
            raise UserError(f"/runs/{name} has no complete run; finish the recording with "
                            "`lopt-trace record ... --resume`")
        if not done.all():
            ds = ds.isel(run=done.nonzero()[0])
    return ds


def rebuild(tree: xr.DataTree, name: str | None = None) -> tuple[ComponentwiseOptimizer, dict]:
    """``(optimizer, θ)`` of the group ``/runs/<name>`` (see :func:`select_optimizer`)."""
    name = select_optimizer(tree, name)
    node = tree[f"runs/{name}"]
    if "optimizer" not in node.attrs:
        raise UserError(f"/runs/{name} has no 'optimizer' attribute; the store cannot rebuild it")
    if "theta" not in node.children:
        raise UserError(f"/runs/{name} has no theta group; the store cannot rebuild the optimizer")
    opt = make_optimizer(dict(node.attrs["optimizer"]))
    theta = theta_from_dataset(node["theta"].to_dataset(inherit=False))
    return opt, theta


def store_path(store) -> str | None:
    """The path or URL of a store, if ``store`` is one (not an in-memory tree)."""
    return None if isinstance(store, xr.DataTree) else os.fspath(store)


def baseline_hyperparameters(tree: xr.DataTree, name: str) -> dict | None:
    """The hyperparameters of a baseline (``momentum``, ...) as used for this store's task:
    θ of the store's ``/runs/<name>`` group when it was recorded, else the bundled tuned values
    for the task, else None."""
    if "runs" in tree.children and name in tree["runs"].children:
        node = tree[f"runs/{name}"]
        if "theta" in node.children:
            return {k: float(v) for k, v in
                    theta_from_dataset(node["theta"].to_dataset(inherit=False)).items() if v.size == 1}
    task = tree.attrs.get("task")
    if not task:
        return None
    try:
        entry = tuned_entry(str(task), name)
    except (OSError, ValueError, UserError):  # an unreadable bundled file: no hyperparameters
        return None
    return None if entry is None else {k: float(v) for k, v in entry["theta"].items()}
    return None
