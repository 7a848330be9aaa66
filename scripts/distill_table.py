"""Print the distillation results of stores as Markdown (the "Distillation" section of
docs/findings.md). Every number comes from the stores' ``/analysis/distill`` groups.

Make the stores first, for example::

    lopt-trace record --task two_moons --out stores/two_moons.zarr
    lopt-trace analyze all stores/two_moons.zarr --optimizer learned
    lopt-trace distill stores/two_moons.zarr --optimizer learned --problems 64

then::

    python scripts/distill_table.py --store two_moons=stores/two_moons.zarr ...

(``scripts/findings.py --distill TASK=PATH`` includes the same section). A store is given as
TASK=PATH. The script only reads stores; it needs xarray and zarr, not lopt-trace.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import xarray as xr

MECHANISMS = ("momentum", "schedule", "clipping", "adaptation", "normalization")
#: a momentum fit error above this means the distilled optimizer's memory is not the group's
FIT_OK = 0.10
#: tuned momentum is called unstable when its worst problem's meta-objective exceeds this many
#: times its median (the mean advantage is then dominated by a few problems)
UNSTABLE = 3.0

EXPLANATION = (
    "For each store, `lopt-trace distill` built a small optimizer from the store's "
    "`/analysis/{momentum,schedule,clipping,adaptation}` results of the named group (one heavy-ball "
    "mode plus an instantaneous term fitted to the linearised impulse response at the g* = 0 fixed "
    "point; the autonomous schedule on the current gradient's learning rate; a tanh clip at the "
    "measured saturation threshold, on the gradient or on the update, whichever reproduces the "
    "group's loss curves on the store's own runs more closely; the S-curve's effective-learning-rate "
    "ratio over a slow mean gradient; the gradient normaliser when the GRU has one) and ran it, the "
    "group and tuned momentum on the same held-out problems (seeds 1e9 + 1e6 onwards, never the "
    "store's runs). *meta-objective*: mean over problems of mean_k f_k/f_0 (k = 1..K; lower is "
    "better). *recovered*: (L_momentum − L_distilled)/(L_momentum − L_group) with L the mean "
    "meta-objective, so 100% is the group and 0% tuned momentum; the interval is the 2.5–97.5% "
    "range of a paired bootstrap over problems (2000 resamples). *advantage*: L_momentum − L_group "
    "over its paired standard error; below 2 the fraction is poorly determined. *carried*: "
    "recovered(distilled) − recovered(distilled without that mechanism); 'diverges' means runs "
    "diverged without it; — means the mechanism is absent.")


def _pct(x) -> str:
    x = float(x)
    if x == np.inf:
        return "diverges"
    if not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.0f}%" if abs(x) < 10 else f"{100 * x:.2g}%"


def _g(x, digits=3) -> str:
    x = float(x)
    return str(x) if not np.isfinite(x) else f"{x:.{digits}g}"


def median_check(ds: xr.Dataset) -> str:
    """A note when tuned momentum is unstable across problems: the recovered fraction recomputed on
    per-problem medians instead of means (robust to the few problems that dominate the mean)."""
    mo = ds["meta_objective"].load()
    mom = mo.sel(variant="tuned_momentum").values
    med = {v: float(np.median(mo.sel(variant=v).values)) for v in ("learned", "distilled", "tuned_momentum")}
    if not np.all(np.isfinite(mom)) or np.max(mom) <= UNSTABLE * med["tuned_momentum"]:
        return ""
    denom = med["tuned_momentum"] - med["learned"]
    frac = (med["tuned_momentum"] - med["distilled"]) / denom if denom > 0 else float("nan")
    return (f"; tuned momentum is unstable on these problems (worst {_g(np.max(mom))}, "
            f"{_g(np.max(mom) / med['tuned_momentum'], 2)}× its median), so its mean advantage rests on a few "
            f"problems: on per-problem medians (group {_g(med['learned'])}, distilled {_g(med['distilled'])}, "
            f"tuned momentum {_g(med['tuned_momentum'])}) the fraction recovered is {_pct(frac)}")


def reading(a: dict, z: float) -> str:
    """What the numbers say, by fixed rules (no number is typed here)."""
    lo, hi, rec = float(a["recovered_low"]), float(a["recovered_high"]), float(a["recovered"])
    if not (np.isfinite(z) and z > 2):
        verdict = ("the group's advantage over tuned momentum is under 2 standard errors, so the "
                   "fraction is poorly determined")
    elif lo <= 1 <= hi:
        verdict = "explained: the interval includes 100%, the group itself"
    elif lo > 1:
        verdict = "explained, and more: the distilled optimizer beats the group"
    elif lo > 0:
        verdict = "partly explained: between tuned momentum and the group"
    elif hi >= 0:
        verdict = "not explained beyond tuned momentum: the interval includes 0%"
    else:
        verdict = ("not explained: the distilled optimizer is worse than tuned momentum, so what the "
                   "four analyses describe is not what makes this optimizer work")
    fit = float(dict(a["distilled"]).get("momentum_fit_error", 0.0))
    if fit > FIT_OK:
        verdict += (f"; but the one-mode momentum fit to the linearised impulse response is poor "
                    f"({100 * fit:.0f}% error, above {100 * FIT_OK:.0f}%), so the distilled optimizer is not a "
                    "faithful summary of this optimizer's memory and the fraction does not test the mechanisms")
    if str(a["optimizer"]).endswith("-warm"):
        verdict += ("; warm-started from soft-sign momentum (momentum, a tanh clip), so its mechanisms "
                    "were built in and near 100% is the tool working" if lo <= 1 <= hi or rec > 0.8 else
                    "; warm-started from soft-sign momentum, so near 100% was expected")
    return verdict


def rows(label: str, path: str) -> tuple[str, str] | None:
    """The table row and the distilled optimizer's line for one store, or None without a result."""
    tree = xr.open_datatree(path, engine="zarr", chunks={})
    if "analysis" not in tree.children or "distill" not in tree["analysis"].children:
        print(f"{path}: no /analysis/distill; run `lopt-trace distill {path}`", file=sys.stderr)
        return None
    ds = tree["analysis/distill"].to_dataset(inherit=False)
    a = ds.attrs
    mo = dict(a["meta_objective"])
    carried = dict(a["carried"])
    z = float(a["advantage"]) / float(a["advantage_sem"]) if float(a["advantage_sem"]) > 0 else float("nan")
    d = dict(a["distilled"])
    other = [str(v) for v in ds["variant"].values if str(v).startswith("clip_on_")]
    other_rec = float(ds["recovered"].sel(variant=other[0])) if other else float("nan")
    row = (f"| {label} (`{a['optimizer']}`) | {a['problems']} | {_g(mo['learned'], 3)} / {_g(mo['distilled'], 3)} / "
           f"{_g(mo['tuned_momentum'], 3)} | **{_pct(a['recovered'])}** ({_pct(a['recovered_low'])} to "
           f"{_pct(a['recovered_high'])}) | {_g(z, 2)} | "
           + " | ".join(_pct(carried[m]) if m in carried else "—" for m in MECHANISMS)
           + f" | {d.get('clip_at')} ({other[0].removeprefix('clip_on_') if other else '?'}: {_pct(other_rec)}) |")
    diverged = ", ".join(f"{v} {int(n)}" for v, n in zip(ds["variant"].values, ds["diverged"].values) if int(n))
    line = (f"- {label} (`{a['optimizer']}`): {reading(a, z)}{median_check(ds)}. Distilled: β = {_g(d['beta'], 4)}, "
            f"α = {_g(d['learning_rate'], 4)}, "
            f"α_fast = {_g(d['fast_learning_rate'], 3)} (fit error {_g(100 * d['momentum_fit_error'], 2)}%; the "
            f"momentum recipe's mode: |λ| = {_g(d['recipe_beta'], 3)}, α = {_g(d['recipe_alpha'], 3)}); "
            f"schedule ×{_g(d['schedule_min'])}–×{_g(d['schedule_max'])}; clip τ = "
            f"{_g(d['clip_threshold'][0])} (g < 0), {_g(d['clip_threshold'][1])} (g > 0); adaptation "
            f"×{_g(d['adaptation_min'])}–×{_g(d['adaptation_max'])}"
            + (f"; normaliser δ = {d['input_norm']}" if d.get("input_norm") is not None else "")
            + f"; diverged runs: {diverged or 'none'}")
    return row, line


def section(stores: list[str]) -> str:
    """The Markdown section for TASK=PATH specs."""
    out = ["## Distillation: do the mechanisms found explain the learned optimizer?", "",
           "Generated by `python scripts/distill_table.py` from each store's `/analysis/distill`. " + EXPLANATION, "",
           "| store | problems | meta-objective: group / distilled / tuned momentum | recovered (95% interval) | "
           "advantage / sem | carried: momentum | schedule | clipping | adaptation | normalisation | clip on "
           "(the other position: recovered) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines = []
    for spec in stores:
        label, _, path = spec.partition("=")
        made = rows(label, path)
        if made:
            out.append(made[0])
            lines.append(made[1])
    return "\n".join(out + ["", "The distilled optimizers:", ""] + lines + [""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", action="append", required=True, metavar="TASK=PATH")
    a = p.parse_args(argv)
    print(section(a.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
