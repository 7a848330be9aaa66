"""What meta-training writes besides θ: the history of a run (per-iteration metrics and θ at each
checkpoint) and the resumable checkpoint of an unfinished run, and the check, before any work,
that a run may write its output.

The checkpoint file's layout is :mod:`lopt_trace.store.optimizer_file`; here the training state
(a JAX pytree, :class:`lopt_trace.metatrain.TrainState`) goes in and out of it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.store.optimizer_file import (checkpoint_leaves, checkpoint_path, open_checkpoint_file,
                                             write_checkpoint_file)
from lopt_trace.store.zarr_io import check_replaceable, exists, probe_writable
from lopt_trace.theta import theta_from_dataset, theta_to_dataset

HISTORY_ATTRS = {
    "meta_loss": ("meta-objective: mean_k f_k / f_0 over the truncation, batch mean (+ L2)", "1"),
    "meta_grad_norm": ("global norm of the meta-gradient before clipping", "1"),
    "learning_rate": ("meta-optimizer learning rate", "1"),
    "skipped": ("step skipped because the meta-loss or meta-gradient was not finite", "1"),
}


def history_dataset(records: dict[str, list], theta_checkpoints: list[dict],
                    checkpoint_iterations: list[int], validation: list[float] | None = None,
                    selected: int | None = None) -> xr.Dataset:
    """The meta-training history: per-iteration metrics and θ along a ``checkpoint`` dim.

    With validation, ``validation (checkpoint)`` holds each checkpoint's score and
    ``selected_checkpoint`` the iteration of the θ that was kept.
    """
    n = len(records.get("meta_loss", []))
    ds = xr.Dataset(coords={"iteration": ("iteration", np.arange(n, dtype=np.int64),
                                          {"long_name": "meta-iteration", "units": "1"})})
    for name, (long_name, units) in HISTORY_ATTRS.items():
        dtype = bool if name == "skipped" else np.float32
        ds[name] = xr.Variable("iteration", np.asarray(records.get(name, []), dtype=dtype),
                               {"long_name": long_name, "units": units})
    if theta_checkpoints:
        stacked = {f"theta_{k}": np.stack([np.asarray(t[k]) for t in theta_checkpoints])
                   for k in theta_checkpoints[0]}
        ds = ds.merge(theta_to_dataset(stacked, leading=("checkpoint",)))
        ds = ds.assign_coords(checkpoint=("checkpoint", np.asarray(checkpoint_iterations, np.int64),
                                          {"long_name": "iteration of the θ checkpoint", "units": "1"}))
    if validation:
        ds["validation"] = xr.Variable("checkpoint", np.asarray(validation, np.float64), {
            "long_name": "meta-objective over the whole horizon on the validation problems",
            "units": "1"})
    if selected is not None:
        ds["selected_checkpoint"] = xr.Variable((), np.int64(selected), {
            "long_name": "iteration of the θ kept (lowest validation meta-objective)", "units": "1"})
    ds["skipped_total"] = xr.Variable((), np.int64(np.sum(ds["skipped"].values)),
                                      {"long_name": "number of skipped meta-iterations", "units": "1"})
    return ds


def thetas_from_history(history: xr.Dataset) -> list[dict]:
    """θ at each checkpoint of a history dataset."""
    if "checkpoint" not in history.dims:
        return []
    return [theta_from_dataset(history.isel(checkpoint=i), prefix="theta_")
            for i in range(history.sizes["checkpoint"])]


def write_checkpoint(path, state, iteration: int, history: xr.Dataset, settings: dict,
                     warm_start: xr.Dataset | None = None, wall_time_s: float | None = None) -> None:
    """The full training state (a ``TrainState``) at ``iteration``; ``wall_time_s`` is the run's
    wall time so far (summed over the commands that ran it), kept apart from ``settings``."""
    write_checkpoint_file(path, jax.tree.leaves(state), iteration, history, settings, warm_start, wall_time_s)


def read_checkpoint_warm_start(out: str | os.PathLike) -> tuple[dict, xr.Dataset] | None:
    """The optimizer configuration and warm-start search of an unfinished run writing ``out``.

    ``None`` when there is no checkpoint or the run did not start warm. Resuming a warm-started
    run uses these instead of searching again.
    """
    ckpt = checkpoint_path(out)
    if not exists(ckpt):
        return None
    tree = open_checkpoint_file(ckpt)
    if "warm_start" not in tree.children:
        return None
    return dict(tree.attrs["settings"]["optimizer"]), tree["warm_start"].to_dataset().load()


def read_checkpoint(path, template):
    """``(state, next_iteration, history, settings)`` of the checkpoint at ``path``; ``template``
    (a ``TrainState`` of the same configuration) gives the pytree's structure and dtypes."""
    tree = open_checkpoint_file(path)
    leaves = checkpoint_leaves(tree)
    treedef = jax.tree.structure(template)
    tmpl_leaves = jax.tree.leaves(template)
    if len(leaves) != len(tmpl_leaves):
        raise UserError(f"checkpoint {path} does not match this configuration; start again with --overwrite")
    leaves = [jnp.asarray(v, dtype=t.dtype) for v, t in zip(leaves, tmpl_leaves)]
    return (jax.tree.unflatten(treedef, leaves), int(tree.attrs["next_iteration"]),
            tree["history"].to_dataset().load(), dict(tree.attrs["settings"]))


def checkpoint_wall_time(path) -> float:
    """The wall time (s) of the commands that ran the checkpointed run so far (0 when not kept)."""
    return float(open_checkpoint_file(path).attrs.get("wall_time_s", 0.0))


def check_output(out: str | os.PathLike, resume: bool, overwrite: bool) -> None:
    """Raise :class:`UserError` unless a run may write ``out`` (checked before any work)."""
    ckpt = checkpoint_path(out)
    if exists(out) and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    if resume and not exists(ckpt):
        raise UserError(f"nothing to resume: no checkpoint at {ckpt}; run without --resume")
    if not resume and exists(ckpt) and not overwrite:
        raise UserError(f"an unfinished run left {ckpt}; pass --resume to continue it or --overwrite to start again")
    if overwrite:  # issue #14: --overwrite replaces only what lopt-trace made
        check_replaceable(out)
        check_replaceable(ckpt)
    probe_writable(out)  # issue #14: a folder we cannot write fails now, not after training


__all__ = ["HISTORY_ATTRS", "check_output", "checkpoint_path", "checkpoint_wall_time", "history_dataset",
           "read_checkpoint", "read_checkpoint_warm_start", "thetas_from_history", "write_checkpoint"]
