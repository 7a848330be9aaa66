"""Update functions tab: Δx(g) = readout(θ, F(θ, h, g)) at a chosen recorded state, against SGD's
update at its tuned learning rate, and the effective learning rate −∂Δx/∂g along the chosen
trajectory (paper Figs. 4 and 5).

The state is picked with widgets: the run, the tensor, the parameter within the tensor (among the
stored ones) and the position along the trajectory (the step). F and readout are rebuilt from the
θ stored with the group; only that one trajectory is read.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis.rebuild import baseline_hyperparameters
from lopt_trace.analysis.sampling import analysis_start, gradient_quantile
from lopt_trace.analysis.update_functions import effective_learning_rate, update_function
from lopt_trace.dashboard._common import (HEIGHT, WIDTH, hv, notice, optimizer_select, pn, strings,
                                          widget)


def sgd_learning_rate(view) -> tuple[float | None, str]:
    """SGD's learning rate for this task: the store's ``/runs/sgd`` θ, else the bundled tuned
    value, else None."""
    hp = baseline_hyperparameters(view.tree, "sgd")
    if hp and "learning_rate" in hp:
        src = "recorded sgd" if "sgd" in view.optimizers else "bundled tuned sgd"
        return float(hp["learning_rate"]), src
    return None, ""


def gradient_extent(view, name: str) -> float:
    """Half-width of the gradient grid: the clipping analysis' ``g_max`` when there is one,
    else twice the 99.9th percentile of |g| from the exact histogram."""
    clip = view.analysis("clipping", name)
    if clip is not None and np.isfinite(clip.attrs.get("g_max", np.nan)):
        return float(clip.attrs["g_max"])
    try:
        q = gradient_quantile(view.group(name), 0.999)
    except Exception:  # no histogram and no gradients
        q = float("nan")
    return 2.0 * q if np.isfinite(q) and q > 0 else 1.0


def params_of(view, name: str, tensor: str) -> np.ndarray:
    """Positions (along ``param``) of the stored parameters of ``tensor``."""
    key = ("param_tensor", name)
    if key not in view.cache:
        view.cache[key] = np.array(strings(view.group(name)["param_tensor"].values), dtype=object)
    return np.flatnonzero(view.cache[key] == tensor)


def trajectory(view, name: str, run, param: int) -> xr.DataArray:
    """The stored states ``(step, unit)`` of one parameter in one run (only these are read)."""
    st = view.group(name)["state"].sel(run=run).isel(param=int(param))
    return st.astype(np.float64).compute()


def update_curves(view, name: str, state: xr.DataArray, g_max: float, num: int = 201):
    """``(g, Δx at the state, Δx at h0)``."""
    opt, theta = view.rebuild(name)
    g = np.linspace(-g_max, g_max, num)
    both = xr.concat([state.drop_vars([c for c in state.coords if c != "unit"]),
                      analysis_start(view.group(name), opt)], dim="which")
    out = update_function(opt, theta, both, g)
    return g, np.asarray(out.isel(which=0).values), np.asarray(out.isel(which=1).values)


def eta_along(view, name: str, states: xr.DataArray) -> np.ndarray:
    opt, theta = view.rebuild(name)
    return np.asarray(effective_learning_rate(opt, theta, states).values)


def update_plot(g, dx, dx0, sgd_lr: float | None, threshold: float | None = None,
                g_seen: float | None = None, title: str = "update function"):
    """Δx(g) at the state, at h0 (dashed) and SGD's −α g (dotted); ± saturation threshold."""
    h = hv()
    layers = [h.Curve((g, dx), "g", "Δx", label="at the chosen state").opts(color="#1f77b4", line_width=3),
              h.Curve((g, dx0), "g", "Δx", label="at the initial state").opts(color="gray", line_dash="dashed")]
    if sgd_lr is not None:
        layers.append(h.Curve((g, -sgd_lr * g), "g", "Δx", label=f"SGD, α = {sgd_lr:.3g}")
                      .opts(color="black", line_dash="dotted"))
    if threshold is not None and np.isfinite(threshold):
        layers += [h.VLine(s * threshold).opts(color="red", line_dash="dashed", line_width=1) for s in (-1, 1)]
    if g_seen is not None and np.isfinite(g_seen):
        layers.append(h.VLine(float(g_seen)).opts(color="orange", line_width=1))
    # the y range follows the learned update, not SGD's line (which may be far steeper)
    ys = np.concatenate([dx, dx0])
    ys = ys[np.isfinite(ys)]
    lo, hi = (float(ys.min()), float(ys.max())) if ys.size else (-1.0, 1.0)
    pad = 0.1 * (hi - lo or abs(hi) or 1.0)
    return h.Overlay(layers).opts(title=title, width=WIDTH, height=HEIGHT, ylim=(lo - pad, hi + pad),
                                  legend_position="bottom_left", show_grid=True, tools=["hover"])


