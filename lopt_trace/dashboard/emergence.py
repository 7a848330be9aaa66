"""Emergence tab: the meta-objective and each mechanism's strength over meta-training iterations.

From ``/analysis/emergence`` (the ``emergence`` recipe run on every θ checkpoint of the store's
``/meta_train`` history): the meta-objective per checkpoint over the training meta-loss of every
iteration; each mechanism's progress from the first checkpoint (0) to the last (1) in one plot, so
the order in which they appeared, and what the meta-objective did meanwhile, can be read off;
and each metric in its own units (momentum |λ|, Σα, clipping threshold, schedule and adaptation
ratios, the spread of η over tensors).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis.checkpoints import STRENGTH, meta_train_history, metric
from lopt_trace.analysis.checkpoints import progress as checkpoint_progress
from lopt_trace.dashboard._common import HEIGHT, WIDTH, hv, missing, notice, palette, pn
from lopt_trace.errors import UserError

#: (label, metric) of the mechanisms on the progress plot, meta-objective first
PROGRESS = (
    ("meta-objective", "meta_objective"),
    ("momentum |λ|", "momentum_beta"),
    ("Σα (learning rate)", "total_alpha"),
    ("clipping (share of |g| beyond)", "clip_fraction_beyond"),
    ("schedule (peak η / η0)", "schedule_peak_ratio"),
    ("adaptation (η(+g) / η(0))", "adaptation_ratio_positive"),
    ("η spread over tensors", "eta_spread_tensors"),
)
#: the mechanism (key of the result's ``halfway`` attribute) each progress metric measures
MECHANISM = {m: k for k, m in STRENGTH.items()}
#: (title, [(label, metric)], log y) of the per-metric panels
PANELS = (
    ("momentum mode |λ|", [("|λ|", "momentum_beta")], False),
    ("learning rate at the fixed point", [("Σα", "total_alpha"), ("α of the momentum mode", "momentum_alpha")],
     False),
    ("saturation threshold |g| at h0", [("threshold", "clip_threshold"), ("clip equivalent", "clip_equivalent")],
     True),
    ("schedule without gradients", [("peak η / η0", "schedule_peak_ratio"),
                                    ("final η / η0", "schedule_final_ratio")], False),
    ("adaptation at ±g_max", [("η(+g) / η(0)", "adaptation_ratio_positive"),
                              ("η(−g) / η(0)", "adaptation_ratio_negative")], False),
    ("layers and kinds", [("largest / smallest η over tensors", "eta_spread_tensors"),
                          ("η bias / η weight", "eta_bias_weight_ratio")], False),
)


def progress(ds: xr.Dataset, name: str) -> np.ndarray:
    """Metric ``name`` rescaled so the first checkpoint is 0 and the last 1 (all NaN without a net
    change; :func:`lopt_trace.analysis.checkpoints.progress`)."""
    return checkpoint_progress(metric(ds, name))


def _marks(ds: xr.Dataset):
    """The store's own θ (a dotted vertical line) when it is one of the checkpoints."""
    it = int(ds.attrs.get("store_checkpoint", -1))
    return [hv().VLine(it).opts(color="gray", line_dash="dotted")] if it >= 0 else []


def objective_plot(ds: xr.Dataset, title: str = "meta-objective"):
    """The training meta-loss at every iteration (light) and each checkpoint's meta-objective."""
    h = hv()
    layers = []
    if "history_meta_loss" in ds:
        loss = np.asarray(ds["history_meta_loss"].values, dtype=np.float64)
        layers.append(h.Curve((ds["iteration"].values, np.where(np.isfinite(loss), loss, np.nan)),
                              "iteration", "meta-objective", label="training meta-loss").opts(
            color="#9ecae1", line_width=1))
    label = "validation" if ds.attrs.get("has_validation") else "meta-loss since the last checkpoint"
    it, obj = ds["checkpoint"].values, metric(ds, "meta_objective")
    layers.append(h.Curve((it, obj), "iteration", "meta-objective", label=f"checkpoints ({label})").opts(
        color="black", line_width=2))
    layers.append(h.Scatter((it, obj), "iteration", "meta-objective").opts(color="black", size=6, tools=["hover"]))
    vals = np.concatenate([np.asarray(l.dimension_values(1), dtype=float) for l in layers])
    logy = bool(np.all(vals[np.isfinite(vals)] > 0))
    return h.Overlay(layers + _marks(ds)).opts(title=title, width=WIDTH, height=HEIGHT, show_grid=True,
                                               logy=logy, legend_position="top_right")


