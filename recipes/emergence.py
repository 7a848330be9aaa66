"""Emergence: when, during meta-training, did each mechanism appear?

The store's ``/meta_train`` history holds θ at every checkpoint of meta-training (see
docs/store.md). This recipe runs the mechanism analyses on each checkpoint's θ, with the
optimizer configuration of the group the history belongs to, and tabulates one row per
checkpoint:

- the meta-objective (the validation score when meta-training kept one, else the mean training
  meta-loss since the previous checkpoint: :func:`lopt_trace.analysis.checkpoint_objective`);
- momentum (as the ``momentum`` recipe): fixed points of F(θ, h, 0) from states sampled along the
  trajectories plus the checkpoint's h0, and at the main one (most starts) the momentum mode's
  |λ|, timescale and α, and Σα (the effective learning rate there);
- clipping (as ``clipping``): the saturation threshold and clip equivalent at the checkpoint's
  h0, and the fraction of the recorded gradients beyond it;
- schedule (as ``schedule``): the effective learning rate along the autonomous trajectory from
  h0 for the recorded number of steps; its peak and final value over its initial one;
- adaptation (as ``adaptation``): the effective learning rate at the fixed point h*(g*) at
  g* = ±(``quantile`` of the recorded |g|) over the one at g* = 0;
- layers (tasks with more than one tensor): the effective learning rate at each tensor's mean
  state after the last step, its spread over tensors (largest / smallest) and bias / weight.

The states come from the recording. With every step recorded (``every`` = 1) the recorded
gradients of up to ``replay_params_per_tensor`` stored parameters per tensor are replayed through
each checkpoint's F from its own h0 (open loop: the gradients stay those of the recorded
optimizer; for the recorded θ this reproduces the recorded states), and the fixed-point starts and
per-tensor states come from that replay; otherwise the starts are recorded states and there are
no layer metrics. Held state components (an input normaliser's ``gmax``) start at their recorded
median, as in the other recipes.

The replay, Jacobians, saturation, effective learning rates and autonomous schedules run once for
all checkpoints (``vmap`` over stacked θ); the fixed-point solves and the S-curve loop over
checkpoints around one compiled, cached solver. Result: ``metrics (checkpoint, metric)`` plus the
modes, the schedules and S-curve rates per checkpoint, and the meta-loss history.

    lopt-trace analyze emergence STORE [-p n_starts=32 -p num=21]
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis import (
    autonomous,
    checkpoint_objective,
    effective_learning_rate,
    fixed_points,
    fraction_beyond,
    fraction_beyond_hist,
    halfway,
    linearize,
    meta_train_history,
    momentum_mode,
    rebuild,
    replay,
    run_group,
    s_curve,
    sample_states,
    saturation,
    stack_thetas,
)
from lopt_trace.analysis.conventions import attrs, strings
from lopt_trace.analysis.checkpoints import (
    CHECKPOINT,
    STRENGTH,
    initial_states,
    matching_checkpoint,
    metric,
    tensor_mean_states,
    replay_params,
    theta_at,
)
from lopt_trace.analysis.fixed_points import free_mask
from lopt_trace.analysis.layers import kind_means
from lopt_trace.analysis.linearization import held_modes
from lopt_trace.analysis.results import run_recipe
from lopt_trace.analysis.sampling import analysis_start, gradient_max, gradient_quantile
from lopt_trace.errors import UserError

NAME = "emergence"
VERSION = "1"
METRIC = "metric"

#: name -> (long name, units) of every metric, in table order
METRICS = {
    "meta_objective": ("meta-objective (validation when present, else training meta-loss)", "1"),
    "meta_loss": ("training meta-loss, mean since the previous checkpoint", "1"),
    "validation": ("validation meta-objective", "1"),
    "momentum_beta": ("|λ| of the momentum mode at the main fixed point", "1"),
    "momentum_timescale": ("timescale −1/ln|λ| of the momentum mode", "steps"),
    "momentum_alpha": ("learning rate α of the momentum mode", "1"),
    "total_alpha": ("Σα_i: effective learning rate at the main fixed point", "1"),
    "fixed_points": ("fixed points found at g* = 0", "count"),
    "fixed_point_found": ("1 if the main fixed point converged (else linearised at the best attempt)", "1"),
    "eta_initial": ("effective learning rate at h0", "1"),
    "clip_threshold": ("saturation threshold |g| at h0 (inf: none up to g_max)", "1"),
    "clip_equivalent": ("gradient clip that gives the same largest update, at h0", "1"),
    "clip_fraction_beyond": ("fraction of recorded |g| beyond the saturation threshold", "1"),
    "schedule_peak_ratio": ("autonomous schedule: peak η over η at h0", "1"),
    "schedule_final_ratio": ("autonomous schedule: final η over η at h0", "1"),
    "schedule_peak_step": ("autonomous schedule: step of the peak η", "steps"),
    "adaptation_ratio_positive": ("η at h*(+g_max) over η at h*(0)", "1"),
    "adaptation_ratio_negative": ("η at h*(−g_max) over η at h*(0)", "1"),
    "adaptation_converged": ("fraction of S-curve solves that converged", "1"),
    "eta_spread_tensors": ("largest over smallest |η| at the tensors' mean states", "1"),
    "eta_bias_weight_ratio": ("η at the mean bias state over η at the mean weight state", "1"),
}


def not_applicable(tree: xr.DataTree, optimizer: str | None = None) -> str | None:
    """Why this recipe cannot run on ``tree`` (no meta-training history, ...), or None.

    ``lopt-trace analyze all`` and the report skip the recipe with this reason."""
    try:
        meta_train_history(tree, optimizer)
    except UserError as exc:
        return str(exc)
    return None


def _ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(b) != 0, np.asarray(a, np.float64) / np.asarray(b, np.float64), np.nan)


def compute(tree: xr.DataTree, optimizer: str | None = None, n_starts: int = 32, seed: int = 0,
            tol: float = 1e-9, max_iter: int = 100, clip_tol: float = 0.1, clip_num: int = 2001,
            quantile: float = 0.99, num: int = 21, steps: int | None = None,
            replay_params_per_tensor: int = 16) -> xr.Dataset:
    """Every mechanism's strength at every checkpoint of the meta-training history (module doc)."""
    name, hist = meta_train_history(tree, optimizer)
    opt, theta_store = rebuild(tree, name)
    thetas = stack_thetas(hist, theta_store)
    its = np.asarray(hist[CHECKPOINT].values, dtype=np.int64)
    n = len(its)
    ds = run_group(tree, name)
    if steps is None:
        steps = int(tree.attrs.get("steps") or (int(ds["step"].max()) + 1))

    objective = checkpoint_objective(hist)
    # starts: each checkpoint's h0, held components at their recorded median (as analysis_start)
    h0 = initial_states(opt, thetas, its)
    start = initial_states(opt, thetas, its, analysis_start(ds, opt).values)

    # states along the trajectories: replayed through each checkpoint when every step is recorded
    every = int(tree.attrs.get("every", 1))
    played = None
    if every == 1 and "gradient" in ds and ds.sizes.get("param", 0):
        params = replay_params(ds, int(replay_params_per_tensor))
        played = replay(opt, thetas, ds, params, int(n_starts), seed).assign_coords({CHECKPOINT: its})
        samples = played["sampled_state"]
    else:
        recorded = sample_states(ds["state"], int(n_starts), seed)
        samples = recorded.drop_vars([c for c in recorded.coords if c not in ("start", "unit")])
        samples = samples.expand_dims({CHECKPOINT: its})

    # momentum: fixed points per checkpoint (one solver call each), linearised all at once
    fixed, n_fixed, found = _main_fixed_points(opt, thetas, samples, h0, tol, max_iter)
    lin = linearize(opt, thetas, fixed, 0.0, theta_dim=CHECKPOINT)
    beta, alpha = lin["beta"].values, lin["alpha"].values
    held = held_modes(lin, free_mask(opt) > 0)
    mode = (np.arange(n), np.array([momentum_mode(beta[i], alpha[i], exclude=held[i]) for i in range(n)]))

    # clipping at h0
    g_clip = 2.0 * max(gradient_max(ds), gradient_quantile(ds, 0.999))
    g_clip = g_clip if np.isfinite(g_clip) and g_clip > 0 else 1.0
    sat = saturation(opt, thetas, start, g_clip, tol=clip_tol, num=clip_num, theta_dim=CHECKPOINT)
    thr = sat["threshold"].values
    if "gradient_hist" in ds:
        hist_counts, edges = ds["gradient_hist"].compute(), ds["bin_edges"].values
        beyond = np.array([fraction_beyond_hist(hist_counts, edges, float(t)) for t in thr])
    else:
        beyond = np.array([float(fraction_beyond(ds["gradient"], float(t)).compute()) for t in thr])

    # schedule: the autonomous trajectory from h0
    auto = autonomous(opt, thetas, start, int(steps), theta_dim=CHECKPOINT)
    eta_auto = auto["effective_learning_rate"].values
    peak = np.array([int(np.nanargmax(np.abs(e))) if np.isfinite(e).any() else 0 for e in eta_auto])

    # adaptation: the S-curve's effective learning rate at ±g_max against g* = 0
    g_adapt = gradient_quantile(ds, quantile)
    g_adapt = g_adapt if np.isfinite(g_adapt) and g_adapt > 0 else 1.0
    curve = xr.concat([s_curve(opt, theta_at(thetas, i), start.isel({CHECKPOINT: i}, drop=True), g_adapt, num,
                               tol=tol, max_iter=200, check=False) for i in range(n)],
                      dim=CHECKPOINT).assign_coords({CHECKPOINT: its})
    eta_curve = curve["effective_learning_rate"]
    eta0 = eta_curve.isel(g_abs=0, arm=1).values

    values = {
        **{k: objective[k].values for k in ("meta_objective", "meta_loss", "validation") if k in objective},
        "momentum_beta": beta[mode], "momentum_timescale": lin["timescale"].values[mode],
        "momentum_alpha": alpha[mode], "total_alpha": np.nansum(alpha, axis=1),
        "fixed_points": n_fixed, "fixed_point_found": found,
        "eta_initial": sat["effective_learning_rate"].values,
        "clip_threshold": thr, "clip_equivalent": sat["clip_equivalent"].values,
        "clip_fraction_beyond": beyond,
        "schedule_peak_ratio": _ratio(eta_auto[np.arange(n), peak], eta_auto[:, 0]),
        "schedule_final_ratio": _ratio(eta_auto[:, -1], eta_auto[:, 0]),
        "schedule_peak_step": peak.astype(np.float64),
        "adaptation_ratio_positive": _ratio(eta_curve.sel(arm="positive").isel(g_abs=-1).values, eta0),
        "adaptation_ratio_negative": _ratio(eta_curve.sel(arm="negative").isel(g_abs=-1).values, eta0),
        "adaptation_converged": curve["converged"].mean(["arm", "g_abs"]).values.astype(np.float64),
    }

    out = xr.Dataset(coords={CHECKPOINT: ("checkpoint", its, attrs("meta-training iteration of the θ checkpoint"))})
    layers_note = ""
    if ds.sizes.get("tensor", 0) <= 1:
        layers_note = "one tensor: no layer metrics"
    elif played is None:
        layers_note = f"every = {every}: replaying gradients needs every step, so no layer metrics"
    else:
        layer_values, layer_vars = _layer_metrics(opt, thetas, tensor_mean_states(played, ds))
        values.update(layer_values)
        out = out.assign(layer_vars)

    names = [m for m in METRICS if m in values]
    table = np.stack([np.asarray(values[m], dtype=np.float64) for m in names], axis=1)
    out = out.assign_coords({METRIC: np.array(names, dtype=object),
                             "metric_long_name": (METRIC, np.array([METRICS[m][0] for m in names], dtype=object)),
                             "metric_units": (METRIC, np.array([METRICS[m][1] for m in names], dtype=object))})
    out["metrics"] = ((CHECKPOINT, METRIC), table, attrs("every metric at every checkpoint (see metric_long_name)"))
    out["fixed_point_state"] = fixed.assign_attrs(attrs("main fixed point of F(θ, h, 0)"))
    for v in ("eigenvalue_real", "eigenvalue_imag", "beta", "alpha"):
        out[f"mode_{v}"] = lin[v].assign_attrs(lin[v].attrs)
    out["initial_state"] = h0
    out["schedule_effective_learning_rate"] = auto["effective_learning_rate"].rename(step="auto_step").assign_attrs(
        attrs("autonomous η from h0 (g = 0)"))
    out["adaptation_effective_learning_rate"] = eta_curve.assign_attrs(attrs("η at the fixed point h*(g*)"))
    if "meta_loss" in hist:
        loss = np.asarray(hist["meta_loss"].values, dtype=np.float64)
        out["history_meta_loss"] = xr.DataArray(loss, dims="iteration", coords={"iteration": np.arange(len(loss))},
                                                attrs=attrs("training meta-loss at every iteration"))

    store_ckpt = matching_checkpoint(thetas, theta_store, its)
    out.attrs = {
        "optimizer": name, "n_checkpoints": int(n), "first_iteration": int(its[0]), "last_iteration": int(its[-1]),
        "iterations": int(hist.sizes.get("iteration", 0)),
        "has_validation": "validation" in objective,
        "store_checkpoint": -1 if store_ckpt is None else store_ckpt,
        "selected_checkpoint": int(hist["selected_checkpoint"]) if "selected_checkpoint" in hist else -1,
        "replayed": played is not None, "layers_note": layers_note,
        "clip_g_max": float(g_clip), "clip_tol": float(clip_tol), "adaptation_g_max": float(g_adapt),
        "quantile": float(quantile), "steps": int(steps), "n_starts": int(n_starts),
        "halfway": {mech: halfway(its, values[m]) for mech, m in STRENGTH.items() if m in values},
    }
    return out


