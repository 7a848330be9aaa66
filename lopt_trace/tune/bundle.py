"""The ``/tune`` tree and ``data/tuned/<task>.json``: bundling selected configurations (read back by
:mod:`lopt_trace.optimizers.sources`, whose ``read_tuned`` and ``tuned_theta`` are re-exported here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.optimizers import BASELINES
from lopt_trace.optimizers.optax_wrap import optax_label
from lopt_trace.optimizers.sources import read_tuned as load_tuned
from lopt_trace.optimizers.sources import tuned_theta  # noqa: F401 - re-exported by lopt_trace.tune
from lopt_trace.provenance import command_line, utc_now, versions
from lopt_trace.tasks.base import Task
from lopt_trace.tune.curves import tuning_curve
from lopt_trace.tune.selection import SELECTION_RULE, selected_config


def tune_tree(results: dict[str, xr.Dataset], task: Task) -> xr.DataTree:
    """One tree with each optimizer's dataset at ``/tune/<optimizer>``."""
    root = xr.Dataset(attrs={"task": task.name, "task_config": task.config(), "created": utc_now(),
                             "command": command_line(), "versions": versions(),
                             "optimizers": list(results)})
    nodes = {"/": root}
    nodes.update({f"/tune/{_group(name)}": ds for name, ds in results.items()})
    return xr.DataTree.from_dict(nodes)


def _group(name: str) -> str:
    """The group of an optimizer under /tune: its name; ``optax_lion`` for an ``optax:`` spec (the
    spec itself is in the group's ``optimizer`` attribute)."""
    if name.startswith("optax:"):
        return optax_label(name)
    return name


def bundle_best(results: dict[str, xr.Dataset], path: str | os.PathLike,
                store: str | os.PathLike | None = None) -> dict:
    """Merge the selected configuration (:func:`selected_config`) of each optimizer in ``results``
    into the JSON at ``path``, with its selection, validation score and tuning-curve verdict
    (:func:`tuning_curve`); ``store``, the tune store the results came from, is recorded too.

    Entries of other optimizers already in the file are kept. Returns the whole file's content.
    """
    path = Path(path)
    data = load_tuned(path)
    for name, ds in results.items():
        task = ds.attrs["task"]
        if data.get("task") not in (None, task):
            raise UserError(f"{path} holds hyperparameters for task {data['task']!r}, not {task!r}")
        data["task"] = task
        best = selected_config(ds)
        curve = tuning_curve(ds)
        entry = {
            "theta": best["theta"],
            "objective": best["objective"],
            "objective_sem": best["sem"],
            "samples": int(ds.attrs["samples"]),
            "problems": int(ds.attrs["problems"]),
            "steps": int(ds.attrs["steps"]),
            "seed_base": int(ds.attrs["seed_base"]),
            "failed": int(ds.attrs["failed_total"]),
            "search_space": ds.attrs["search_space"],
            "task_config": ds.attrs["task_config"],
            "candidates_per_second": round(float(ds.attrs["candidates_per_second"]), 3),
            "created": ds.attrs["created"],
            "selection": {"sample": best["sample"], "selected_by": best["selected_by"],
                          "tied_count": best["tied_count"],
                          "lowest_mean_sample": best["lowest_mean_sample"],
                          "lowest_mean_objective": float(ds["mean_objective"].values[best["lowest_mean_sample"]]),
                          "rule": SELECTION_RULE},
            "tuning_curve": {"plateaued": bool(curve.attrs["plateaued"]),
                             "improvement_last_half": float(curve.attrs["improvement_last_half"]),
                             "permutations": int(curve.attrs["permutations"]),
                             "rule": curve.attrs["plateau_rule"]},
        }
        if "validation" in best:
            entry["validation"] = best["validation"]
        if store is not None:
            entry["store"] = str(store)
        data["optimizers"][name] = entry
    data["optimizers"] = {k: data["optimizers"][k] for k in sorted(data["optimizers"], key=_order)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return data


def _order(name: str) -> tuple[int, str]:
    order = list(BASELINES)
    return (order.index(name) if name in order else len(order), name)
