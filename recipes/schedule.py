"""Learning-rate schedule (paper Fig. 5): what the optimizer does with no gradient at all.

The state is iterated under F(θ, h, 0) from the initial state for as many steps as were recorded
(held components, such as the input-normalised GRU's ``gmax``, start at their recorded median).
The effective learning rate along that autonomous trajectory is the schedule built into the
optimizer (warm-up, decay); the share of the motion along the readout says whether the state
drifts in a direction that moves the parameters by itself (see
:mod:`lopt_trace.analysis.dynamics`). For comparison, the effective learning rate at the recorded
mean state (over all parameters and runs) is given at every stored step.

    lopt-trace analyze schedule STORE [--optimizer NAME] [-p steps=200]
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis import autonomous, effective_learning_rate, rebuild, run_group, select_optimizer
from lopt_trace.analysis.conventions import attrs
from lopt_trace.analysis.results import run_recipe
from lopt_trace.analysis.sampling import analysis_start, mean_state

NAME = "schedule"
VERSION = "1"


def compute(tree: xr.DataTree, optimizer: str | None = None, steps: int | None = None) -> xr.Dataset:
    """Autonomous trajectory and its effective learning rate; the recorded mean state's."""
    name = select_optimizer(tree, optimizer)
    opt, theta = rebuild(tree, name)
    ds = run_group(tree, name)
    if steps is None:
        steps = int(tree.attrs.get("steps") or (int(ds["step"].max()) + 1))
    auto = autonomous(opt, theta, analysis_start(ds, opt), int(steps))
    out = auto.rename({"step": "auto_step", "state": "auto_state", "update": "auto_update",
                       "effective_learning_rate": "auto_effective_learning_rate",
                       "readout_fraction": "auto_readout_fraction"})
    for v in out.data_vars:
        out[v].attrs["long_name"] = "autonomous: " + out[v].attrs["long_name"]
    out["auto_step"].attrs = attrs("steps under F(θ, h, 0); 0 is the initial state", "steps")
    if "state_mean" in ds:
        ms = mean_state(ds)
        out["recorded_mean_state"] = ms.assign_attrs(attrs("mean recorded state (all parameters, runs)"))
        out["recorded_effective_learning_rate"] = effective_learning_rate(opt, theta, ms).assign_attrs(
            attrs("effective learning rate at the mean recorded state"))
    eta = out["auto_effective_learning_rate"].values
    finite = np.isfinite(eta)
    peak = int(np.nanargmax(np.abs(eta))) if finite.any() else 0
    info = {
        "optimizer": name, "steps": int(steps),
        "eta_start": float(eta[0]), "eta_end": float(eta[-1]),
        "eta_peak": float(eta[peak]), "eta_peak_step": peak,
        "readout_fraction": float(auto.attrs["readout_fraction"]),
    }
    if "recorded_effective_learning_rate" in out:
        rec = out["recorded_effective_learning_rate"].values
        info["recorded_eta_start"], info["recorded_eta_end"] = float(rec[0]), float(rec[-1])
    out.attrs = info
    return out


def summary(ds: xr.Dataset) -> str:
    """One line: the autonomous effective LR from start to end and its peak; readout share."""
    a = ds.attrs
    if not (np.isfinite(a["eta_start"]) and np.isfinite(a["eta_end"])):
        text = ("schedule: the effective learning rate along the autonomous trajectory is undefined "
                f"(η = {a['eta_start']} at the initial state: no finite slope at g = 0)")
        if "recorded_eta_start" in a:
            text += (f"; at the recorded mean state {a['recorded_eta_start']:.3g} → "
                     f"{a['recorded_eta_end']:.3g}")
        return text + f" [{a['optimizer']}]"
    ratio = a["eta_end"] / a["eta_start"] if a["eta_start"] else float("nan")
    text = (f"schedule: without gradients the effective learning rate goes {a['eta_start']:.3g} → "
            f"{a['eta_end']:.3g} over {a['steps']} steps (×{ratio:.3g}; peak {a['eta_peak']:.3g} at "
            f"step {a['eta_peak_step']})")
    frac = a["readout_fraction"]
    text += ("; the state does not move" if not np.isfinite(frac)
             else f"; {100 * frac:.2g}% of that motion lies along the readout")
    if "recorded_eta_start" in a:
        text += (f"; at the recorded mean state {a['recorded_eta_start']:.3g} → "
                 f"{a['recorded_eta_end']:.3g}")
    return text + f" [{a['optimizer']}]"


def plot(ds: xr.Dataset):
    """Effective learning rate along the autonomous trajectory (and at the recorded mean state);
    the share of the autonomous motion along the readout (the report's Fig. 5)."""
    from lopt_trace.analysis.plotting import holoviews  # HoloViews only when drawing, not computing

    hv = holoviews()
    curves = [hv.Curve((ds["auto_step"].values, ds["auto_effective_learning_rate"].values), "step",
                       "effective learning rate", label="autonomous (g = 0)").opts(color="green", line_width=2)]
    if "recorded_effective_learning_rate" in ds:
        curves.append(hv.Curve((ds["step"].values + 1, ds["recorded_effective_learning_rate"].values),
                               "step", "effective learning rate", label="recorded mean state").opts(color="#1f77b4"))
    schedule = hv.Overlay(curves).opts(title="learning-rate schedule", width=520, height=360, show_grid=True,
                                       legend_position="right")  # inside, it covered the curves
    frac = hv.Curve((ds["auto_step"].values, ds["auto_readout_fraction"].values), "step",
                    "share along the readout").opts(title="autonomous motion along the readout", width=420,
                                                    height=360, show_grid=True)
    return (schedule + frac).cols(2).opts(shared_axes=False)


def run(store, **params) -> xr.Dataset:
    """Compute, write to ``/analysis/schedule`` of ``store``, return the result."""
    return run_recipe(store, NAME, VERSION, compute, params)
