"""The report's figures: analogues of Figs. 1 and 3–7 of the paper, Fig. 8 and Fig. 9, each drawn
from the store's ``/analysis/<recipe>`` result with its caption and key numbers (see
:mod:`lopt_trace.report`).

Figs. 5–9 are the recipe's own ``plot(result)``, lettered and laid out here; Figs. 1, 3 and 4 add
what only the store has (the loss arrays when ``/analysis/performance`` is missing, the recorded
states, the tuned baselines) and are drawn with the dashboard's plotting functions, which the
recipes' plots of performance, emergence and distill also call."""

from __future__ import annotations

import dataclasses

import numpy as np

from lopt_trace import recipes_loader
from lopt_trace.dashboard import emergence, gradients, linear_dynamics, overview, state_space, update_functions
from lopt_trace.dashboard.data import StoreView
from lopt_trace.dashboard.style import hv, strings


@dataclasses.dataclass
class Figure:
    key: str                     # fig1, fig3, ...
    title: str
    recipe: str
    caption: str
    summary: str = ""            # the recipe's one-line summary
    numbers: list = dataclasses.field(default_factory=list)  # [(label, value text)]
    plot: object = None          # a HoloViews object, or None when it could not be drawn
    problem: str = ""            # why there is no plot

    @property
    def ok(self) -> bool:
        return self.plot is not None


