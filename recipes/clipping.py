"""Gradient clipping (paper Fig. 4): where the update function saturates, and how often gradients
get there.

The update function Δx(g) = readout(θ, F(θ, h, g)) is evaluated on a gradient grid at the initial
state and at states sampled along the recorded trajectories. At each state the saturation
threshold is the |g| where the update falls ``tol`` (default 10%) below its linear part, and the
clip equivalent is the largest update reached divided by the effective learning rate (see
:mod:`lopt_trace.analysis.update_functions`). The fraction of recorded gradients beyond the
initial state's threshold is computed from the exact |g| histogram over every parameter and step
(``gradient_hist``), and from the stored gradients.

    lopt-trace analyze clipping STORE [--optimizer NAME] [-p tol=0.1]
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis import (
    displaced,
    fraction_beyond,
    fraction_beyond_hist,
    group_pca,
    rebuild,
    run_group,
    sample_states,
    saturation,
    select_optimizer,
    update_function,
)
from lopt_trace.analysis.conventions import attrs
from lopt_trace.analysis.results import run_recipe
from lopt_trace.analysis.sampling import analysis_start, gradient_max, gradient_quantile

NAME = "clipping"
VERSION = "1"


def compute(tree: xr.DataTree, optimizer: str | None = None, n_states: int = 16, seed: int = 0,
            tol: float = 0.1, g_max: float | None = None, num: int = 2001,
            curve_points: int = 201, displace: bool = True) -> xr.Dataset:
    """Update functions, saturation per state, and the fraction of gradients beyond it.

    The states are the initial state (held components, such as the input-normalised GRU's
    ``gmax``, at their recorded median: :func:`analysis_start`), ``n_states`` states sampled along the trajectories and,
    with ``displace``, the initial state moved along the first principal component of the
    recorded states by ±1 and ±2 standard deviations. ``g_max`` (default: 2 × the largest stored
    |g|, at least 2 × the 99.9th percentile over all parameters) bounds the gradient grid.
    """
    name = select_optimizer(tree, optimizer)
    opt, theta = rebuild(tree, name)
    ds = run_group(tree, name)
    if g_max is None:
        g_max = 2.0 * max(gradient_max(ds), gradient_quantile(ds, 0.999))
        g_max = g_max if np.isfinite(g_max) and g_max > 0 else 1.0
    samples = sample_states(ds["state"], n_states, seed)
    h0 = analysis_start(ds, opt)  # h0, held components (if any) at their recorded median
    labels = ["initial"] + [f"trajectory {i}" for i in range(samples.sizes["start"])]
    values = [h0.values[None], samples.values]
    if displace:
        pcs, _ = group_pca(tree, name, 1)
        pc1 = pcs["components"].isel(component=0) * np.sqrt(float(pcs["explained_variance"][0]))
        amounts = [-2.0, -1.0, 1.0, 2.0]
        values.append(displaced(h0, pc1, amounts).values)
        labels += [f"initial {a:+g} sd PC1" for a in amounts]
    values = np.concatenate(values)
    states = xr.DataArray(values, dims=("state", "unit"),
                          coords={"state": np.array(labels, dtype=object), "unit": ds["unit"].values})

    grid = np.linspace(-g_max, g_max, int(curve_points))
    curves = update_function(opt, theta, states, grid)
    sat = saturation(opt, theta, states, g_max, tol=tol, num=num)
    thr0 = float(sat["threshold"].sel(state="initial"))
    frac_hist = (fraction_beyond_hist(ds["gradient_hist"], ds["bin_edges"].values, thr0)
                 if "gradient_hist" in ds else float("nan"))
    frac_stored = float(fraction_beyond(ds["gradient"], thr0).compute())
    hist = ds["gradient_hist"].sum(["run", "tensor"]).compute() if "gradient_hist" in ds else None

    out = xr.Dataset({"update_function": curves, **sat.data_vars})
    out["update_function"].attrs = attrs("update Δx(g) at each state")
    if hist is not None:
        out["gradient_hist"] = hist.drop_vars(list(hist.coords)).assign_attrs(
            attrs("|g| counts over all parameters, steps and runs", "count"))
        out["hist_edges"] = xr.DataArray(ds["bin_edges"].values, dims="bin_edge",
                                         attrs=attrs("|g| bin edges"))
    traj = sat["threshold"].sel(state=[lab for lab in labels if lab.startswith("trajectory")]).values
    out.attrs = {
        "optimizer": name, "tol": float(tol), "g_max": float(g_max),
        "threshold": thr0,
        "clip_equivalent": float(sat["clip_equivalent"].sel(state="initial")),
        "effective_learning_rate": float(sat["effective_learning_rate"].sel(state="initial")),
        "update_limit": float(sat["update_limit"].sel(state="initial").min()),
        "fraction_beyond": frac_hist if np.isfinite(frac_hist) else frac_stored,
        "fraction_beyond_stored": frac_stored,
        "trajectory_threshold_median": float(np.median(traj)) if len(traj) else float("nan"),
    }
    return out


def summary(ds: xr.Dataset) -> str:
    """One line: the initial state's threshold and clip equivalent, and the fraction beyond."""
    a = ds.attrs
    if not np.isfinite(a["effective_learning_rate"]):
        text = ("clipping: the update has no finite slope at g = 0 from the initial state "
                f"(η = {a['effective_learning_rate']}), so no saturation threshold there")
        if np.isfinite(a.get("trajectory_threshold_median", np.nan)):
            text += f"; median threshold along trajectories {a['trajectory_threshold_median']:.3g}"
        return text + f" [{a['optimizer']}]"
    if not np.isfinite(a["threshold"]):
        return (f"clipping: no saturation up to |g| = {a['g_max']:.3g} (the update stays within "
                f"{100 * a['tol']:.0f}% of linear, η = {a['effective_learning_rate']:.3g}) [{a['optimizer']}]")
    text = (f"clipping: the update saturates beyond |g| = {a['threshold']:.3g} "
            f"({100 * a['tol']:.0f}% below linear; largest |Δx| = {a['update_limit']:.3g}, as if "
            f"gradients were clipped at {a['clip_equivalent']:.3g}); "
            f"{100 * a['fraction_beyond']:.2g}% of recorded gradients are beyond it")
    if np.isfinite(a.get("trajectory_threshold_median", np.nan)):
        text += f"; median threshold along trajectories {a['trajectory_threshold_median']:.3g}"
    return text + f" [{a['optimizer']}]"


