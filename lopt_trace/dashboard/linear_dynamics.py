"""Linear dynamics tab: the linearisation of F at its fixed points (paper Fig. 3b, c).

From ``/analysis/momentum``: the eigenvalues λ_i of ∂F/∂h in the complex plane with the unit
circle, coloured by each mode's learning rate α_i, and α_i against the momentum timescale
β_i = |λ_i|, with the tuned heavy-ball momentum's (α, β) marked (a momentum optimizer is one mode
with λ = β and α = its learning rate).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis.linearization import NONLINEAR_ERROR as NONLINEAR
from lopt_trace.analysis.rebuild import baseline_hyperparameters
from lopt_trace.dashboard._common import (HEIGHT, WIDTH, hv, missing, notice, optimizer_select, pn,
                                          widget)


def modes_table(mom: xr.Dataset, fixed_point: int = 0) -> dict[str, np.ndarray]:
    """Per-mode arrays at one fixed point: ``re``, ``im``, ``beta``, ``alpha``, ``timescale``."""
    d = mom.isel(fixed_point=fixed_point)
    out = {"re": d["eigenvalue_real"].values, "im": d["eigenvalue_imag"].values,
           "beta": d["beta"].values, "alpha": d["alpha"].values}
    out["timescale"] = d["timescale"].values if "timescale" in d else 1.0 / (1.0 - out["beta"])
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def tuned_momentum(view) -> dict | None:
    """The tuned (or recorded) heavy-ball momentum's learning rate and β for the store's task."""
    hp = baseline_hyperparameters(view.tree, "momentum")
    if hp and "beta" in hp and "learning_rate" in hp:
        return {"alpha": float(hp["learning_rate"]), "beta": float(hp["beta"])}
    return None


def eigenvalue_plot(m: dict, title: str = "eigenvalues of ∂F/∂h"):
    """λ_i in the complex plane, coloured by α_i, with the unit circle."""
    h = hv()
    t = np.linspace(0, 2 * np.pi, 361)
    circle = h.Curve((np.cos(t), np.sin(t)), "Re λ", "Im λ", label="unit circle").opts(
        color="gray", line_dash="dashed")
    pts = h.Points((m["re"], m["im"], m["alpha"], m["beta"]), ["Re λ", "Im λ"], ["α", "β"]).opts(
        color="α", cmap="viridis", size=9, colorbar=True, line_color="black", tools=["hover"], clabel="α (mode learning rate)")
    return (circle * pts).opts(title=title, frame_width=HEIGHT - 40, frame_height=HEIGHT - 40,
                               xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), show_grid=True)


def alpha_beta_plot(m: dict, tuned: dict | None, optimal: tuple | None = None,
                    title: str = "per-mode learning rate against momentum"):
    """α_i against β_i; the momentum baseline's (α, β) (the store's, else the bundled tuned one)
    as a red star, the optimal heavy ball as a
    green diamond when known (linear regression)."""
    h = hv()
    layers = [h.Points((m["beta"], m["alpha"], m["timescale"]), ["β = |λ|", "α"], ["timescale"],
                       label="modes").opts(color="#1f77b4", size=9, tools=["hover"])]
    if tuned is not None:
        layers.append(h.Points(([tuned["beta"]], [tuned["alpha"]]), ["β = |λ|", "α"],
                               label="momentum baseline").opts(color="red", marker="star", size=18,
                                                            line_color="black"))
    if optimal is not None:
        layers.append(h.Points(([optimal[1]], [optimal[0]]), ["β = |λ|", "α"],
                               label="optimal heavy ball").opts(color="green", marker="diamond", size=14))
    return h.Overlay(layers).opts(title=title, width=WIDTH + 160, height=HEIGHT + 20, show_grid=True,
                                  legend_position="right")


def key_numbers(mom: xr.Dataset) -> str:
    a = mom.attrs
    parts = []
    if "dominant_mode" in a and a["dominant_mode"] != a.get("momentum_mode"):
        parts.append(f"dominant mode |λ| = **{a['dominant_beta']:.3f}**, α = **{a['dominant_alpha']:.3g}** "
                     f"({100 * a['dominant_share']:.0f}% of Σ|α|)")
    parts += [f"slowest mode |λ| = **{a.get('slowest_beta', np.nan):.3f}** (timescale "
             f"{a.get('slowest_timescale', np.nan):.1f} steps), α = **{a.get('slowest_alpha', np.nan):.3g}**",
             f"{a.get('n_fixed_points', '?')} fixed point(s) from {a.get('n_starts', '?')} starts"]
    err = a.get("linearization_error_median", np.nan)
    if np.isfinite(err):
        parts.append(f"median one-step linearisation error {100 * err:.2g}%")
        if err > NONLINEAR:
            parts.append(f"**the linear description does not hold here** (error > {100 * NONLINEAR:.0f}%)")
    if "tuned_beta" in a:
        parts.append(f"tuned momentum β = {a['tuned_beta']:.3g}, α = {a.get('tuned_learning_rate', np.nan):.3g}")
    return " · ".join(parts)


def build(view, rebuild=None):
    """The Linear dynamics tab."""
    panel = pn()
    if not view.optimizers:
        return notice("No optimizer groups under `/runs`: nothing to show.", "danger")
    opt = optimizer_select(view)
    mom_for = view.analysis_optimizer("momentum")
    if mom_for in view.optimizers:
        opt.value = mom_for
    fp = widget(panel.widgets.IntSlider, "fixed point", start=0, end=1, value=0, width=240)
    tuned = tuned_momentum(view)

    def content(name, i):
        mom = view.analysis("momentum", name)
        if mom is None:
            other = view.analysis_optimizer("momentum")
            note = [notice(f"`/analysis/momentum` is about `{other}`; choose it above, or compute it "
                           f"for `{name}`.")] if other else []
            return panel.Column(*note, missing(view, "momentum", "The linearisation at the fixed points",
                                               name, rebuild))
        n = mom.sizes.get("fixed_point", 1)
        fp.end = max(n - 1, 1)
        fp.disabled = n <= 1
        i = min(int(i), n - 1)
        m = modes_table(mom, i)
        a = mom.attrs
        optimal = (a["optimal_alpha"], a["optimal_beta"]) if "optimal_alpha" in a else None
        q = float(mom["fixed_point_q"].isel(fixed_point=i)) if "fixed_point_q" in mom else np.nan
        return panel.Column(
            panel.pane.Markdown(key_numbers(mom) + f" · showing fixed point {i} (q = {q:.2g})"),
            panel.Row(panel.pane.HoloViews(eigenvalue_plot(m, f"eigenvalues of ∂F/∂h at fixed point {i}"),
                                           name="eigenvalues"),
                      panel.pane.HoloViews(alpha_beta_plot(m, tuned, optimal), name="alpha-beta")))

    return panel.Column(panel.Row(opt, fp), panel.bind(content, opt, fp), name="Linear dynamics")
