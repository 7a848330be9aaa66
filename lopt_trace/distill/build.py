"""From a store's analysis results to a distilled optimizer (docs/analysis.md, "distill").

Reads ``/analysis/momentum``, ``/schedule``, ``/clipping`` and ``/adaptation`` of one optimizer
group and sets the θ of :class:`~lopt_trace.optimizers.distilled.Distilled`:

- **momentum** (α, β, α_fast): the one-pole filter closest to the linearised impulse response
  at the main fixed point, r_k = Re Σ_i α_i λ_i^k (k = 0..K, K the recorded steps): α + α_fast
  = r_0 = Σα exactly, and (α, β) minimise Σ_{k≥1} (r_k − α β^k)² (:func:`fit_heavy_ball`). One
  mode (momentum, the hand-built momentum GRU) gives back its own β and α, and α_fast = 0.
- **schedule** s(k) = η(k) / Σα, η along the autonomous trajectory (``schedule``), so the
  distilled optimizer's η at step k with no history is the learned optimizer's.
- **clipping** (τ per side): the soft clip τ·tanh(g/τ) whose ``tol`` threshold (where it falls
  ``tol`` below linear: τ·u*, tanh(u*)/u* = 1 − tol, u* = 0.584 for tol = 0.1) is the measured
  saturation threshold at h0 (:func:`clip_scale`); τ = inf on a side with no saturation up to
  ``g_max``. The threshold is measured to bisection precision where saturation starts; the
  largest update on the recipe's grid (its clip equivalent) is not used, because the grid
  reaches 2× the largest recorded |g| and is coarse near the threshold, so that maximum can come
  from rare gradients far in the tail.
- **adaptation** a(g*) = η(h*(g*)) / η(h*(0)) along both arms of the S-curve (converged solves),
  on a signed g* axis; β_a is the momentum mode's |λ| (the recipe's ``slowest_beta``: the
  slowest mode that carries learning rate, the timescale on which the state follows g*).
- **normalisation**, only when the analysed optimizer is a GRU with ``input_norm`` δ: the same
  normaliser, scaled so that ĝ = g where the analyses were made (gmax held at its recorded median
  G: norm_scale = δ·G); the schedule is then corrected for the decay of gmax along the
  autonomous run (η·gmax_k / G), which the learned GRU's own dynamics do not cause.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.optimizers.distilled import Distilled

#: the analyses distill is built from, in the order it reads them
REQUIRED = ("momentum", "schedule", "clipping", "adaptation")


class Distillation(NamedTuple):
    """The distilled optimizer, its θ (float32 arrays), and what it was built from (JSON-able)."""

    optimizer: Distilled
    theta: dict
    info: dict


def analyses(tree: xr.DataTree, name: str, store: str = "STORE") -> dict[str, xr.Dataset]:
    """The ``/analysis/<recipe>`` results of :data:`REQUIRED` for group ``name``, loaded; a
    :class:`UserError` that names the command to run when one is missing or is for another group."""
    have = tree["analysis"].children if "analysis" in tree.children else {}
    missing = [r for r in REQUIRED if r not in have]
    other = [r for r in REQUIRED if r in have and str(tree[f"analysis/{r}"].attrs.get("optimizer")) != name]
    if missing or other:
        what = ", ".join(f"/analysis/{r}" for r in missing + other)
        why = "missing" if not other else ("for another optimizer group" if not missing
                                            else "missing or for another optimizer group")
        raise UserError(f"distill needs {what} of {name!r} ({why}); run `lopt-trace analyze all "
                        f"{store} --optimizer {name}` first")
    return {r: tree[f"analysis/{r}"].to_dataset(inherit=False).load() for r in REQUIRED}


# -- momentum ---------------------------------------------------------------------------------------
def impulse_response(momentum: xr.Dataset, steps: int) -> np.ndarray:
    """r_k = Re Σ_i α_i λ_i^k for k = 0..``steps`` at the main fixed point: minus the update k
    steps after a unit gradient impulse, in the linearisation. Shape (steps + 1,)."""
    fp = momentum.isel(fixed_point=0)
    lam = fp["eigenvalue_real"].values + 1j * fp["eigenvalue_imag"].values
    alpha = fp["alpha"].values + 1j * (fp["alpha_imag"].values if "alpha_imag" in fp else 0.0)
    keep = np.isfinite(lam) & np.isfinite(alpha)
    k = np.arange(int(steps) + 1)[:, None]
    return np.real((alpha[keep][None, :] * lam[keep][None, :] ** k).sum(axis=1))


def fit_heavy_ball(r: np.ndarray) -> tuple[float, float, float]:
    """(α, β, relative error) of the one-pole fit r_k ≈ α β^k for k ≥ 1 (least squares, β in
    [0, 1)); the relative error is ‖r − r̂‖/‖r‖ over all k, with r̂_0 = r_0."""
    r = np.asarray(r, np.float64)
    tail, k = r[1:], np.arange(1, len(r))

    def best(beta):
        pw = beta ** k
        den = float(pw @ pw)
        a = float(pw @ tail) / den if den > 0 else 0.0
        return a, float(np.sum((tail - a * pw) ** 2))

    grid = np.unique(np.concatenate([np.linspace(0.0, 0.99, 100), 1.0 - np.logspace(-2, -5, 60)]))
    errs = [best(b)[1] for b in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    for _ in range(60):  # golden-section refinement between the grid neighbours
        m1, m2 = lo + 0.382 * (hi - lo), hi - 0.382 * (hi - lo)
        if best(m1)[1] <= best(m2)[1]:
            hi = m2
        else:
            lo = m1
    beta = 0.5 * (lo + hi)
    if best(grid[i])[1] < best(beta)[1]:
        beta = grid[i]
    alpha, _ = best(beta)
    fit = np.concatenate([[r[0]], alpha * beta ** k])
    norm = float(np.linalg.norm(r))
    return alpha, float(beta), float(np.linalg.norm(r - fit) / norm) if norm > 0 else 0.0


# -- clipping ---------------------------------------------------------------------------------------
def tanh_onset(tol: float) -> float:
    """u* with tanh(u*)/u* = 1 − ``tol``: τ·tanh(g/τ) falls ``tol`` below linear at |g| = u*·τ."""
    lo, hi = 1e-9, 50.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.tanh(mid) / mid > 1 - tol else (lo, mid)
    return 0.5 * (lo + hi)


def clip_scale(clipping: xr.Dataset) -> np.ndarray:
    """τ for [g < 0, g ≥ 0]: the measured threshold at h0 over u* (see the module doc)."""
    init = clipping.sel(state="initial")
    thr = np.asarray(init["threshold_side"].sel(side=["negative", "positive"]).values, np.float64)
    u = tanh_onset(float(clipping.attrs.get("tol", 0.1)))
    return np.where(np.isfinite(thr) & (thr > 0), thr / u, np.inf)


# -- schedule and adaptation ------------------------------------------------------------------------
def schedule_table(schedule: xr.Dataset, eta_ref: float, steps: int, normalised: bool) -> np.ndarray:
    """s(k) = η(k)/``eta_ref`` for k = 0..steps − 1 along the autonomous trajectory (held after
    its end; with ``normalised``, η·gmax_k/gmax_0, see the module doc). Ones where undefined."""
    eta = np.asarray(schedule["auto_effective_learning_rate"].values, np.float64)
    if normalised and "unit" in schedule.coords and "gmax" in list(schedule["unit"].values):
        gmax = np.asarray(schedule["auto_state"].sel(unit="gmax").values, np.float64)
        if gmax[0] > 0:
            eta = eta * gmax / gmax[0]
    n = max(int(steps), 1)
    eta = np.concatenate([eta, np.full(max(0, n - len(eta)), eta[-1])])[:n]
    if not (np.isfinite(eta_ref) and eta_ref != 0 and np.all(np.isfinite(eta))):
        return np.ones(max(n, 2))
    s = eta / eta_ref
    return s if len(s) > 1 else np.repeat(s, 2)


def adaptation_table(adaptation: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(g*, η(h*(g*))/η(h*(0))) over both arms, ascending in g*, converged solves only; ratios
    below 0 are set to 0. ([−1, 1], [1, 1]) when there is no usable curve."""
    eta = adaptation["effective_learning_rate"]
    e0 = float(adaptation.attrs.get("eta_zero", eta.isel(g_abs=0, arm=0)))
    g, ratio = [], []
    for arm in ("negative", "positive"):
        ok = np.asarray(adaptation["converged"].sel(arm=arm).values, bool)
        gs = np.asarray(adaptation["g_star"].sel(arm=arm).values, np.float64)[ok]
        es = np.asarray(eta.sel(arm=arm).values, np.float64)[ok]
        g.append(gs)
        ratio.append(es / e0 if np.isfinite(e0) and e0 != 0 else np.full_like(es, np.nan))
    g, ratio = np.concatenate(g), np.concatenate(ratio)
    keep = np.isfinite(g) & np.isfinite(ratio)
    g, ratio = g[keep], ratio[keep]
    g, idx = np.unique(g, return_index=True)  # g* = 0 is on both arms
    ratio = np.clip(ratio[idx], 0.0, None)
    if len(g) < 2:
        return np.array([-1.0, 1.0]), np.ones(2)
    return g, ratio


