"""Learning-rate adaptation (paper Fig. 6): the fixed points as g* sweeps the gradients' range.

With the gradient held at g*, the state settles at h*(g*). Sweeping |g*| from 0 to the
``quantile`` (default 99%) of the recorded |g| (over every parameter and step) on both signs
traces the S-curve; it is shown projected on the principal components of the recorded states.
Each solve starts from the previous fixed point moved by a few forward iterations of F at the
new g*, so the curve follows the attractor the dynamics settle at; each point's stability is
checked (``spectral_radius``; ``attractor``: forward iteration pulls perturbations back).
Along each arm, the effective learning rate at the fixed point shows whether the optimizer
lowers its step size where gradients are large (see :mod:`lopt_trace.analysis.adaptation`).

    lopt-trace analyze adaptation STORE [--optimizer NAME] [-p quantile=0.99 -p num=41]
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis import group_pca, project, rebuild, run_group, s_curve, select_optimizer
from lopt_trace.analysis.conventions import strings
from lopt_trace.analysis.fixed_points import LEFT_RANGE
from lopt_trace.analysis.results import run_recipe
from lopt_trace.analysis.sampling import analysis_start, gradient_quantile

NAME = "adaptation"
VERSION = "2"  # 2: fixed points by range and stability (issue #16), not by an outlier box


def compute(tree: xr.DataTree, optimizer: str | None = None, quantile: float = 0.99,
            num: int = 41, g_max: float | None = None, n_components: int = 3,
            tol: float = 1e-9, max_iter: int = 200) -> xr.Dataset:
    """The S-curve h*(g*) on both arms, its projection on the PCs, and η along it."""
    name = select_optimizer(tree, optimizer)
    opt, theta = rebuild(tree, name)
    ds = run_group(tree, name)
    if g_max is None:
        g_max = gradient_quantile(ds, quantile)
        g_max = g_max if np.isfinite(g_max) and g_max > 0 else 1.0
    out = s_curve(opt, theta, analysis_start(ds, opt), g_max, num, tol=tol, max_iter=max_iter)
    pcs, _ = group_pca(tree, name, n_components)
    out["projection"] = project(out["fixed_point"], pcs)
    out["components"] = pcs["components"]
    out["explained_variance_ratio"] = pcs["explained_variance_ratio"]
    eta = out["effective_learning_rate"]
    e0 = float(eta.isel(g_abs=0, arm=0))
    info = {"optimizer": name, "g_max": float(g_max), "quantile": float(quantile),
            "eta_zero": e0, "converged": int(out["converged"].sum()),
            "solves": int(out["converged"].size), "attractors": int(out["attractor"].sum()),
            "left_range": int((out["status"] == LEFT_RANGE).sum())}
    for arm in ("negative", "positive"):
        info[f"eta_{arm}"] = float(eta.sel(arm=arm).isel(g_abs=-1))
        info[f"monotone_{arm}"] = bool(np.all(np.diff(np.abs(eta.sel(arm=arm).values)) <= 1e-12))
    out.attrs = info
    return out


def summary(ds: xr.Dataset) -> str:
    """One line: η at g* = 0 and at the largest |g*| on both arms."""
    a = ds.attrs
    e0 = a["eta_zero"]
    if not np.isfinite(e0):
        return (f"adaptation: no finite effective learning rate at the g* = 0 fixed point (η = {e0}); "
                f"at |g*| = {a['g_max']:.3g} it is {a['eta_positive']:.3g} (+) and "
                f"{a['eta_negative']:.3g} (−); {a['converged']}/{a['solves']} solves converged "
                f"[{a['optimizer']}]")

    def ratio(x):
        return f"×{x / e0:.3g}" if e0 else "n/a"

    pos, neg = abs(a["eta_positive"]), abs(a["eta_negative"])
    if max(abs(pos - abs(e0)), abs(neg - abs(e0))) <= 1e-3 * abs(e0):
        trend = "stays"
    elif pos < abs(e0) and neg < abs(e0):
        trend = "falls"
    elif pos > abs(e0) and neg > abs(e0):
        trend = "rises"
    else:
        trend = "changes"
    tail = (f"({100 * a['quantile']:.3g}th percentile of |g|); {a['converged']}/{a['solves']} "
            f"solves converged [{a['optimizer']}]")
    if trend == "stays":
        return (f"adaptation: effective LR at the fixed point stays at {e0:.3g} for |g*| up to "
                f"{a['g_max']:.3g} " + tail)
    return (f"adaptation: effective LR at the fixed point {trend} from {e0:.3g} (g* = 0) to "
            f"{a['eta_positive']:.3g} ({ratio(a['eta_positive'])}) at g* = +{a['g_max']:.3g} and "
            f"{a['eta_negative']:.3g} ({ratio(a['eta_negative'])}) at g* = −{a['g_max']:.3g} " + tail)


#: colour of each arm of the S-curve
ARM_COLOURS = {"negative": "#1f77b4", "positive": "#d62728"}


def plot(ds: xr.Dataset):
    """The S-curve on the first two PCs (points coloured by g*), and η against |g*| on both arms
    (the report's Fig. 6)."""
    from lopt_trace.analysis.plotting import holoviews  # HoloViews only when drawing, not computing

    hv = holoviews()
    s_layers, e_layers = [], []
    for arm in strings(ds["arm"].values):
        p = ds["projection"].sel(arm=arm)
        g_star = ds["g_star"].sel(arm=arm).values
        x = p.isel(component=0).values
        y = p.isel(component=1).values if p.sizes["component"] > 1 else g_star
        ylabel = "PC 2" if p.sizes["component"] > 1 else "g*"
        s_layers.append(hv.Curve((x, y), "PC 1", ylabel, label=f"g* {arm}").opts(color=ARM_COLOURS.get(arm),
                                                                                line_width=2))
        s_layers.append(hv.Points((x, y, g_star), ["PC 1", ylabel], ["g*"]).opts(
            color="g*", cmap="coolwarm", size=7, colorbar=arm == "positive", tools=["hover"]))
        e_layers.append(hv.Curve((ds["g_abs"].values, ds["effective_learning_rate"].sel(arm=arm).values), "|g*|",
                                 "effective learning rate", label=f"g* {arm}").opts(color=ARM_COLOURS.get(arm),
                                                                                   line_width=2))
    left = hv.Overlay(s_layers).opts(title="fixed points h*(g*): the S-curve", width=540, height=380,
                                     show_grid=True, legend_position="top_left")
    right = hv.Overlay(e_layers).opts(title="effective learning rate along the arms", width=480, height=380,
                                      show_grid=True, legend_position="top_right")
    return (left + right).cols(2).opts(shared_axes=False)


def run(store, **params) -> xr.Dataset:
    """Compute, write to ``/analysis/adaptation`` of ``store``, return the result."""
    return run_recipe(store, NAME, VERSION, compute, params)