def _main_fixed_points(opt, thetas, samples, h0, tol, max_iter):
    """The main fixed point at g* = 0 of every checkpoint (most starts reach it; the best attempt
    when none converged): ``(state (checkpoint, unit), fixed points found, converged 0/1)``.

    The starts are the checkpoint's ``samples (checkpoint, start, unit)`` and its h0, as the
    ``momentum`` recipe uses recorded states and h0."""
    n = h0.sizes[CHECKPOINT]
    main = np.full((n, h0.sizes["unit"]), np.nan)
    n_fixed, found = np.zeros(n), np.zeros(n)
    for i in range(n):
        starts = xr.concat([samples.isel({CHECKPOINT: i}, drop=True),
                            h0.isel({CHECKPOINT: i}, drop=True).expand_dims(start=[samples.sizes["start"]])],
                           dim="start")
        starts = starts.isel(start=np.flatnonzero(np.isfinite(starts.values).all(axis=1)))
        if starts.sizes["start"] == 0:  # a diverged checkpoint: nothing to solve from
            continue
        fps = fixed_points(opt, theta_at(thetas, i), starts, 0.0, tol=tol, max_iter=max_iter).isel(g_star=0)
        count = fps["count"].values
        n_fixed[i] = int((count > 0).sum())
        if count.size and count[0] > 0:
            main[i], found[i] = fps["fixed_point_state"].isel(fixed_point=0).values, 1.0
        elif np.isfinite(fps["q"].values).any():  # nothing converged: the best attempt
            main[i] = fps["state"].isel(start=int(np.nanargmin(fps["q"].values))).values
    fixed = xr.DataArray(main, dims=(CHECKPOINT, "unit"), coords={CHECKPOINT: h0[CHECKPOINT].values,
                                                                   "unit": h0["unit"].values})
    return fixed, n_fixed, found


