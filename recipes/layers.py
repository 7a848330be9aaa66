"""Per-tensor behaviour (paper Fig. 7): do layers and kinds (weights, biases) get different
treatment?

From the store's exact per-tensor aggregates: the mean state trajectory of every tensor and of
every kind, projected on the principal components of the recorded states, with the effective
learning rate along each (Fig. 7a, b); and gradient-magnitude histograms per tensor and per
(layer, kind), with their medians (Fig. 7c). See :mod:`lopt_trace.analysis.layers`.

    lopt-trace analyze layers STORE [--optimizer NAME]
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis import (
    gradient_histograms,
    group_pca,
    rebuild,
    run_group,
    select_optimizer,
    tensor_trajectories,
)
from lopt_trace.analysis.conventions import strings
from lopt_trace.analysis.results import run_recipe

NAME = "layers"
VERSION = "1"


def compute(tree: xr.DataTree, optimizer: str | None = None, n_components: int = 3) -> xr.Dataset:
    """Mean trajectories per tensor and kind, their effective LR, and |g| histograms."""
    name = select_optimizer(tree, optimizer)
    opt, theta = rebuild(tree, name)
    ds = run_group(tree, name)
    pcs, _ = group_pca(tree, name, n_components)
    traj = tensor_trajectories(opt, theta, ds["state_mean"], pcs, n_components)
    hists = gradient_histograms(ds["gradient_hist"], ds["bin_edges"].values)
    out = xr.merge([traj, hists, pcs[["components", "explained_variance_ratio"]]], combine_attrs="drop",
                   compat="override", join="outer")
    eta_t = out["tensor_effective_learning_rate"].isel(step=-1)
    eta_k = out["kind_effective_learning_rate"].isel(step=-1)
    tensors = [str(t) for t in out["tensor"].values]
    med = out["tensor_median"].values
    info = {"optimizer": name,
            "eta_last": {tensors[i]: float(eta_t.values[i]) for i in range(len(tensors))},
            "eta_last_kind": {str(k): float(v) for k, v in zip(out["kind"].values, eta_k.values)},
            "median_abs_gradient": {tensors[i]: float(med[i]) for i in range(len(tensors))}}
    out.attrs = info
    return out


def summary(ds: xr.Dataset) -> str:
    """One line: the effective LR at the last step per kind and its range over tensors; the
    range of median |g| over tensors."""
    a = ds.attrs
    kinds = a["eta_last_kind"]
    text = "layers: effective LR at the last step " + ", ".join(f"{k} {v:.3g}" for k, v in kinds.items())
    if "weight" in kinds and "bias" in kinds and kinds["weight"]:
        text += f" (bias/weight ×{kinds['bias'] / kinds['weight']:.3g})"
    eta = a["eta_last"]
    lo, hi = min(eta, key=eta.get), max(eta, key=eta.get)
    text += f"; over tensors {eta[lo]:.3g} ({lo}) to {eta[hi]:.3g} ({hi})"
    med = {k: v for k, v in a["median_abs_gradient"].items() if np.isfinite(v)}
    if med:
        lo, hi = min(med, key=med.get), max(med, key=med.get)
        text += f"; median |g| {med[lo]:.2g} ({lo}) to {med[hi]:.2g} ({hi})"
    return text + f" [{a['optimizer']}]"


def layer_kind_histograms(ds: xr.Dataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(labels, counts (group, bin), edges)`` of the |g| histograms per (layer, kind) that have
    gradients, labelled ``layer L kind``."""
    counts = ds["layer_kind_hist"].transpose("layer", "kind", "bin").values.astype(np.float64)
    labels, rows = [], []
    for i, layer in enumerate(ds["layer"].values):
        for j, kind in enumerate(strings(ds["kind"].values)):
            if counts[i, j].sum() > 0:
                labels.append(f"layer {int(layer)} {kind}")
                rows.append(counts[i, j])
    return labels, np.array(rows).reshape(len(rows), -1), np.asarray(ds["hist_edges"].values, np.float64)


def plot(ds: xr.Dataset):
    """Mean state trajectory per tensor on PC 1/2, effective LR per tensor over steps, and |g|
    histograms per layer and kind (the report's Fig. 7)."""
    # HoloViews (and the dashboard's drawing, for the histograms) only when drawing, not computing
    from lopt_trace.analysis.plotting import holoviews
    from lopt_trace.dashboard.gradients import histogram_plot
    from lopt_trace.dashboard.style import palette

    hv = holoviews()
    tensors = strings(ds["tensor"].values)
    trajs, etas = [], []
    for t, colour in zip(tensors, palette(len(tensors))):
        if "tensor_projection" in ds:
            p = ds["tensor_projection"].sel(tensor=t)
            y = p.isel(component=1).values if p.sizes["component"] > 1 else ds["step"].values
            trajs.append(hv.Curve((p.isel(component=0).values, y), "PC 1",
                                  "PC 2" if p.sizes["component"] > 1 else "step", label=t).opts(color=colour))
        etas.append(hv.Curve((ds["step"].values, ds["tensor_effective_learning_rate"].sel(tensor=t).values),
                             "step", "effective learning rate", label=t).opts(color=colour))
    plots = []
    if trajs:
        plots.append(hv.Overlay(trajs).opts(title="mean state per tensor", width=480, height=380,
                                            show_grid=True, show_legend=False))
    plots.append(hv.Overlay(etas).opts(title="effective learning rate per tensor", width=560, height=380,
                                       show_grid=True, legend_position="right"))
    labels, counts, edges = layer_kind_histograms(ds)
    if labels:
        plots.append(histogram_plot(labels, counts, edges, True, None, title="|g| by layer and kind"))
    return hv.Layout(plots).cols(2).opts(shared_axes=False)


def run(store, **params) -> xr.Dataset:
    """Compute, write to ``/analysis/layers`` of ``store``, return the result."""
    return run_recipe(store, NAME, VERSION, compute, params)