def plot(ds: xr.Dataset):
    """Update functions (initial state in black) and the gradient-magnitude histogram."""
    from lopt_trace.analysis.plotting import holoviews  # HoloViews only when drawing, not computing

    hv = holoviews()

    g = ds["g"].values
    curves = [hv.Curve((g, ds["update_function"].sel(state=s).values), "g", "Δx",
                       label=str(s)).opts(alpha=1.0 if s == "initial" else 0.3)
              for s in ds["state"].values]
    thr = ds.attrs["threshold"]
    lines = [hv.VLine(v).opts(color="red", line_dash="dashed") for v in (-thr, thr) if np.isfinite(v)]
    left = hv.Overlay(curves + lines).opts(title="update functions", show_legend=False)
    if "gradient_hist" not in ds:
        return left
    edges = ds["hist_edges"].values
    edges = np.where(edges > 0, edges, edges[edges > 0].min() / 10)  # a first bin from 0
    hist = hv.Histogram((np.log10(edges), ds["gradient_hist"].values),
                        kdims=["log10 |g|"], vdims=["count"]).opts(title="recorded gradient magnitudes")
    mark = [hv.VLine(np.log10(thr)).opts(color="red", line_dash="dashed")] if np.isfinite(thr) else []
    return (left + hv.Overlay([hist] + mark)).cols(2)


def run(store, **params) -> xr.Dataset:
    """Compute, write to ``/analysis/clipping`` of ``store``, return the result."""
    return run_recipe(store, NAME, VERSION, compute, params)