def _layer_metrics(opt, thetas, per_tensor: xr.DataArray) -> tuple[dict, dict]:
    """The layer metrics and variables from the mean states ``(checkpoint, tensor, unit)``: η per
    tensor and per kind, their spread over tensors and bias / weight."""
    values, variables = {}, {}
    eta_t = effective_learning_rate(opt, thetas, per_tensor, theta_dim=CHECKPOINT).transpose(CHECKPOINT, "tensor")
    a = np.abs(eta_t.values)
    with np.errstate(divide="ignore", invalid="ignore"):
        values["eta_spread_tensors"] = np.where(a.min(1) > 0, a.max(1) / a.min(1), np.nan)
    variables["tensor_effective_learning_rate"] = eta_t.assign_attrs(
        attrs("η at the tensor's mean replayed state after the last step"))
    if "tensor_kind" in per_tensor.coords:
        eta_k = effective_learning_rate(opt, thetas, kind_means(per_tensor), theta_dim=CHECKPOINT)
        variables["kind_effective_learning_rate"] = eta_k.transpose(CHECKPOINT, "kind").assign_attrs(
            attrs("η at the kind's mean replayed state (tensors weighted by size)"))
        kinds = strings(eta_k["kind"].values)
        if "bias" in kinds and "weight" in kinds:
            values["eta_bias_weight_ratio"] = _ratio(eta_k.sel(kind="bias").values, eta_k.sel(kind="weight").values)
    return values, variables


