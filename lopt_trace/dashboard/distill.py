"""Distillation tab: how much of the learned optimizer the mechanisms found explain.

From ``/analysis/distill`` (``lopt-trace distill STORE``): the fraction of the analysed
optimizer's advantage over tuned momentum that the distilled optimizer recovers, for it and for
each ablation (bars with the bootstrap's 95% interval); what each mechanism carries; the mean
loss curves of the references, the distilled optimizer and its ablations on the held-out
problems; and the distilled optimizer's parts (schedule, clip, adaptation curve).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.dashboard._common import HEIGHT, WIDTH, hv, notice, palette, pn, strings
from lopt_trace.distill.result import distilled_from_result, percent, summary
from lopt_trace.optimizers.distilled import soft_clip

#: colours of the two references and the distilled optimizer (the ablations get a palette)
COLOURS = {"learned": "#d62728", "tuned_momentum": "#1f77b4", "distilled": "#2ca02c"}


def _finite(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.isfinite(x), x, np.nan)


#: bars are drawn within ±LIMIT % (a variant far outside, e.g. one whose runs blow up without a
#: mechanism, would hide the rest); the label on each bar gives its value
LIMIT = 250.0


def _bars(names, value, low, high, xlabel, ylabel, colour):
    """Bars with error bars and value labels, clipped to ±LIMIT % (clipped bars are grey)."""
    h = hv()
    shown = np.clip(np.nan_to_num(value, nan=0.0, posinf=LIMIT, neginf=-LIMIT), -LIMIT, LIMIT)
    clipped = np.abs(np.nan_to_num(value, nan=0.0, posinf=np.inf, neginf=-np.inf)) > LIMIT
    lo = np.clip(np.where(np.isfinite(low), low, shown), -LIMIT, LIMIT)
    hi = np.clip(np.where(np.isfinite(high), high, shown), -LIMIT, LIMIT)
    bars = h.Bars((names, shown, clipped.astype(int)), xlabel, [ylabel, "clipped"]).opts(
        color=h.dim("clipped").categorize({0: colour, 1: "#bbbbbb"}), tools=["hover"])
    errors = h.ErrorBars((names, shown, shown - lo, hi - shown), xlabel, [ylabel, "minus", "plus"]).opts(
        color="black")
    text = [percent(v / 100, "inf") if np.isfinite(v) or v == np.inf else "diverged" for v in value]
    labels = h.Labels((names, shown + np.where(shown >= 0, 8, -8), text), [xlabel, ylabel], "text").opts(
        text_font_size="8pt", text_color="black")
    return h.Overlay([bars, errors, labels]).opts(ylim=(min(-10.0, float(np.min(lo)) - 20),
                                                        max(110.0, float(np.max(hi)) + 20)))


def fraction_plot(ds: xr.Dataset, title: str = "fraction of the advantage over tuned momentum recovered"):
    """Recovered fraction per variant (the references are 1 and 0 by definition), with the
    bootstrap 2.5–97.5% interval; bars beyond ±LIMIT % are clipped and grey, labelled with
    their value."""
    h = hv()
    labels = strings(ds["variant"].values)
    keep = [i for i, lab in enumerate(labels) if lab not in ("learned", "tuned_momentum")]
    value = 100 * np.asarray(ds["recovered"].values[keep], np.float64)
    low = 100 * _finite(ds["recovered_low"].values[keep])
    high = 100 * _finite(ds["recovered_high"].values[keep])
    plot = _bars([labels[i] for i in keep], value, low, high, "variant", "recovered (%)", "#2ca02c")
    lines = [h.HLine(100).opts(color="#d62728", line_dash="dashed"),
             h.HLine(0).opts(color="#1f77b4", line_dash="dashed")]
    return (plot * h.Overlay(lines)).opts(title=title, width=WIDTH + 80, height=HEIGHT, show_grid=True,
                                          xrotation=35)


def carried_plot(ds: xr.Dataset, title: str = "what each mechanism carries"):
    """recovered(distilled) − recovered(without the mechanism), with the bootstrap interval."""
    h = hv()
    value = 100 * np.asarray(ds["carried"].values, np.float64)
    low, high = 100 * _finite(ds["carried_low"].values), 100 * _finite(ds["carried_high"].values)
    plot = _bars(strings(ds["mechanism"].values), value, low, high, "mechanism", "carried (%)", "#9467bd")
    return (plot * h.HLine(0).opts(color="gray")).opts(title=title, width=WIDTH - 80, height=HEIGHT,
                                                      show_grid=True)


def loss_plot(ds: xr.Dataset, title: str = "training loss, mean over the held-out problems", logy: bool = True):
    """Mean loss curve of every variant (references thick; runs that diverged are dropped)."""
    h = hv()
    labels = strings(ds["variant"].values)
    k = ds["loss_step"].values
    others = [lab for lab in labels if lab not in COLOURS]
    colours = {**dict(zip(others, palette(len(others) + 3)[3:])), **COLOURS}
    curves = []
    for i, lab in enumerate(labels):
        loss = _finite(ds["loss"].values[i])
        ok = np.isfinite(loss).all(axis=1)
        if not ok.any():
            continue
        mean = loss[ok].mean(axis=0)
        if logy:
            mean = np.where(mean > 0, mean, np.nan)
        main = lab in COLOURS
        curves.append(h.Curve((k, mean), "step", "loss", label=lab).opts(
            color=colours[lab], line_width=3 if main else 1, alpha=1.0 if main else 0.6, tools=["hover"]))
    return h.Overlay(curves).opts(title=title, width=WIDTH + 120, height=HEIGHT, show_grid=True, logy=logy,
                                  legend_position="right")


def parts_plots(ds: xr.Dataset) -> list:
    """The distilled optimizer's schedule s(k), clip c(g) and adaptation a(g*)."""
    h = hv()
    _opt, th = distilled_from_result(ds)
    sched = np.asarray(th["schedule"], np.float64)
    out = [h.Curve((np.arange(len(sched)), sched), "step", "s(k)").opts(
        title="schedule: learning-rate factor", width=WIDTH - 120, height=HEIGHT - 80, show_grid=True, color="green")]
    tau = np.asarray(th["clip_threshold"], np.float64)
    span = 4 * np.nanmax(np.where(np.isfinite(tau), tau, np.nan)) if np.isfinite(tau).any() else 1.0
    g = np.linspace(-span, span, 401)
    c = np.asarray(soft_clip(g, tau))
    where = "update (in gradient units)" if _opt.clip_at == "update" else "gradient"
    out.append(h.Overlay([h.Curve((g, g), "g", "c(g)").opts(color="lightgray", line_dash="dashed"),
                          h.Curve((g, c), "g", "c(g)").opts(color="#9467bd", line_width=2)]).opts(
        title=f"clip of the {where}", width=WIDTH - 120, height=HEIGHT - 80, show_grid=True, xrotation=45))
    out.append(h.Curve((np.asarray(th["adaptation_gradient"]), np.asarray(th["adaptation_ratio"])), "mean gradient m",
                       "a(m)").opts(title="adaptation: learning-rate factor", width=WIDTH - 120, height=HEIGHT - 80,
                                    show_grid=True, color="#ff7f0e"))
    return out


