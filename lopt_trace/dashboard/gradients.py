"""Gradients tab: gradient-magnitude histograms per tensor, kind or (layer, kind), with the update
function's saturation threshold overlaid (paper Figs. 4b and 7c).

The histograms are the store's exact ``gradient_hist (run, tensor, bin)`` (every parameter and
step, fixed log-spaced bins), summed over runs; the threshold is the one ``/analysis/clipping``
found at the initial state. The mean |g| per tensor over steps (``gradient_abs_mean``) is shown
alongside.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.dashboard._common import (HEIGHT, WIDTH, hv, missing, notice, optimizer_select,
                                          palette, pn, strings, widget)

GROUP_BY = ("tensor", "kind", "layer & kind")


def bin_centres(edges: np.ndarray) -> np.ndarray:
    """Geometric bin centres; a first bin starting at 0 gets its upper edge / √10."""
    edges = np.asarray(edges, dtype=np.float64)
    lo = np.where(edges[:-1] > 0, edges[:-1], edges[1:] / 10.0)
    return np.sqrt(lo * edges[1:])


def histograms(ds: xr.Dataset, group_by: str = "tensor") -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(labels, counts (group, bin), edges)``: |g| counts summed over runs, per group."""
    hist = ds["gradient_hist"].sum("run").transpose("tensor", "bin").astype(np.float64).values
    edges = np.asarray(ds["bin_edges"].values, dtype=np.float64)
    tensors = strings(ds["tensor"].values)
    kinds = strings(ds["tensor_kind"].values)
    layers = [int(x) for x in np.asarray(ds["tensor_layer"].values)]
    if group_by == "tensor":
        keys = tensors
    elif group_by == "kind":
        keys = kinds
    elif group_by == "layer & kind":
        keys = [f"layer {lay} {k}" for lay, k in zip(layers, kinds)]
    else:
        raise ValueError(f"group_by must be one of {GROUP_BY}, got {group_by!r}")
    labels = list(dict.fromkeys(keys))
    counts = np.stack([hist[[i for i, k in enumerate(keys) if k == lab]].sum(0) for lab in labels])
    return labels, counts, edges


def histogram_plot(labels, counts, edges, density: bool = True, threshold: float | None = None,
                   title: str = "gradient magnitudes"):
    """A step curve per group over log |g| (fraction of that group's gradients, or counts), with
    the saturation threshold as a red dashed line."""
    h = hv()
    centres = bin_centres(edges)
    layers = []
    for lab, c, colour in zip(labels, counts, palette(len(labels))):
        y = c / c.sum() if density and c.sum() > 0 else c
        layers.append(h.Curve((centres, y), "|g|", "fraction" if density else "count", label=lab)
                      .opts(interpolation="steps-mid", color=colour, line_width=2))
    if threshold is not None and np.isfinite(threshold) and threshold > 0:
        layers.append(h.VLine(float(threshold), label="saturation threshold").opts(
            color="red", line_dash="dashed", line_width=2))
    nz = np.flatnonzero(counts.sum(0) > 0)
    xlim = (centres[nz[0]] / 3, centres[nz[-1]] * 3) if len(nz) else None
    if threshold is not None and np.isfinite(threshold) and threshold > 0 and xlim is not None:
        xlim = (min(xlim[0], threshold / 3), max(xlim[1], threshold * 3))
    opts = dict(title=title, logx=True, width=WIDTH + 120, height=HEIGHT + 20, show_grid=True,
                legend_position="right", tools=["hover"])
    if xlim is not None:
        opts["xlim"] = xlim
    return h.Overlay(layers).opts(**opts)


def mean_abs_plot(ds: xr.Dataset):
    """Mean |g| per tensor over steps (exact over all parameters; mean over runs)."""
    h = hv()
    g = ds["gradient_abs_mean"].astype(np.float64).mean("run").transpose("tensor", "step").values
    steps = ds["step"].values
    tensors = strings(ds["tensor"].values)
    curves = [h.Curve((steps, g[i]), "step", "mean |g|", label=t).opts(color=c)
              for i, (t, c) in enumerate(zip(tensors, palette(len(tensors))))]
    logy = bool(np.all(g[np.isfinite(g)] > 0))
    return h.Overlay(curves).opts(title="mean |g| per tensor", logy=logy, width=WIDTH, height=HEIGHT + 20,
                                  show_legend=False, show_grid=True, tools=["hover"])


def build(view, rebuild=None):
    """The Gradients tab."""
    panel = pn()
    names = [n for n in view.optimizers if view.has_variable(n, "gradient_hist")]
    if not names:
        return notice("No optimizer group with a `gradient_hist` array: nothing to show.", "danger")
    opt = optimizer_select(view, options=names)
    group = widget(panel.widgets.RadioButtonGroup, "group by", options=list(GROUP_BY), value="tensor")
    density = widget(panel.widgets.Checkbox, "normalise each histogram", value=True)

    def content(name, by, dens):
        ds = view.group(name)
        labels, counts, edges = histograms(ds, by)
        clip = view.analysis("clipping", name)
        thr = None if clip is None else float(clip.attrs.get("threshold", np.nan))
        parts = []
        if clip is None:
            parts.append(missing(view, "clipping", "The saturation threshold", name, rebuild))
        elif not np.isfinite(thr):
            parts.append(notice(f"The update function of `{name}` does not saturate up to |g| = "
                                f"{clip.attrs.get('g_max', np.nan):.3g}: no threshold to mark."))
        else:
            parts.append(panel.pane.Markdown(
                f"saturation threshold |g| = **{thr:.3g}** (red); "
                f"**{100 * clip.attrs.get('fraction_beyond', np.nan):.2g}%** of recorded gradients lie beyond it"))
        main = histogram_plot(labels, counts, edges, dens, thr,
                              title=f"{name}: gradient magnitudes by {by} (all steps and runs)")
        row = [panel.pane.HoloViews(main, name="gradient-histograms")]
        if "gradient_abs_mean" in ds:
            row.append(panel.pane.HoloViews(mean_abs_plot(ds), name="gradient-mean"))
        return panel.Column(*parts, panel.Row(*row))

    return panel.Column(panel.Row(opt, group, density), panel.bind(content, opt, group, density),
                        name="Gradients")
