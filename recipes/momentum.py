"""Momentum (paper Fig. 3): slow modes of the state dynamics, their timescales and learning rates.

1. PCA of the recorded states (one streaming pass) and the total variance of the state across
   runs at each step.
2. Fixed points of F(θ, h, 0) from states sampled along the recorded trajectories (a forward
   warm-up, then batched Levenberg–Marquardt), merged; a solution counts if it is within
   tolerance and in the state's range, and each fixed point is checked for stability (spectral
   radius, and forward iteration pulling perturbations back: ``attractor``). Forward iteration
   from every start (``forward_steps``) shows whether it settles at a reported fixed point.
3. The linearisation at each fixed point: eigenvalues λ_i of ∂F/∂h, momentum timescales
   β_i = |λ_i| and per-mode learning rates α_i (see :mod:`lopt_trace.analysis.linearization`),
   and the one-step linearisation error along recorded trajectories.

The **momentum mode** reported is the slowest mode of the main fixed point (the one most starts
reach) among the modes that carry learning rate (|α_i| ≥ 1% of Σ|α_i|); modes that live on held
state components (a step count: λ = 1, a clock) are never reported. It is compared with the
tuned heavy-ball β of the same task and, on linear regression, with the optimal heavy-ball
parameters for the Hessian eigenvalues in [λmin, λmax]:
α* = 4/(√λmin + √λmax)², β* = ((√λmax − √λmin)/(√λmax + √λmin))².

    lopt-trace analyze momentum STORE [--optimizer NAME] [-p n_starts=256]
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis import (
    fixed_points,
    group_pca,
    linearization_error,
    linearize,
    project,
    rebuild,
    run_group,
    sample_states,
    select_optimizer,
)
from lopt_trace.analysis.conventions import attrs
from lopt_trace.analysis.fixed_points import LEFT_RANGE, STALLED, free_mask
from lopt_trace.analysis.linearization import NONLINEAR_ERROR as NONLINEAR
from lopt_trace.analysis.linearization import held_modes, momentum_mode
from lopt_trace.analysis.rebuild import baseline_hyperparameters
from lopt_trace.analysis.results import run_recipe
from lopt_trace.analysis.sampling import initial_state, recorded_pairs

NAME = "momentum"
VERSION = "3"  # 2: fixed points by range and stability (issue #16), not by an outlier box;
#              3: held modes skipped, dominant mode reported


def optimal_heavy_ball(lambda_min: float, lambda_max: float) -> tuple[float, float]:
    """(α*, β*) of heavy-ball momentum for a quadratic with Hessian eigenvalues in [λmin, λmax]."""
    a, b = np.sqrt(lambda_min), np.sqrt(lambda_max)
    return float(4.0 / (a + b) ** 2), float(((b - a) / (b + a)) ** 2)


def compute(tree: xr.DataTree, optimizer: str | None = None, n_starts: int = 256,
            noise: float = 0.0, seed: int = 0, tol: float = 1e-9, max_iter: int = 200,
            n_error: int = 512, forward_steps: int = 2000) -> xr.Dataset:
    """PCA, fixed points at g* = 0, their modes, and the linearisation error (see module doc)."""
    name = select_optimizer(tree, optimizer)
    opt, theta = rebuild(tree, name)
    ds = run_group(tree, name)
    pcs, tv = group_pca(tree, name)  # one pass over the states for both
    starts = sample_states(ds["state"], n_starts, seed)
    h0 = initial_state(ds).expand_dims(start=[starts.sizes["start"]])
    starts = xr.concat([starts.drop_vars([c for c in starts.coords if c not in ("start", "unit")]), h0],
                       dim="start")
    fps = fixed_points(opt, theta, starts, 0.0, noise=noise, seed=seed, tol=tol,
                       max_iter=max_iter, forward_steps=forward_steps).isel(g_star=0, drop=True)
    found = fps["count"] > 0
    unique = fps["fixed_point_state"].isel(fixed_point=np.flatnonzero(found.values))
    if unique.sizes["fixed_point"] == 0:  # nothing converged: linearise at the best attempt
        best = int(np.nanargmin(fps["q"].values))
        unique = fps["state"].isel(start=[best]).rename(start="fixed_point").assign_coords(fixed_point=[0])
    lin = linearize(opt, theta, unique, 0.0)
    h, g = recorded_pairs(ds, n_error, seed)
    err = linearization_error(opt, theta, h, g, unique.isel(fixed_point=0), 0.0)

    per_fp = ["fixed_point_state", "fixed_point_q", "count", "spectral_radius", "stable",
              "attractor", "pull"]
    out = xr.merge([pcs, fps.drop_vars(per_fp), lin.rename({"effective_learning_rate":
                                                            "fixed_point_learning_rate"})],
                   combine_attrs="drop")
    k = unique.sizes["fixed_point"]
    out["fixed_point_state"] = unique
    for v in per_fp[1:]:
        out[v] = fps[v].isel(fixed_point=slice(0, k))
    out["fixed_point_projection"] = project(unique, pcs)
    out["total_variance"] = tv
    out["linearization_error"] = err.assign_attrs(attrs("relative one-step linearisation error "
                                                        "at the main fixed point"))
    out["state_projection_h0"] = project(initial_state(ds), pcs)

    beta0, alpha0 = lin["beta"].isel(fixed_point=0).values, lin["alpha"].isel(fixed_point=0).values
    held0 = held_modes(lin, free_mask(opt) > 0)[0]
    i = momentum_mode(beta0, alpha0, exclude=held0)
    j = dominant_mode(alpha0, exclude=held0)
    abs_alpha = np.abs(np.nan_to_num(np.where(held0, 0.0, alpha0)))
    info = {
        "optimizer": name,
        "momentum_mode": i,
        "dominant_mode": j,
        "dominant_beta": float(beta0[j]),
        "dominant_timescale": float(lin["timescale"].isel(fixed_point=0, mode=j)),
        "dominant_alpha": float(alpha0[j]),
        "dominant_share": float(abs_alpha[j] / abs_alpha.sum()) if abs_alpha.sum() > 0 else 0.0,
        "slowest_beta": float(beta0[i]),
        "slowest_timescale": float(lin["timescale"].isel(fixed_point=0, mode=i)),
        "slowest_alpha": float(alpha0[i]),
        "slowest_complex": bool(abs(float(lin["eigenvalue_imag"].isel(fixed_point=0, mode=i))) > 1e-12),
        "total_alpha": float(np.nansum(alpha0)),
        "n_fixed_points": int(found.sum()),
        "n_attractors": int((fps["attractor"] & found).sum()),
        "n_left_range": int((fps["status"] == LEFT_RANGE).sum()),
        "n_stalled": int((fps["status"] == STALLED).sum()),
        "best_q": float(np.nanmin(fps["q"].values)),
        "n_converged": int(fps["n_converged"]),
        "n_starts": int(starts.sizes["start"]),
        "linearization_error_median": float(np.nanmedian(err.values)) if err.size else float("nan"),
    }
    if forward_steps:
        info["forward_missed"] = int(fps["forward_missed"])
        info["forward_settled"] = int(fps["forward_settled"])
    tuned = baseline_hyperparameters(tree, "momentum")
    if tuned and "beta" in tuned:
        info["tuned_beta"] = tuned["beta"]
        info["tuned_learning_rate"] = tuned.get("learning_rate", float("nan"))
    cfg = tree.attrs.get("task_config") or {}
    if tree.attrs.get("task") == "linear_regression" and "lambda_min" in cfg:
        a_opt, b_opt = optimal_heavy_ball(cfg["lambda_min"], cfg["lambda_max"])
        info["optimal_alpha"], info["optimal_beta"] = a_opt, b_opt
    out.attrs = info
    return out


def dominant_mode(alpha: np.ndarray, exclude: np.ndarray | None = None) -> int:
    """Index of the mode ``(mode,)`` that carries the most learning rate (largest |α_i|), never one
    flagged in ``exclude``."""
    a = np.abs(np.nan_to_num(np.asarray(alpha, dtype=np.float64)))
    if exclude is not None and not np.all(exclude):
        a = np.where(exclude, -1.0, a)
    return int(np.argmax(a))


def summary(ds: xr.Dataset) -> str:
    """One line: the dominant mode (most learning rate) and the slowest mode carrying learning
    rate, with |λ|, timescale and α; a warning when the linearisation does not hold; the tuned
    (and optimal) β."""
    a = ds.attrs
    text = "momentum: "
    if "dominant_mode" in a and a["dominant_mode"] != a["momentum_mode"]:
        text += (f"dominant mode |λ| = {a['dominant_beta']:.2f} (timescale {a['dominant_timescale']:.1f} "
                 f"steps), α = {a['dominant_alpha']:.3g} ({100 * a['dominant_share']:.0f}% of Σ|α|); ")
        text += "slowest mode"
    elif "dominant_mode" in a:
        text += f"dominant and slowest mode ({100 * a['dominant_share']:.0f}% of Σ|α|)"
    else:
        text += "slowest mode"
    text += (f" |λ| = {a['slowest_beta']:.2f} "
             f"(timescale {a['slowest_timescale']:.1f} steps), α = {a['slowest_alpha']:.3g}")
    if a.get("slowest_complex"):
        text += " (complex pair)"
    if a["n_fixed_points"]:
        text += f" [{a['optimizer']}, {a['n_fixed_points']} fixed point(s)"
    else:
        text += f" [{a['optimizer']}, no fixed point: linearised at the best attempt, q = {a['best_q']:.2g}"
    err = a.get("linearization_error_median", np.nan)
    if np.isfinite(err):
        text += f", linearisation error {100 * err:.2g}%"
    text += "]"
    if np.isfinite(err) and err > NONLINEAR:
        text += (f"; the linear description does not hold here (median one-step error "
                 f"{100 * err:.0f}% > {100 * NONLINEAR:.0f}%): read these modes as a rough guide only")
    if "tuned_beta" in a:
        text += f"; best tuned momentum β = {a['tuned_beta']:.2f}"
    if "optimal_beta" in a:
        text += f"; optimal heavy ball α* = {a['optimal_alpha']:.3g}, β* = {a['optimal_beta']:.3f}"
    return text


def plot(ds: xr.Dataset):
    """Eigenvalues in the complex plane (unit circle), explained variance, variance across runs."""
    from lopt_trace.analysis.plotting import holoviews  # HoloViews only when drawing, not computing

    hv = holoviews()

    t = np.linspace(0, 2 * np.pi, 200)
    circle = hv.Curve((np.cos(t), np.sin(t)), "Re λ", "Im λ").opts(color="gray")
    pts = hv.Scatter((ds["eigenvalue_real"].values.ravel(), ds["eigenvalue_imag"].values.ravel(),
                      ds["alpha"].values.ravel()), "Re λ", ["Im λ", "α"], label="modes")
    eig = (circle * pts).opts(title="eigenvalues of ∂F/∂h at the fixed points")
    ev = hv.Curve((ds["component"].values + 1, ds["explained_variance_ratio"].values),
                  "component", "explained variance ratio").opts(title="PCA of states")
    tv = hv.Curve((ds["step"].values, ds["total_variance"].values), "step",
                  "variance across runs").opts(title="total state variance across runs")
    return (eig + ev + tv).cols(3)


def run(store, **params) -> xr.Dataset:
    """Compute, write to ``/analysis/momentum`` of ``store``, return the result."""
    return run_recipe(store, NAME, VERSION, compute, params)
