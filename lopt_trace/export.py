"""An unfinished meta-training run, written as an optimizer file: the best validated θ so far.

Long meta-training runs stop on a time budget and continue later with ``--resume``. Between
sessions the checkpoint (``OUT.checkpoint``) is all there is; :func:`export_checkpoint` turns it
into an ordinary optimizer file that ``record``, ``compare`` and the analyses can use, without
ending the run (the checkpoint is left as it is, so ``--resume`` still continues it).

The θ exported is the checkpoint θ with the best validation score (the start included), or the
latest θ when the run has no validation. The file's ``metatrain`` attribute says that the run is
unfinished: ``finished`` false, ``iterations_done`` and ``selected_checkpoint``, next to the
settings the run was started with; ``/meta_train`` holds the history so far.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.optimizers import make_optimizer
from lopt_trace.optimizers.io import save_optimizer
from lopt_trace.provenance import machine
from lopt_trace.store.optimizer_file import open_checkpoint_file
from lopt_trace.theta import theta_from_dataset


def best_checkpoint(history: xr.Dataset) -> int:
    """Index along ``checkpoint`` of the θ to export: lowest finite validation, else the last."""
    if "checkpoint" not in history.dims or history.sizes["checkpoint"] == 0:
        raise UserError("the run has not reached its first checkpoint yet; nothing to export")
    if "validation" in history:
        scores = np.asarray(history["validation"].values, np.float64)
        if np.isfinite(scores).any():
            return int(np.nanargmin(np.where(np.isfinite(scores), scores, np.nan)))
    return int(history.sizes["checkpoint"]) - 1


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                      overwrite: bool = False, wall_time_s: float | None = None) -> dict:
    """Write the best θ of the unfinished run at ``checkpoint`` to the optimizer file ``out``.

    ``wall_time_s`` records the run's wall time when the checkpoint does not hold it (runs
    started before checkpoints kept their time). Returns the ``metatrain`` attribute written
    (settings plus what was exported).
    """
    tree = open_checkpoint_file(checkpoint)
    settings = dict(tree.attrs["settings"])
    history = tree["history"].to_dataset().load()
    i = best_checkpoint(history)
    theta = theta_from_dataset(history.isel(checkpoint=i), prefix="theta_")
    selected = int(history["checkpoint"].values[i])
    history["selected_checkpoint"] = xr.Variable((), np.int64(selected), {
        "long_name": "iteration of the θ exported (lowest validation meta-objective so far)",
        "units": "1"})
    done = int(tree.attrs["next_iteration"])
    info = {**settings, "finished": False, "iterations_done": done, "selected_checkpoint": selected,
            "machine": machine()}
    for key in ("wall_time_s", "process_time_s"):
        if key in tree.attrs:
            info[key] = float(tree.attrs[key])
    if wall_time_s is not None:
        info["wall_time_s"] = float(wall_time_s)
    if "validation" in history:
        info["selected_validation"] = float(history["validation"].values[i])
    warm = tree["warm_start"].to_dataset().load() if "warm_start" in tree.children else None
    optimizer = make_optimizer(settings["optimizer"])
    save_optimizer(out, optimizer, theta, task=settings.get("task"), metatrain=info,
                   meta_train=history, warm_start=warm, overwrite=overwrite)
    return info


def main(argv=None) -> int:
    """``python -m lopt_trace.export CHECKPOINT OUT [--overwrite]``: one line on error, exit 2."""
    p = argparse.ArgumentParser(prog="python -m lopt_trace.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="an unfinished run's checkpoint (OUT.checkpoint of `lopt-trace train`)")
    p.add_argument("out", help="the optimizer file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing optimizer file")
    a = p.parse_args(argv)
    try:
        info = export_checkpoint(a.checkpoint, a.out, overwrite=a.overwrite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    score = info.get("selected_validation")
    print(f"wrote {a.out}: θ of iteration {info['selected_checkpoint']} of {info['iterations_done']} done"
          + (f", validation {score:.4g}" if score is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
