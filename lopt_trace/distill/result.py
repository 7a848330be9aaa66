"""``/analysis/distill``: build the distilled optimizer, run it against the learned optimizer and
tuned momentum, and put everything in one Dataset (docs/analysis.md, "distill").

Dims: ``variant`` (``learned``, ``tuned_momentum``, ``distilled``, ``no_<mechanism>`` …,
``no_mechanisms``, and the other clip position, ``clip_on_update`` or ``clip_on_gradient``),
``problem`` (the held-out seeds), ``loss_step`` (0..K) and ``mechanism``.
Variables: ``loss (variant, problem, loss_step)``, ``meta_objective (variant, problem)`` and its
mean and sem over problems, ``recovered`` (with ``_sem``, ``_low``, ``_high``) per variant,
``carried`` (the same) per mechanism, ``diverged`` and ``curve_gap`` per variant, and the
distilled θ as ``theta_<name>`` (so :func:`distilled_from_result` rebuilds the optimizer from
the result alone).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from lopt_trace import seeds as seedlib
from lopt_trace.analysis.conventions import attrs
from lopt_trace.analysis.rebuild import baseline_hyperparameters, rebuild, run_group, select_optimizer
from lopt_trace.distill.build import build
from lopt_trace.distill.evaluate import (DISTILLED, LEARNED, MOMENTUM, Variant, curve_gap, loss_curves,
                                         meta_objective, paired_difference, recovered, spread,
                                         variant_thetas, variants)
from lopt_trace.errors import UserError
from lopt_trace.optimizers import Momentum, make_optimizer
from lopt_trace.optimizers.distilled import CLIP_AT
from lopt_trace.tasks import task_from_config
from lopt_trace.theta import theta_from_dataset, theta_to_dataset

#: held-out problems start at seed 1e9 + this, past the store's own runs (``record --seed 0``)
DEFAULT_SEED_BASE = 1_000_000
#: at most this many of the store's own runs choose where the clip acts
MAX_VALIDATION = 8
PREFIX = "theta_"


def tuned_momentum(tree: xr.DataTree) -> tuple[Momentum, dict, str]:
    """Heavy-ball momentum with the store's tuned θ: its ``/runs/momentum`` group's when it was
    recorded, else the bundled tuned values for the task."""
    theta = baseline_hyperparameters(tree, "momentum")
    if not theta or not {"learning_rate", "beta"} <= set(theta):
        task = tree.attrs.get("task", "TASK")
        raise UserError(f"no tuned momentum for {task}: the store has no /runs/momentum group and no "
                        f"tuned values are bundled; record the store with `--optimizer momentum`, or "
                        f"run `lopt-trace tune --task {task} --optimizer momentum --bundle`")
    recorded = "runs" in tree.children and "momentum" in tree["runs"].children
    source = "/runs/momentum of the store" if recorded else f"bundled tuned values for {tree.attrs.get('task')}"
    return Momentum(), {k: np.float32(theta[k]) for k in ("learning_rate", "beta")}, source


def problem_seeds(tree: xr.DataTree, problems: int, seed_base: int) -> np.ndarray:
    """``problems`` held-out seeds from ``seed_base``; none of them may be one of the store's runs
    (the analyses were made on those)."""
    if int(problems) < 2:
        raise UserError(f"distill needs at least 2 problems for an uncertainty, got {problems}")
    seeds = seedlib.test_seeds(int(seed_base), int(problems))
    overlap = sorted(set(int(s) for s in tree.attrs.get("seeds", [])) & set(int(s) for s in seeds))
    if overlap:
        raise UserError(f"the distill problems (seeds {seeds[0]}..{seeds[-1]}) include the store's own "
                        f"runs ({overlap[0]}, ...); choose another --seed-base")
    return seeds


def _task(tree: xr.DataTree):
    config = tree.attrs.get("task_config")
    if not config:
        raise UserError("the store has no task_config attribute; is it a lopt-trace store?")
    return task_from_config(dict(config))


def compute(tree: xr.DataTree, optimizer: str | None = None, problems: int = 64,
            seed_base: int = DEFAULT_SEED_BASE, bootstrap: int = 2000, seed: int = 0,
            progress: bool = False, store: str = "STORE") -> xr.Dataset:
    """Distil group ``optimizer`` (default: ``learned``, else the first), choose where its clip
    acts on the store's own runs, run every variant and the references on ``problems`` held-out
    problems, and return the result (module doc)."""
    name = select_optimizer(tree, optimizer)
    made = build(tree, name, store)
    learned, learned_theta = rebuild(tree, name)
    mom, mom_theta, mom_source = tuned_momentum(tree)
    task = _task(tree)
    steps = int(made.info["steps"])
    seeds = problem_seeds(tree, problems, seed_base)
    recorded = np.asarray(run_group(tree, name)["run"].values, np.int64)[:MAX_VALIDATION]
    which = variants(made.optimizer)
    positions = {at: make_optimizer({**made.optimizer.config(), "clip_at": at}) for at in CLIP_AT}
    one = lambda th: {k: np.asarray(v)[None] for k, v in th.items()}  # noqa: E731  (a stack of one)
    nv, nr = len(seeds), len(recorded)
    total = (nr + nv) + nv + len(CLIP_AT) * nr + len(which) * nv + nv
    with tqdm(total=total, desc=f"distill {task.name}", unit="run", disable=not progress) as bar:
        ref = loss_curves(task, learned, one(learned_theta), np.concatenate([recorded, seeds]), steps, bar=bar)
        gaps = {at: float(curve_gap(loss_curves(task, opt, one(made.theta), recorded, steps, bar=bar),
                                    ref[:, :nr])[0]) for at, opt in positions.items()}
        chosen = min(CLIP_AT, key=lambda at: (gaps[at] if np.isfinite(gaps[at]) else np.inf))
        other = next(at for at in CLIP_AT if at != chosen)
        made = made._replace(optimizer=positions[chosen],
                             info={**made.info, "clip_at": chosen, "clip_at_gap": gaps,
                                   "clip_at_problems": [int(x) for x in recorded]})
        curves = [ref[:, nr:], loss_curves(task, mom, one(mom_theta), seeds, steps, bar=bar),
                  loss_curves(task, made.optimizer, variant_thetas(made.optimizer, made.theta, which),
                              seeds, steps, bar=bar),
                  loss_curves(task, positions[other], one(made.theta), seeds, steps, bar=bar)]
    loss = np.concatenate(curves)  # (V, problems, K + 1)
    labels = [Variant(LEARNED, "reference", f"the analysed optimizer ({name})"),
              Variant(MOMENTUM, "reference", f"heavy-ball momentum, tuned ({mom_source})"), *which,
              Variant(f"clip_on_{other}", "", f"every mechanism, the clip on the {other} instead of the {chosen}")]
    return _dataset(loss, labels, seeds, made, name, task, mom_theta, mom_source,
                    {"problems": int(problems), "seed_base": int(seed_base), "bootstrap": int(bootstrap),
                     "seed": int(seed)})


def _dataset(loss, labels, seeds, made, name, task, mom_theta, mom_source, settings) -> xr.Dataset:
    meta = meta_objective(loss)
    n = meta.shape[1]
    index = {v.label: i for i, v in enumerate(labels)}
    rec = recovered(meta, index[LEARNED], index[MOMENTUM], settings["bootstrap"], settings["seed"])
    mechanisms = list(made.optimizer.mechanisms)
    full = index[DISTILLED]
    carried = rec.samples[full][None] - np.stack([rec.samples[index[f"no_{m}"]] for m in mechanisms])
    c_sem, c_low, c_high = spread(carried)
    c_value = np.array([rec.value[full] - rec.value[index[f"no_{m}"]] for m in mechanisms])
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(meta)
        mean = meta.mean(axis=1)
        sem = np.where(finite.all(axis=1), np.where(finite, meta, 0).std(axis=1, ddof=1) / math.sqrt(n), np.nan)
        gap = curve_gap(loss, loss[index[LEARNED]][None])
    adv, adv_sem = paired_difference(meta[index[MOMENTUM]], meta[index[LEARNED]])

    v, m = ("variant",), ("mechanism",)
    ds = xr.Dataset(
        {"loss": (("variant", "problem", "loss_step"), loss, attrs("training loss f(x_k) on step k's batch")),
         "meta_objective": (("variant", "problem"), meta, attrs("mean_k f_k / f_0, k = 1..K (diverged: inf)")),
         "meta_objective_mean": (v, mean, attrs("meta-objective, mean over problems")),
         "meta_objective_sem": (v, sem, attrs("meta-objective, standard error of the mean")),
         "recovered": (v, rec.value, attrs("fraction of the learned optimizer's advantage over tuned "
                                           "momentum recovered: (L_momentum − L) / (L_momentum − L_learned)")),
         "recovered_sem": (v, rec.sem, attrs("recovered fraction, bootstrap standard deviation")),
         "recovered_low": (v, rec.low, attrs("recovered fraction, bootstrap 2.5th percentile")),
         "recovered_high": (v, rec.high, attrs("recovered fraction, bootstrap 97.5th percentile")),
         "carried": (m, c_value, attrs("fraction a mechanism carries: recovered(distilled) − "
                                       "recovered(distilled without it)")),
         "carried_sem": (m, c_sem, attrs("carried fraction, bootstrap standard deviation")),
         "carried_low": (m, c_low, attrs("carried fraction, bootstrap 2.5th percentile")),
         "carried_high": (m, c_high, attrs("carried fraction, bootstrap 97.5th percentile")),
         "diverged": (v, (~finite).sum(axis=1).astype(np.int64), attrs("problems whose run diverged", "count")),
         "curve_gap": (v, gap, attrs("mean over problems and steps of |f_k − f_k(learned)| / f_0"))},
        coords={"variant": np.array([x.label for x in labels], dtype=object),
                "removed": ("variant", np.array([x.removed for x in labels], dtype=object),
                            attrs("mechanism removed from the distilled optimizer")),
                "description": ("variant", np.array([x.description for x in labels], dtype=object),
                                attrs("what the variant is")),
                "problem": ("problem", np.asarray(seeds, np.int64), attrs("problem seed (held-out range)")),
                "loss_step": ("loss_step", np.arange(loss.shape[-1]), attrs("inner step k", "steps")),
                "mechanism": np.array(mechanisms, dtype=object)})
    for key, var in theta_to_dataset(made.theta).data_vars.items():
        ds[PREFIX + key] = var.assign_attrs(attrs(f"distilled optimizer θ: {key}"))
    ds.attrs = {
        "optimizer": name, "task": task.name, "task_config": task.config(),
        "steps": int(loss.shape[-1] - 1), **settings,
        "recovered": float(rec.value[full]), "recovered_sem": float(rec.sem[full]),
        "recovered_low": float(rec.low[full]), "recovered_high": float(rec.high[full]),
        "advantage": adv, "advantage_sem": adv_sem,
        "meta_objective": {x.label: float(mean[i]) for i, x in enumerate(labels)},
        "carried": dict(zip(mechanisms, (float(c) for c in c_value))),
        "mechanisms": mechanisms, "distilled_config": made.optimizer.config(),
        "distilled": made.info, "momentum_theta": {k: float(x) for k, x in mom_theta.items()},
        "momentum_source": mom_source,
    }
    return ds


def distilled_from_result(ds: xr.Dataset):
    """``(optimizer, θ)`` of the distilled optimizer stored in ``/analysis/distill``."""
    return make_optimizer(dict(ds.attrs["distilled_config"])), theta_from_dataset(ds, PREFIX)


def percent(x, inf: str = "all (runs diverge without it)") -> str:
    """A fraction as a percentage for summaries (``inf`` for +inf, n/a when undefined)."""
    x = float(x)
    if x == np.inf:
        return inf
    if not np.isfinite(x):
        return "n/a"
    return f"{100 * x:.0f}%" if abs(x) < 10 else f"{100 * x:.2g}%"


def summary(ds: xr.Dataset) -> str:
    """One line: the fraction recovered (95% interval), the meta-objectives, each mechanism's share."""
    a = ds.attrs
    mo = dict(a["meta_objective"])
    text = (f"distill: the distilled optimizer recovers {percent(a['recovered'])} (95% interval "
            f"{percent(a['recovered_low'])} to {percent(a['recovered_high'])}) of {a['optimizer']}'s advantage over "
            f"tuned momentum (meta-objective {a['optimizer']} {mo[LEARNED]:.3g}, distilled {mo[DISTILLED]:.3g}, "
            f"momentum {mo[MOMENTUM]:.3g}")
    adv, adv_sem = float(a["advantage"]), float(a["advantage_sem"])
    if not (np.isfinite(adv) and np.isfinite(adv_sem) and adv > 2 * adv_sem):
        text += f"; the advantage {adv:.3g} ± {adv_sem:.2g} is not > 2 sem, so the fraction is ill-defined"
    text += "); carried: " + ", ".join(f"{k} {percent(v)}" for k, v in dict(a["carried"]).items())
    div = {str(v): int(d) for v, d in zip(ds["variant"].values, ds["diverged"].values) if int(d)}
    if div:
        text += "; diverged runs: " + ", ".join(f"{k} {d}" for k, d in div.items())
    return text + f" [{a['problems']} held-out problems]"


__all__ = ["DEFAULT_SEED_BASE", "compute", "distilled_from_result", "percent", "problem_seeds", "summary",
           "tuned_momentum"]