def _f(x) -> str:
    x = float(x)
    return "n/a" if np.isnan(x) else ("inf" if np.isinf(x) else f"{x:.3g}")


def summary(ds: xr.Dataset) -> str:
    """One line: first → last checkpoint for the meta-objective and every mechanism, with the
    iteration by which each made half of its change."""
    a = ds.attrs
    half = dict(a.get("halfway") or {})

    def part(label, name, mech, prefix=""):
        v = metric(ds, name)
        text = f"{label} {prefix}{_f(v[0])} → {prefix}{_f(v[-1])}"
        when = half.get(mech)
        return text + (f" (half-way by iteration {when})" if when is not None else "")

    items = [part("meta-objective", "meta_objective", "meta-objective"),
             part("momentum |λ|", "momentum_beta", "momentum"),
             part("Σα", "total_alpha", "learning rate"),
             part("clipping threshold", "clip_threshold", "clipping"),
             part("schedule peak", "schedule_peak_ratio", "schedule", "×"),
             part("adaptation", "adaptation_ratio_positive", "adaptation", "×")]
    if "eta_spread_tensors" in strings(ds[METRIC].values):
        items.append(part("η spread over tensors", "eta_spread_tensors", "layers", "×"))
    return (f"emergence: {a['n_checkpoints']} checkpoints of {a['optimizer']} (iterations "
            f"{a['first_iteration']}–{a['last_iteration']}); " + "; ".join(items))


def plot(ds: xr.Dataset):
    """The meta-objective per checkpoint, each mechanism's progress from the first checkpoint to
    the last, and each metric in its own units: drawn as the dashboard's Emergence tab and the
    report's Fig. 8 draw them."""
    from lopt_trace.analysis.plotting import holoviews  # drawing only: computing loads no HoloViews or dashboard
    from lopt_trace.dashboard.emergence import metric_plots, objective_plot, progress_plot

    return holoviews().Layout([objective_plot(ds), progress_plot(ds), *metric_plots(ds)]).cols(2).opts(
        shared_axes=False)


def run(store, **params) -> xr.Dataset:
    """Compute, write to ``/analysis/emergence`` of ``store``, return the result."""
    return run_recipe(store, NAME, VERSION, compute, params)
