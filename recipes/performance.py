"""Performance (paper Fig. 1): loss curves of every optimizer in the store, and meta-objectives.

For each optimizer group the recorded training loss ``loss (run, loss_step)`` is summarised as the
mean ± standard error over runs at every step, and each run's meta-objective
mean_{k=1..K} f_k / f_0 (:func:`lopt_trace.analysis.meta_objective`, the formula meta-training
scores: lower is better, a diverged run counts as inf) is averaged over runs.

    lopt-trace analyze performance STORE
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from lopt_trace.analysis import meta_objective, optimizer_names, run_group
from lopt_trace.analysis.conventions import attrs
from lopt_trace.analysis.results import run_recipe

NAME = "performance"
VERSION = "1"


def _sem(x: np.ndarray, axis: int) -> np.ndarray:
    n = np.sum(np.isfinite(x), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanstd(x, axis=axis, ddof=1) / np.sqrt(n)


def compute(tree: xr.DataTree, optimizers: list[str] | None = None) -> xr.Dataset:
    """Loss mean ± sem per optimizer and step; meta-objective per run and its mean ± sem."""
    names = list(optimizers) if optimizers else optimizer_names(tree)
    parts = []
    for name in names:
        loss = run_group(tree, name)["loss"].transpose("run", "loss_step").astype(np.float64).compute()
        values = loss.values
        finite = np.where(np.isfinite(values), values, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step where every run diverged
            mean = np.nanmean(finite, axis=0)
        meta = meta_objective(values)
        finite_meta = meta[np.isfinite(meta)]
        parts.append(xr.Dataset(
            {
                "loss_mean": (("loss_step",), mean, attrs("training loss, mean over runs")),
                "loss_sem": (("loss_step",), _sem(finite, 0), attrs("training loss, standard error")),
                "meta_objective": (("run",), meta, attrs("mean_k f_k / f_0 per run")),
                "meta_objective_mean": ((), float(np.mean(meta)),
                                        attrs("meta-objective, mean over runs (inf if any diverged)")),
                "meta_objective_sem": ((), float(_sem(finite_meta, 0)) if len(finite_meta) > 1 else np.nan,
                                       attrs("meta-objective, standard error over finite runs")),
                "final_loss_mean": ((), float(mean[-1]), attrs("final training loss, mean")),
                "final_loss_sem": ((), float(_sem(finite, 0)[-1]), attrs("final training loss, sem")),
                "diverged": ((), int(np.sum(~np.isfinite(meta))), attrs("runs that diverged", "count")),
            },
            coords={"loss_step": loss["loss_step"].values, "run": np.arange(len(meta))},
        ).expand_dims(optimizer=np.array([name], dtype=object)))
    return xr.concat(parts, dim="optimizer", join="outer")


def summary(ds: xr.Dataset) -> str:
    """One line: each optimizer's meta-objective (mean ± sem), best first."""
    order = np.argsort(ds["meta_objective_mean"].values, kind="stable")
    items = []
    for i in order:
        name = str(ds["optimizer"].values[i])
        m, s = float(ds["meta_objective_mean"][i]), float(ds["meta_objective_sem"][i])
        items.append(f"{name} {m:.3g}" + (f" ± {s:.2g}" if np.isfinite(s) else "")
                     + (f" ({int(ds['diverged'][i])} diverged)" if int(ds["diverged"][i]) else ""))
    best = str(ds["optimizer"].values[order[0]])
    return f"performance: meta-objective (mean f_k/f_0, lower is better) {', '.join(items)}; best {best}"


def plot(ds: xr.Dataset):
    """Loss curves, mean ± sem over runs, one colour per optimizer (log loss axis), and the
    meta-objective per optimizer: drawn as the dashboard's overview and the report's Fig. 1 draw
    them."""
    from lopt_trace.analysis.plotting import holoviews  # drawing only: computing loads no HoloViews or dashboard
    from lopt_trace.dashboard.overview import loss_plot, meta_objective_plot

    return holoviews().Layout([loss_plot(ds, logy=True), meta_objective_plot(ds)]).cols(2).opts(shared_axes=False)


def run(store, **params) -> xr.Dataset:
    """Compute, write to ``/analysis/performance`` of ``store``, return the result."""
    return run_recipe(store, NAME, VERSION, compute, params)