def progress_plot(ds: xr.Dataset, title: str = "each mechanism from the first checkpoint (0) to the last (1)"):
    """Every mechanism's (and the meta-objective's) progress on one axis, half-way marked."""
    h = hv()
    it = ds["checkpoint"].values
    layers = [h.HLine(0.5).opts(color="lightgray", line_dash="dashed")]
    for (label, name), colour in zip(PROGRESS, palette(len(PROGRESS))):
        p = progress(ds, name)
        if not np.isfinite(p).any():
            continue
        style = dict(color="black", line_width=3) if name == "meta_objective" else dict(color=colour, line_width=2)
        layers.append(h.Curve((it, p), "iteration", "progress", label=label).opts(**style, tools=["hover"]))
    # the HLine comes first, so the overlay would otherwise take its axis names (x, y)
    return h.Overlay(layers + _marks(ds)).opts(title=title, width=WIDTH + 120, height=HEIGHT, show_grid=True,
                                               legend_position="right", xlabel="iteration",
                                               ylabel="progress (0 first checkpoint, 1 last)")


def metric_plots(ds: xr.Dataset) -> list:
    """One small panel per mechanism, each metric in its own units (infinite values left out)."""
    h = hv()
    it = ds["checkpoint"].values
    out = []
    for title, items, log in PANELS:
        curves = []
        for (label, name), colour in zip(items, palette(len(items))):
            v = metric(ds, name)
            v = np.where(np.isfinite(v) & ((v > 0) if log else True), v, np.nan)
            if np.isfinite(v).any():
                curves.append(h.Curve((it, v), "iteration", title, label=label).opts(color=colour, line_width=2,
                                                                                       tools=["hover"]))
        if curves:
            out.append(h.Overlay(curves + _marks(ds)).opts(title=title, width=WIDTH - 120, height=HEIGHT - 80,
                                                             show_grid=True, logy=log, legend_position="bottom_right"))
    return out


def key_numbers(ds: xr.Dataset) -> str:
    """Markdown: the checkpoints, and the iteration by which each mechanism made half its change."""
    a = ds.attrs
    half = {k: v for k, v in dict(a.get("halfway") or {}).items() if v is not None}
    text = (f"**{a.get('n_checkpoints', '?')} checkpoints** of `{a.get('optimizer', '?')}`, iterations "
            f"{a.get('first_iteration', '?')}–{a.get('last_iteration', '?')}")
    if int(a.get("store_checkpoint", -1)) >= 0:
        text += f" · the recorded θ is checkpoint {a['store_checkpoint']} (dotted line)"
    if half:
        order = sorted(half.items(), key=lambda kv: kv[1])
        text += " · half-way by iteration: " + ", ".join(f"{k} **{v}**" for k, v in order)
    if a.get("layers_note"):
        text += f" · {a['layers_note']}"
    return text


def no_history(view) -> str | None:
    """Why the store cannot have an emergence analysis (no meta-training history), or None."""
    try:
        meta_train_history(view.tree)
    except UserError as exc:
        return str(exc)
    return None


def build(view, rebuild=None):
    """The Emergence tab."""
    panel = pn()
    ds = view.analysis("emergence")
    if ds is None:
        reason = no_history(view)
        if reason:
            return notice(f"Nothing to show: {reason}.", "info")
        return missing(view, "emergence", "The mechanisms along meta-training", None, rebuild)
    plots = metric_plots(ds)
    return panel.Column(
        panel.pane.Markdown(key_numbers(ds)),
        panel.Row(panel.pane.HoloViews(objective_plot(ds), name="meta-objective"),
                  panel.pane.HoloViews(progress_plot(ds), name="progress")),
        panel.GridBox(*[panel.pane.HoloViews(p) for p in plots], ncols=3),
        name="Emergence")