def key_numbers(ds: xr.Dataset) -> str:
    """Markdown: the recovered fraction, the references and the distilled optimizer's numbers."""
    a = ds.attrs
    d = dict(a.get("distilled") or {})
    text = f"{summary(ds)}\n\n"
    text += (f"**distilled optimizer**: β = {d.get('beta', np.nan):.4g}, α = {d.get('learning_rate', np.nan):.4g}, "
             f"α_fast = {d.get('fast_learning_rate', np.nan):.4g}, clip τ = "
             + ", ".join(f"{x:.3g}" for x in d.get("clip_threshold", []))
             + f", β_a = {d.get('adaptation_beta', np.nan):.3g}"
             + f" · tuned momentum: α = {a['momentum_theta']['learning_rate']:.4g}, β = "
             f"{a['momentum_theta']['beta']:.4g} ({a.get('momentum_source')})")
    return text


def build(view, rebuild=None):
    """The Distillation tab."""
    panel = pn()
    ds = view.analysis("distill")
    if ds is None:
        return notice("**Does what the analyses found explain the learned optimizer?** needs "
                      "`/analysis/distill`, which this store does not have yet. It runs new problems "
                      f"(a few minutes), so it is not computed here; run:\n\n```\n{view.command('distill')}\n```",
                      "warning")
    return panel.Column(
        panel.pane.Markdown(key_numbers(ds)),
        panel.Row(panel.pane.HoloViews(fraction_plot(ds), name="recovered"),
                  panel.pane.HoloViews(carried_plot(ds), name="carried")),
        panel.pane.HoloViews(loss_plot(ds), name="loss"),
        panel.GridBox(*[panel.pane.HoloViews(p) for p in parts_plots(ds)], ncols=3),
        name="Distillation")