# -- the whole optimizer ----------------------------------------------------------------------------
def build(tree: xr.DataTree, name: str, store: str = "STORE") -> Distillation:
    """The distilled optimizer of group ``name`` from its analyses (see the module doc).

    Raises :class:`UserError` naming the ``lopt-trace analyze`` command to run when an analysis
    is missing. ``info`` holds every number θ was made from, and where it came from."""
    res = analyses(tree, name, store)
    node = tree[f"runs/{name}"]
    learned_config = dict(node.attrs.get("optimizer") or {})
    input_norm = learned_config.get("input_norm")
    steps = int(tree.attrs.get("steps") or res["schedule"].attrs.get("steps") or 1)

    mom = res["momentum"].attrs
    r = impulse_response(res["momentum"], steps)
    total = float(r[0])
    alpha, beta, fit_error = fit_heavy_ball(r)
    tau = clip_scale(res["clipping"])
    schedule = schedule_table(res["schedule"], total, steps, input_norm is not None)
    g_table, ratio = adaptation_table(res["adaptation"])
    beta_a = float(mom.get("slowest_beta", beta))
    beta_a = beta_a if np.isfinite(beta_a) and 0 <= beta_a < 1 else beta
    norm_scale = 0.0
    if input_norm is not None:
        sched = res["schedule"]
        gmax0 = float(sched["auto_state"].sel(unit="gmax").isel(auto_step=0)) if "gmax" in list(
            sched["unit"].values) else float("nan")
        norm_scale = float(input_norm) * gmax0 if np.isfinite(gmax0) and gmax0 > 0 else 0.0

    opt = Distilled(input_norm=input_norm)
    f32 = np.float32
    theta = {"learning_rate": f32(alpha), "fast_learning_rate": f32(total - alpha), "beta": f32(beta),
             "adaptation_beta": f32(beta_a), "norm_scale": f32(norm_scale),
             "schedule": schedule.astype(f32), "clip_threshold": tau.astype(f32),
             "adaptation_gradient": g_table.astype(f32),
             "adaptation_ratio": ratio.astype(f32)}
    info = {
        "optimizer": name, "learned_config": learned_config, "steps": steps,
        "learning_rate": float(alpha), "fast_learning_rate": float(total - alpha), "beta": beta,
        "total_learning_rate": total, "momentum_fit_error": fit_error,
        "recipe_beta": float(mom.get("slowest_beta", np.nan)),
        "recipe_alpha": float(mom.get("slowest_alpha", np.nan)),
        "adaptation_beta": beta_a,
        "clip_threshold": [float(x) for x in tau],
        "clip_onset": [float(x) for x in np.asarray(res["clipping"]["threshold_side"].sel(
            state="initial", side=["negative", "positive"]).values)],
        "schedule_first": float(schedule[0]), "schedule_last": float(schedule[-1]),
        "schedule_min": float(schedule.min()), "schedule_max": float(schedule.max()),
        "adaptation_min": float(ratio.min()), "adaptation_max": float(ratio.max()),
        "adaptation_g_max": float(np.abs(g_table).max()),
        "input_norm": input_norm, "norm_scale": norm_scale,
        "analyses": {k: str(v.attrs.get("created", "")) for k, v in res.items()},
    }
    return Distillation(opt, theta, info)


__all__ = ["Distillation", "REQUIRED", "adaptation_table", "analyses", "build", "clip_scale",
           "fit_heavy_ball", "impulse_response", "schedule_table", "tanh_onset"]