def eta_plot(steps, eta, sgd_lr: float | None, current=None, schedule: xr.Dataset | None = None,
             title: str = "effective learning rate −∂Δx/∂g along the trajectory"):
    h = hv()
    layers = [h.Curve((steps, eta), "step", "effective learning rate", label="this trajectory")
              .opts(color="#1f77b4", line_width=2)]
    if schedule is not None and "auto_effective_learning_rate" in schedule:
        layers.append(h.Curve((schedule["auto_step"].values, schedule["auto_effective_learning_rate"].values),
                              "step", "effective learning rate", label="without gradients (schedule)")
                      .opts(color="green", line_dash="dashed"))
    if sgd_lr is not None:
        layers.append(h.HLine(sgd_lr).opts(color="black", line_dash="dotted"))
    if current is not None:
        layers.append(h.VLine(float(current)).opts(color="orange", line_width=1))
    values = [np.asarray(eta, dtype=float)]
    if schedule is not None and "auto_effective_learning_rate" in schedule:
        values.append(np.asarray(schedule["auto_effective_learning_rate"].values, dtype=float))
    values = np.concatenate(values + [np.atleast_1d(sgd_lr if sgd_lr is not None else np.nan)])
    values = values[np.isfinite(values)]
    logy = bool(values.size and np.all(values > 0) and values.max() > 20 * values.min())
    return h.Overlay(layers).opts(title=title, width=WIDTH, height=HEIGHT, legend_position="bottom_right",
                                  show_grid=True, tools=["hover"], logy=logy)


def build(view, rebuild=None):
    """The Update functions tab."""
    panel = pn()
    names = [n for n in view.optimizers if view.has_variable(n, "state")]
    if not names:
        return notice("No optimizer group with recorded states: nothing to show.", "danger")
    opt = optimizer_select(view, options=names)
    run = widget(panel.widgets.Select, "run", width=140)
    tensor = widget(panel.widgets.Select, "tensor", width=200)
    param = widget(panel.widgets.IntSlider, "parameter (within the tensor's stored ones)", start=0, end=1,
                                    value=0, width=260)
    step = widget(panel.widgets.DiscreteSlider, "trajectory position (step)", options=[0], value=0, width=320)

    def on_optimizer(name):
        ds = view.group(name)
        run.options = [int(r) for r in ds["run"].values]
        run.value = run.options[0]
        tensors = [t for t in strings(ds["tensor"].values) if len(params_of(view, name, t))]
        tensor.options = tensors
        tensor.value = tensors[0]
        steps = [int(s) for s in ds["step"].values]
        step.options = steps
        step.value = steps[len(steps) // 2]
        on_tensor(tensor.value)

    def on_tensor(t):
        n = len(params_of(view, opt.value, t))
        param.end = max(n - 1, 1)
        param.disabled = n <= 1
        param.value = min(param.value, n - 1)

    opt.param.watch(lambda e: on_optimizer(e.new), "value")
    tensor.param.watch(lambda e: on_tensor(e.new), "value")
    on_optimizer(opt.value)
    sgd_lr, sgd_src = sgd_learning_rate(view)

    def content(name, r, t, p, k):
        ds = view.group(name)
        if r not in ds["run"].values or k not in ds["step"].values or t not in ds["tensor"].values:
            return panel.pane.Markdown("…")  # widgets are being updated for another optimizer
        idx = params_of(view, name, t)
        if not len(idx):
            return notice(f"no stored parameters of {t}")
        pos = int(idx[min(int(p), len(idx) - 1)])
        traj = trajectory(view, name, r, pos)
        state = traj.sel(step=k)
        g_max = gradient_extent(view, name)
        g, dx, dx0 = update_curves(view, name, state, g_max)
        clip = view.analysis("clipping", name)
        thr = None if clip is None else float(clip.attrs.get("threshold", np.nan))
        g_seen = float(view.group(name)["gradient"].sel(run=r, step=k).isel(param=pos).values)
        eta = eta_along(view, name, traj)
        idx_in_tensor = int(view.group(name)["param_index"].isel(param=pos).values)
        left = update_plot(g, dx, dx0, sgd_lr, thr, g_seen,
                           title=f"Δx(g): {name}, run {r}, step {k}, {t}[{idx_in_tensor}]")
        right = eta_plot(traj["step"].values, eta, sgd_lr, k, view.analysis("schedule", name))
        lines = [f"effective learning rate here: **{eta[list(traj['step'].values).index(k)]:.4g}**"
                 f" · gradient recorded at this step (orange): {g_seen:.3g}"]
        lines.append(f"SGD at α = {sgd_lr:.3g} ({sgd_src}), dotted" if sgd_lr is not None
                     else "no SGD learning rate in the store or bundled for this task")
        if thr is None:
            lines.append(f"saturation threshold: run `{view.command('clipping', name)}` to mark it")
        elif np.isfinite(thr):
            lines.append(f"saturation threshold ±{thr:.3g} (red, from /analysis/clipping)")
        else:
            lines.append("no saturation within the gradient range (/analysis/clipping)")
        return panel.Column(panel.pane.Markdown(" · ".join(lines)),
                            panel.Row(panel.pane.HoloViews(left, name="update-function"),
                                      panel.pane.HoloViews(right, name="effective-learning-rate")))

    return panel.Column(panel.Row(opt, run, tensor), panel.Row(param, step),
                        panel.bind(content, opt, run, tensor, param, step), name="Update functions")