# -- figures -----------------------------------------------------------------------------------
def _fmt(x, digits: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if not np.isfinite(x) else f"{x:.{digits}g}"


def _summary(recipe: str, ds) -> str:
    try:
        return recipes_loader.load(recipe).summary(ds)
    except Exception as exc:  # noqa: BLE001 - a summary is a nicety
        return f"({recipe} summary unavailable: {type(exc).__name__})"


def _analysis(view: StoreView, fig: Figure):
    """The figure's ``/analysis/<recipe>`` group, or None after setting ``fig.problem`` to the
    command that computes it."""
    ds = view.analysis(fig.recipe)
    if ds is None:
        fig.problem = f"no /analysis/{fig.recipe}; run `{view.command(fig.recipe)}`"
    return ds


def figure_1(view: StoreView) -> Figure:
    fig = Figure("fig1", "Figure 1 · Performance", "performance",
                 "Training loss on held-out test problems (seeds never used in meta-training) for "
                 "every optimizer in the store, mean ± standard error over runs (left), and the "
                 "meta-objective, the mean over steps of f_k / f_0, lower is better (right). "
                 "Analogue of the paper's Fig. 1: the learned optimizer against tuned baselines.")
    data = overview.loss_data(view)
    plots = [overview.loss_plot(data, logy=True)]
    if "meta_objective_mean" in data:
        plots.append(overview.meta_objective_plot(data))
    mt = overview.meta_train_plot(view)
    if mt is not None:
        plots.append(mt)
        fig.caption += " The meta-training history (meta-loss per iteration) is shown too."
    fig.plot = hv().Layout(plots).cols(min(2, len(plots))).opts(shared_axes=False)  # 3 in a row overflow 1,400 px
    for name in strings(data["optimizer"].values):
        d = data.sel(optimizer=name)
        text = f"final loss {_fmt(d['final_loss_mean'], 4)} ± {_fmt(d['final_loss_sem'], 2)}"
        if "meta_objective_mean" in d:
            text += f"; meta-objective {_fmt(d['meta_objective_mean'], 4)}"
            if "meta_objective_sem" in d:
                text += f" ± {_fmt(d['meta_objective_sem'], 2)}"
        fig.numbers.append((name, text))
    perf = view.analysis("performance")
    if perf is not None:
        fig.summary = _summary("performance", perf)
    return fig


def figure_3(view: StoreView) -> Figure:
    fig = Figure("fig3", "Figure 3 · Momentum", "momentum",
                 "(a) Optimizer states projected on their first two principal components, coloured "
                 "by step, with the fixed points of F(θ, h, 0) (red stars) and the initial state "
                 "(black triangle); inset: total variance of the state across runs at each step. "
                 "(b) Eigenvalues of the Jacobian ∂F/∂h at the fixed points with the unit circle, "
                 "coloured by each mode's learning rate α_i. (c) α_i against the momentum timescale "
                 "β_i = |λ_i|, with the tuned heavy-ball momentum marked. A slow mode with α > 0 "
                 "is momentum.")
    mom = _analysis(view, fig)
    if mom is None:
        return fig
    name = str(mom.attrs.get("optimizer", view.default_optimizer()))
    pcs, tv, _src, df, fixed, h0, k = state_space.prepared(view, name)
    traj = state_space.trajectory_plot(df, "step", "PC 1", "PC 2" if k > 1 else "step", fixed=fixed,
                                       h0=h0, title=f"(a) {name}: states on PC 1 and 2")
    m = linear_dynamics.modes_table(mom, 0)
    a = mom.attrs
    optimal = (a["optimal_alpha"], a["optimal_beta"]) if "optimal_alpha" in a else None
    fig.plot = hv().Layout([traj, state_space.variance_plot(tv),
                            linear_dynamics.eigenvalue_plot(m, "(b) eigenvalues of ∂F/∂h"),
                            linear_dynamics.alpha_beta_plot(m, linear_dynamics.tuned_momentum(view), optimal,
                                                            "(c) α_i against β_i")]).cols(2).opts(shared_axes=False)
    fig.summary = _summary("momentum", mom)
    fig.numbers = [("optimizer", name),
                   ("dominant mode |λ|, α (share of Σ|α|)",
                    f"{_fmt(a.get('dominant_beta'))}, {_fmt(a.get('dominant_alpha'))} "
                    f"({_fmt(100 * a.get('dominant_share', np.nan), 2)} %)"),
                   ("slowest mode |λ|", _fmt(a.get("slowest_beta"))),
                   ("timescale (steps)", _fmt(a.get("slowest_timescale"))),
                   ("mode learning rate α", _fmt(a.get("slowest_alpha"))),
                   ("fixed points", str(a.get("n_fixed_points", "?"))),
                   ("median linearisation error", _fmt(100 * a.get("linearization_error_median", np.nan), 2) + " %")]
    if "tuned_beta" in a:
        fig.numbers.append(("tuned momentum β, α", f"{_fmt(a['tuned_beta'])}, {_fmt(a.get('tuned_learning_rate'))}"))
    if optimal:
        fig.numbers.append(("optimal heavy ball α*, β*", f"{_fmt(optimal[0])}, {_fmt(optimal[1])}"))
    return fig


def figure_4(view: StoreView) -> Figure:
    fig = Figure("fig4", "Figure 4 · Gradient clipping", "clipping",
                 "(a) Update functions Δx(g) = readout(θ, F(θ, h, g)) at the initial state (thick) and "
                 "at states sampled along recorded trajectories (thin), with SGD's update at its "
                 "tuned learning rate (dotted) and the saturation threshold (red dashed: the update "
                 "falls 10% below its linear part). (b) Magnitudes of every recorded gradient, with "
                 "the threshold; its first bin also holds every gradient that is exactly zero or "
                 "below the lowest edge (dead ReLU units, inputs that are always zero), hence its "
                 "spike. (a) spans ±5 thresholds so that the saturation is visible. Saturation acts "
                 "like gradient clipping.")
    clip = _analysis(view, fig)
    if clip is None:
        return fig
    h = hv()
    a = clip.attrs
    g = clip["g"].values
    states = strings(clip["state"].values)
    curves = []
    for s, colour in zip(states, ["#1f77b4"] + ["#9ecae1"] * (len(states) - 1)):
        curves.append(h.Curve((g, clip["update_function"].sel(state=s).values), "g", "Δx")
                      .opts(color=colour, line_width=3 if s == "initial" else 1))
    lr, _src = update_functions.sgd_learning_rate(view)
    ys = clip["update_function"].values
    if lr is not None:
        curves.append(h.Curve((g, -lr * g), "g", "Δx", label=f"SGD α = {lr:.3g}").opts(
            color="black", line_dash="dotted"))
    thr = float(a.get("threshold", np.nan))
    if np.isfinite(thr):
        curves += [h.VLine(s * thr).opts(color="red", line_dash="dashed") for s in (-1, 1)]
    span = min(float(np.nanmax(np.abs(g))), 5 * thr) if np.isfinite(thr) and thr > 0 else float(np.nanmax(np.abs(g)))
    shown = np.abs(g) <= span
    ys = ys[..., shown] if ys.shape[-1] == g.size else ys
    pad = 0.1 * (np.nanmax(ys) - np.nanmin(ys) or 1.0)
    left = h.Overlay(curves).opts(title=f"(a) update functions of {a.get('optimizer')}", width=520,
                                  height=380, show_grid=True, xlim=(-span, span),
                                  ylim=(np.nanmin(ys) - pad, np.nanmax(ys) + pad), legend_position="right")
    if "gradient_hist" in clip:
        counts = np.asarray(clip["gradient_hist"].values, dtype=float)[None]
        right = gradients.histogram_plot(["all tensors"], counts, clip["hist_edges"].values, True, thr,
                                         title="(b) recorded gradient magnitudes")
        fig.plot = h.Layout([left, right]).cols(2).opts(shared_axes=False)
    else:
        fig.plot = h.Layout([left])
    fig.summary = _summary("clipping", clip)
    fig.numbers = [("optimizer", str(a.get("optimizer"))), ("saturation threshold |g|", _fmt(thr)),
                   ("clip equivalent", _fmt(a.get("clip_equivalent"))),
                   ("largest |Δx|", _fmt(a.get("update_limit"))),
                   ("effective learning rate at h0", _fmt(a.get("effective_learning_rate"))),
                   ("gradients beyond the threshold", _fmt(100 * a.get("fraction_beyond", np.nan), 2) + " %")]
    return fig


def _recipe_plot(recipe: str, ds):
    """The recipe's own ``plot(ds)``, its panels lettered (a), (b), ... as the captions name them,
    two to a row."""
    h = hv()
    drawn = recipes_loader.load(recipe).plot(ds)
    panels = list(drawn) if isinstance(drawn, h.Layout) else [drawn]
    lettered = []
    for i, panel in enumerate(panels):
        title = h.Store.lookup_options("bokeh", panel, "plot").kwargs.get("title", "")
        lettered.append(panel.opts(title=f"({chr(ord('a') + i)}) {title}".rstrip(), clone=True))
    return h.Layout(lettered).cols(2).opts(shared_axes=False)


def figure_5(view: StoreView) -> Figure:
    fig = Figure("fig5", "Figure 5 · Learning-rate schedule", "schedule",
                 "(a) Effective learning rate −∂Δx/∂g along the autonomous trajectory h_{k+1} = "
                 "F(θ, h_k, 0) started from the initial state: the schedule the optimizer follows "
                 "with no gradient at all (warm-up, decay); the effective learning rate at the "
                 "recorded mean state is shown for comparison. (b) The share of that autonomous "
                 "motion that lies along the readout.")
    sch = _analysis(view, fig)
    if sch is None:
        return fig
    fig.plot = _recipe_plot("schedule", sch)
    a = sch.attrs
    fig.summary = _summary("schedule", sch)
    fig.numbers = [("optimizer", str(a.get("optimizer"))), ("η at step 0", _fmt(a.get("eta_start"))),
                   (f"η at step {a.get('steps', '?')}", _fmt(a.get("eta_end"))),
                   ("peak η (step)", f"{_fmt(a.get('eta_peak'))} ({a.get('eta_peak_step', '?')})"),
                   ("share of motion along the readout", _fmt(100 * a.get("readout_fraction", np.nan), 2) + " %")]
    return fig


def figure_6(view: StoreView) -> Figure:
    fig = Figure("fig6", "Figure 6 · Learning-rate adaptation", "adaptation",
                 "(a) Fixed points h*(g*) of F(θ, h, g*) as the held gradient g* sweeps the range of "
                 "recorded gradients on both signs (the S-curve), on the first two principal "
                 "components of the recorded states; colour is g*. (b) Effective learning rate at "
                 "those fixed points against |g*| on each arm: an optimizer that adapts its step "
                 "size lowers it where gradients are large.")
    ad = _analysis(view, fig)
    if ad is None:
        return fig
    fig.plot = _recipe_plot("adaptation", ad)
    a = ad.attrs
    fig.summary = _summary("adaptation", ad)
    fig.numbers = [("optimizer", str(a.get("optimizer"))), ("η at g* = 0", _fmt(a.get("eta_zero"))),
                   (f"η at g* = +{_fmt(a.get('g_max'))}", _fmt(a.get("eta_positive"))),
                   (f"η at g* = −{_fmt(a.get('g_max'))}", _fmt(a.get("eta_negative"))),
                   ("solves converged", f"{a.get('converged', '?')}/{a.get('solves', '?')}")]
    return fig


def _geometric_means(labels, counts, edges) -> list[tuple[str, str]]:
    """``(geometric mean |g|, label)`` of each histogram, as key numbers."""
    centres = np.log(gradients.bin_centres(edges))
    return [(f"geometric mean |g|, {lab}", _fmt(float(np.exp(np.sum(centres * c) / max(c.sum(), 1)))))
            for lab, c in zip(labels, counts)]


def figure_7(view: StoreView) -> Figure:
    fig = Figure("fig7", "Figure 7 · Layers and kinds", "layers",
                 "(a) Mean state trajectory of every tensor (over all of its parameters and the runs) "
                 "on the first two principal components. (b) Effective learning rate at those mean "
                 "states over steps. (c) Gradient-magnitude histograms by layer and kind (weight, "
                 "bias), over every parameter and step. Different tensors sit in different regions "
                 "of state space, so they get different effective learning rates.")
    lay = view.analysis("layers")
    if lay is not None:
        fig.plot = _recipe_plot("layers", lay)
        a = lay.attrs
        fig.summary = _summary("layers", lay)
        fig.numbers = [("optimizer", str(a.get("optimizer")))]
        fig.numbers += [(f"η at the last step, {k}", _fmt(v)) for k, v in dict(a.get("eta_last_kind", {})).items()]
        fig.numbers += _geometric_means(*recipes_loader.load("layers").layer_kind_histograms(lay))
        return fig
    # no /analysis/layers: (c) alone, from the recorded histograms
    fig.problem = (f"no /analysis/layers, so no per-tensor trajectories; run "
                   f"`{view.command('layers')}`")
    opt_name = view.default_optimizer()
    if opt_name in view.optimizers and view.has_variable(opt_name, "gradient_hist"):
        labels, counts, edges = gradients.histograms(view.group(opt_name), "layer & kind")
        fig.plot = hv().Layout([gradients.histogram_plot(labels, counts, edges, True, None,
                                                         title=f"(c) |g| by layer and kind ({opt_name})")]
                               ).cols(2).opts(shared_axes=False)
        fig.numbers += _geometric_means(labels, counts, edges)
    return fig


def figure_8(view: StoreView) -> Figure:
    fig = Figure("fig8", "Figure 8 · Emergence during meta-training", "emergence",
                 "The mechanisms analysed at every θ checkpoint of the store's meta-training history "
                 "(not in the paper). (a) The meta-objective of each checkpoint (validation when "
                 "meta-training kept one, else the mean training meta-loss since the previous "
                 "checkpoint) over the training meta-loss of every iteration. (b) Each mechanism's "
                 "strength rescaled from the first checkpoint (0) to the last (1): momentum (|λ| of "
                 "the momentum mode), the learning rate at the fixed point (Σα), clipping (share of "
                 "recorded gradients beyond the saturation threshold), the schedule (peak over "
                 "initial η without gradients), adaptation (η at the fixed point for the 99th "
                 "percentile gradient over η at g* = 0) and, on layered tasks, the spread of η over "
                 "tensors. (c–h) Each metric in its own units. The dotted line marks the recorded θ.")
    em = view.analysis(fig.recipe)
    if em is None:
        reason = emergence.no_history(view)
        fig.problem = (f"{reason}." if reason else
                       f"no /analysis/emergence; run `{view.command('emergence')}`")
        return fig
    fig.plot = _recipe_plot("emergence", em)
    a = em.attrs
    fig.summary = _summary("emergence", em)
    fig.numbers = [("optimizer", str(a.get("optimizer"))),
                   ("checkpoints (iterations)", f"{a.get('n_checkpoints')} ({a.get('first_iteration')}–"
                                                f"{a.get('last_iteration')})")]
    for label, name in emergence.PROGRESS:
        v = emergence.metric(em, name)
        if np.isfinite(v).any():
            when = dict(a.get("halfway") or {}).get(emergence.MECHANISM[name])
            fig.numbers.append((label, f"{_fmt(v[0])} → {_fmt(v[-1])}"
                                + (f", half-way by iteration {when}" if when is not None else "")))
    return fig


def figure_9(view: StoreView) -> Figure:
    fig = Figure("fig9", "Figure 9 · Distillation", "distill",
                 "Do the mechanisms found explain the learned optimizer? (not in the paper). An "
                 "optimizer built from the store's analyses (heavy-ball momentum fitted to the "
                 "linearised response, the autonomous schedule, a tanh clip at the measured "
                 "saturation threshold, the adaptation curve over a slow mean gradient), the "
                 "analysed optimizer and tuned momentum ran on the same held-out problems. (a) "
                 "The fraction of the analysed optimizer's advantage over tuned momentum (in the "
                 "meta-objective mean_k f_k/f_0) that the distilled optimizer recovers, and the "
                 "same with each mechanism removed, with the paired bootstrap's 95% interval; "
                 "dashed lines at 100% (the learned optimizer) and 0% (tuned momentum). (b) What "
                 "each mechanism carries: the drop when it is removed. (c) Mean loss curves. "
                 "(d–f) The distilled optimizer's schedule, clip and adaptation curve.")
    ds = view.analysis(fig.recipe)
    if ds is None:
        reason = recipes_loader.load("distill").not_applicable(view.tree)
        fig.problem = (f"{reason}." if reason else
                       f"no /analysis/distill; run `{view.command('distill')}`")
        return fig
    fig.plot = _recipe_plot("distill", ds)
    a = ds.attrs
    fig.summary = _summary("distill", ds)
    mo = dict(a.get("meta_objective") or {})
    fig.numbers = [("optimizer", str(a.get("optimizer"))), ("held-out problems", str(a.get("problems"))),
                   ("meta-objective: learned, distilled, tuned momentum",
                    ", ".join(_fmt(mo.get(k)) for k in ("learned", "distilled", "tuned_momentum"))),
                   ("recovered (95% interval)", f"{_fmt(100 * a.get('recovered', np.nan))}% "
                    f"({_fmt(100 * a.get('recovered_low', np.nan))}% to {_fmt(100 * a.get('recovered_high', np.nan))}%)")]
    fig.numbers += [(f"carried by {k}", f"{_fmt(100 * v)}%") for k, v in dict(a.get("carried") or {}).items()]
    return fig


FIGURES = (figure_1, figure_3, figure_4, figure_5, figure_6, figure_7, figure_8, figure_9)
