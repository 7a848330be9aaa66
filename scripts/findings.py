"""Write docs/findings.md: what each bundled learned optimizer learned, from the analyses in stores.

Every number in docs/findings.md comes from this script, which reads the ``/analysis/<recipe>``
groups (and ``/meta_train``) of one store per task. Make the stores first, for example::

    lopt-trace record --task mnist --out stores/mnist.zarr
    lopt-trace analyze all stores/mnist.zarr --optimizer learned

then::

    python scripts/findings.py --store linear_regression=stores/linear_regression.zarr \
        --store rosenbrock=stores/rosenbrock.zarr --store two_moons=stores/two_moons.zarr \
        --store mnist=stores/mnist.zarr [--optimizer learned] > docs/findings.md

A store can be given as TASK=PATH or TASK=PATH:GROUP to read another optimizer group (for example
``two_moons=stores/two_moons.zarr:learned-warm``). ``--distill LABEL=PATH`` (repeatable) appends the
distillation section (``scripts/distill_table.py``) for stores that hold ``/analysis/distill``
(``lopt-trace distill STORE``). The script only reads stores; it needs xarray and zarr, not
lopt-trace.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import sys

import numpy as np
import xarray as xr

#: the paper's finding for each mechanism (Maheswaranathan et al. 2021, Figs. 3–7)
PAPER = {
    "momentum": "slow modes of the linearised dynamics at the g* = 0 fixed point act as momentum; "
                "on linear regression the timescale is close to the heavy-ball optimum (Fig. 3)",
    "clipping": "the update function saturates for large |g|, at a threshold in the tail of the "
                "gradient distribution (Fig. 4)",
    "schedule": "without gradients the state drifts so that the effective learning rate warms up "
                "and/or decays over the steps: an autonomous schedule (Fig. 5)",
    "adaptation": "fixed points for constant g* ≠ 0 form an S-curve, and the effective learning rate "
                  "falls as |g*| grows, as in RMSProp (Fig. 6)",
    "layers": "on the CNN, biases get lower effective learning rates than weights (their gradients "
              "are larger), and learning rates differ by layer (Fig. 7)",
}

#: a one-step linearisation error above this means the linear description does not hold
LINEAR_OK = 0.10
#: a ratio further than this from 1 counts as a schedule or as adaptation
RATIO_OK = 0.10


def _attrs(tree: xr.DataTree, recipe: str) -> dict | None:
    path = f"analysis/{recipe}"
    try:
        node = tree[path]
    except KeyError:
        return None
    return dict(node.attrs)


def _dict(value) -> dict:
    return value if isinstance(value, dict) else ast.literal_eval(str(value))


def _fmt(x, digits=3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not np.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def momentum_row(tree: xr.DataTree) -> tuple[str, str]:
    a = _attrs(tree, "momentum")
    if a is None:
        return "not analysed", "run `lopt-trace analyze momentum`"
    ds = tree["analysis/momentum"].to_dataset()
    beta = np.asarray(ds["beta"].isel(fixed_point=0).values, float)
    alpha = np.asarray(ds["alpha"].isel(fixed_point=0).values, float)
    dominant = int(np.nanargmax(np.abs(np.nan_to_num(alpha)))) if np.isfinite(alpha).any() else 0
    share = abs(alpha[dominant]) / max(np.nansum(np.abs(alpha)), 1e-300)
    slowest = int(np.nanargmax(beta)) if np.isfinite(beta).any() else 0
    err = float(a.get("linearization_error_median", np.nan))
    weights = np.abs(np.nan_to_num(alpha))
    weighted = float(np.sum(weights * np.nan_to_num(beta)) / max(weights.sum(), 1e-300))
    found = weighted >= 0.5 and a.get("n_fixed_points", 0)
    text = (f"learning-rate-weighted |λ| = {_fmt(weighted)}; "
            f"dominant mode |λ| = {_fmt(beta[dominant])}, α = {_fmt(alpha[dominant])} "
            f"({100 * share:.0f}% of Σ|α|); slowest mode |λ| = {_fmt(beta[slowest])}, "
            f"α = {_fmt(alpha[slowest])}; Σα = {_fmt(a.get('total_alpha'))}; "
            f"{a.get('n_fixed_points')} fixed point(s)")
    if "tuned_beta" in a:
        text += f"; tuned momentum β = {_fmt(a['tuned_beta'])}, α = {_fmt(a.get('tuned_learning_rate'))}"
    if "optimal_beta" in a:
        text += f"; heavy-ball optimum β* = {_fmt(a['optimal_beta'])}, α* = {_fmt(a['optimal_alpha'])}"
    text += f"; linearisation error {_fmt(100 * err, 2)}%"
    if np.isfinite(err) and err > LINEAR_OK:
        text += " (**too large: the linear description does not hold here**)"
    verdict = "found" if found else "not found"
    if found and np.isfinite(err) and err > LINEAR_OK:
        verdict = "found, but not linear"
    return verdict, text


def clipping_row(tree: xr.DataTree) -> tuple[str, str]:
    a = _attrs(tree, "clipping")
    if a is None:
        return "not analysed", "run `lopt-trace analyze clipping`"
    frac = float(a.get("fraction_beyond", np.nan))
    found = np.isfinite(float(a.get("threshold", np.nan))) and frac > 0
    text = (f"saturates beyond |g| = {_fmt(a.get('threshold'))} (as if clipped at "
            f"{_fmt(a.get('clip_equivalent'))}; largest |Δx| {_fmt(a.get('update_limit'))}); "
            f"{_fmt(100 * frac, 2)}% of recorded gradients lie beyond it")
    return ("found" if found else "not found (no recorded gradient reaches the saturation)"), text


def schedule_row(tree: xr.DataTree) -> tuple[str, str]:
    a = _attrs(tree, "schedule")
    if a is None:
        return "not analysed", "run `lopt-trace analyze schedule`"
    e0, peak, end = (float(a.get(k, np.nan)) for k in ("eta_start", "eta_peak", "eta_end"))
    rp, re = peak / e0, end / e0
    found = abs(rp - 1) > RATIO_OK or abs(re - 1) > RATIO_OK
    text = (f"autonomous effective LR {_fmt(e0)} → {_fmt(end)} over {a.get('steps')} steps "
            f"(peak/initial ×{_fmt(rp)} at step {a.get('eta_peak_step')}, final/initial ×{_fmt(re)})")
    kind = []
    if rp - 1 > RATIO_OK:
        kind.append("warm-up")
    if re < rp * (1 - RATIO_OK):
        kind.append("decay")
    return (f"found ({' and '.join(kind) or 'change'})" if found else "not found"), text


def adaptation_row(tree: xr.DataTree) -> tuple[str, str]:
    a = _attrs(tree, "adaptation")
    if a is None:
        return "not analysed", "run `lopt-trace analyze adaptation`"
    e0 = float(a.get("eta_zero", np.nan))
    pos, neg = float(a.get("eta_positive", np.nan)) / e0, float(a.get("eta_negative", np.nan)) / e0
    text = (f"effective LR at the fixed point {_fmt(e0)} at g* = 0; ×{_fmt(pos)} at "
            f"g* = +{_fmt(a.get('g_max'))} and ×{_fmt(neg)} at g* = −{_fmt(a.get('g_max'))} "
            f"({a.get('converged')}/{a.get('solves')} solves converged)")
    if not np.isfinite(e0):
        return "not found (no finite η at g* = 0)", text
    if pos < 1 - RATIO_OK and neg < 1 - RATIO_OK:
        return "found (η falls on both arms, as in RMSProp)", text
    if abs(pos - 1) <= RATIO_OK and abs(neg - 1) <= RATIO_OK:
        return "not found", text
    return "partly (η changes, but not on both arms as in RMSProp)", text


def layers_row(tree: xr.DataTree) -> tuple[str, str] | None:
    a = _attrs(tree, "layers")
    if a is None:
        return None
    ds = tree["analysis/layers"].to_dataset()
    eta = ds["tensor_effective_learning_rate"].isel(step=-1)
    if eta.sizes["tensor"] < 2:
        return None
    kinds = ds["tensor_kind"].values
    layers = ds["tensor_layer"].values
    med = _dict(a.get("median_abs_gradient", {}))
    parts = []
    for t, e, k, layer in zip(ds["tensor"].values, eta.values, kinds, layers):
        parts.append(f"{t} {_fmt(e)} (|g| {_fmt(med.get(str(t), np.nan), 2)})")
    values = np.asarray(eta.values, float)
    spread = (np.nanmax(values) - np.nanmin(values)) / max(abs(np.nanmedian(values)), 1e-300)
    if not spread > 0.01:
        return (f"not found (every tensor within {100 * spread:.2g}% of the others)",
                "effective LR at the last step per tensor: " + "; ".join(parts))
    by_kind = {k: float(np.nanmedian(values[kinds == k])) for k in np.unique(kinds)}
    slower = ("biases slower than weights" if by_kind.get("bias", np.nan) < by_kind.get("weight", np.nan)
              else "biases not slower than weights")
    w = np.flatnonzero(kinds == "weight")
    order = np.argsort(layers[w])
    later_faster = bool(np.all(np.diff(values[w][order]) > 0))
    verdict = (f"{slower}; later layers {'faster' if later_faster else 'not uniformly faster'} "
               f"(spread {100 * spread:.2g}% of the median)")
    return verdict, "effective LR at the last step per tensor: " + "; ".join(parts)


def meta_training(tree: xr.DataTree) -> str:
    try:
        h = tree["meta_train"].to_dataset()
    except KeyError:
        return "no meta-training history in the store"
    cfg = _dict(tree["meta_train"].attrs.get("metatrain", "{}")) if "metatrain" in tree["meta_train"].attrs else {}
    n = h.sizes.get("iteration", 0)
    text = f"{n} meta-iterations"
    if "warm_start" in cfg or "warm_start" in tree["meta_train"].attrs:
        text += ", warm-started"
    if "validation" in h:
        v = h["validation"].values
        text += f"; validation {_fmt(v[0])} at the start → best {_fmt(np.nanmin(v))}"
    return text


def emergence_line(tree: xr.DataTree) -> str | None:
    """When each mechanism made half its net change over meta-training (``/analysis/emergence``)."""
    a = _attrs(tree, "emergence")
    if a is None:
        return None
    half = _dict(a.get("halfway", {}))
    seen = [f"{k} by iteration {v}" for k, v in half.items() if v is not None]
    flat = [k for k, v in half.items() if v is None]
    text = (f"Emergence over {a.get('n_checkpoints')} θ checkpoints (iterations {a.get('first_iteration')}–"
            f"{a.get('last_iteration')}; `/analysis/emergence`): half of the net change was made by "
            + (", ".join(seen) or "—"))
    if flat:
        text += f"; no net change (< 1%) in: {', '.join(flat)}"
    return text + "."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", action="append", required=True, metavar="TASK=PATH[:GROUP]")
    p.add_argument("--optimizer", default="learned", help="default optimizer group (default learned)")
    p.add_argument("--distill", action="append", default=[], metavar="LABEL=PATH",
                   help="a store with /analysis/distill for the distillation section (repeatable)")
    a = p.parse_args(argv)
    out = [
        "# What the learned optimizers learned",
        "",
        "Generated by `python scripts/findings.py` from the analyses stored in one store per task "
        f"({datetime.date.today().isoformat()}). For each of the paper's mechanisms: whether the "
        "analysis finds it, its numbers, and the paper's finding. Rules (in the script): momentum "
        "is *found* when the modes' |λ| averaged with weights |α_i| is at least 0.5 (a memory of "
        "more than about two steps); a schedule or "
        f"adaptation when a ratio moves more than {int(100 * RATIO_OK)}% from 1; a linearisation "
        f"error above {int(100 * LINEAR_OK)}% means the linear description does not hold.",
        "",
    ]
    for spec in a.store:
        task, _, rest = spec.partition("=")
        path, _, group = rest.partition(":")
        group = group or a.optimizer
        tree = xr.open_datatree(path, engine="zarr", chunks={})
        for recipe in ("momentum", "clipping", "schedule", "adaptation", "layers"):
            attrs = _attrs(tree, recipe)
            if attrs is not None and attrs.get("optimizer") not in (None, group):
                print(f"{path}: /analysis/{recipe} is for {attrs.get('optimizer')!r}, not {group!r}; "
                      f"run `lopt-trace analyze all {path} --optimizer {group}`", file=sys.stderr)
                return 1
        when = emergence_line(tree)
        out += [f"## {task} (`{group}`)", "", meta_training(tree), ""] + ([when, ""] if when else []) + [
                "| mechanism | verdict | numbers | paper |", "| --- | --- | --- | --- |"]
        rows = {"momentum": momentum_row(tree), "clipping": clipping_row(tree),
                "schedule": schedule_row(tree), "adaptation": adaptation_row(tree)}
        lay = layers_row(tree)
        if lay is not None:
            rows["layers"] = lay
        for name, (verdict, text) in rows.items():
            out.append(f"| {name} | {verdict} | {text} | {PAPER[name]} |")
        out.append("")
    if a.distill:
        from distill_table import section

        out.append(section(a.distill))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
