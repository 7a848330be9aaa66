"""Choosing a candidate that generalises (near-ties to the steadiest) and scoring it on validation problems."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from lopt_trace import seeds as seedlib
from lopt_trace.errors import UserError
from lopt_trace.optimizers import ComponentwiseOptimizer
from lopt_trace.tasks.base import Task
from lopt_trace.tune.scoring import (default_batch, equal_batches, evaluate_batches, make_evaluator,
                                     sample_problems)
from lopt_trace.tune.space import OBJECTIVES

#: base of the training-range seeds of the validation problems that score the selected candidate
#: (far from the tuning problems, meta-training's problems and meta-training's validation problems)
TUNE_VALIDATION_SEED_BASE = 24680


#: validation problems of ``lopt-trace tune`` (``--validation-problems``)
DEFAULT_VALIDATION_PROBLEMS = 16


# -- selection -------------------------------------------------------------------------------------
#: how :func:`select` chooses, in words (stored with every result)
SELECTION_RULE = ("lowest mean over the tuning problems, unless other candidates are within one "
                  "standard error of it (sem of the per-problem difference to it); then, among "
                  "those, the one whose objective varies least across the problems (std)")


def select(objective: np.ndarray) -> dict:
    """Choose a candidate that generalises, from ``objective (samples, problems)``.

    The lowest-mean candidate b is the reference. Candidate i is *tied* with it when
    mean_i − mean_b ≤ sem_i, the standard error of the per-problem paired difference
    d_ij = objective_ij − objective_bj (std over problems, ddof 1, / √problems; b is tied with
    itself). Among the tied candidates the one with the smallest std over problems is chosen
    (then the lower mean, then the lower index). With one problem no sem exists and the
    lowest mean is chosen. A candidate with a non-finite score is never tied.

    Returns ``{"lowest_mean", "selected", "rule", "tied_count"}`` (indices, -1 when every
    candidate failed; ``rule`` is ``"lowest mean"`` or ``"least spread among near-ties"``) and the
    per-candidate arrays ``"mean"``, ``"paired_sem"``, ``"spread"``, ``"tied"`` (samples,).
    """
    obj = np.asarray(objective, np.float64)
    n, p = obj.shape
    finite = np.all(np.isfinite(obj), axis=1)
    mean = np.where(finite, obj.mean(axis=1), np.inf) if p else np.full(n, np.inf)
    out = {"mean": mean, "paired_sem": np.full(n, np.nan), "spread": np.full(n, np.nan),
           "tied": np.zeros(n, bool), "lowest_mean": -1, "selected": -1, "rule": "none",
           "tied_count": 0}
    if not finite.any():
        return out
    best = int(np.argmin(mean))
    with np.errstate(invalid="ignore"):
        diff = np.where(finite[:, None], obj - obj[best], np.nan)
        if p > 1:
            out["paired_sem"] = diff.std(axis=1, ddof=1) / math.sqrt(p)
            out["spread"] = np.where(finite, np.where(finite[:, None], obj, 0.0).std(axis=1, ddof=1), np.nan)
        tied = finite & (mean - mean[best] <= out["paired_sem"])
    tied[best] = True
    idx = np.flatnonzero(tied)
    spread = np.where(np.isnan(out["spread"][idx]), 0.0, out["spread"][idx])
    chosen = int(idx[np.lexsort((idx, mean[idx], spread))[0]])
    out.update(tied=tied, lowest_mean=best, selected=chosen, tied_count=int(tied.sum()),
               rule="lowest mean" if chosen == best else "least spread among near-ties")
    return out


def with_selection(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with :func:`select`'s per-candidate numbers (``paired_sem``, ``objective_std``,
    ``tied``) and its choice (attributes ``selected_sample``, ``selected_by``, ``tied_count``,
    ``selection_rule``). ``best_sample`` stays the lowest mean."""
    sel = select(ds["objective"].values)
    ds = ds.copy()
    ds["paired_sem"] = xr.Variable("sample", sel["paired_sem"], {
        "long_name": "sem over problems of the per-problem difference to the lowest-mean candidate",
        "units": "1"})
    ds["objective_std"] = xr.Variable("sample", sel["spread"], {
        "long_name": "standard deviation of the objective over problems", "units": "1"})
    ds["tied"] = xr.Variable("sample", sel["tied"], {
        "long_name": "mean within one paired sem of the lowest mean (a near-tie)", "units": "1"})
    ds.attrs.update({"selected_sample": int(sel["selected"]), "selected_by": sel["rule"],
                     "tied_count": int(sel["tied_count"]), "selection_rule": SELECTION_RULE})
    return ds


# -- validation ------------------------------------------------------------------------------------
def validation_seeds(problems: int, base: int = TUNE_VALIDATION_SEED_BASE) -> np.ndarray:
    """Training-range seeds of the problems the selected candidate is validated on (disjoint from
    the tuning problems, meta-training's problems and its validation problems, and the test
    seeds; a test checks)."""
    return seedlib.train_seeds(base, 0, problems)


def _theta_rows(ds: xr.Dataset, rows: list[int]) -> dict[str, np.ndarray]:
    """θ of the candidates ``rows`` of a tuning dataset, float32 with a leading axis."""
    names = [k for k in ds.data_vars if ds[k].dims == ("sample",) and k in _theta_names(ds)]
    return {k: np.asarray(ds[k].values[rows], np.float32) for k in names}


def _theta_names(ds: xr.Dataset) -> list[str]:
    return [*ds.attrs.get("search_space", {}), *ds.attrs.get("fixed", {})]


#: at most this many near-tied candidates are validated (the steadiest first)
MAX_VALIDATED = 64


def with_validation(task: Task, optimizer: ComponentwiseOptimizer, ds: xr.Dataset, problems: int,
                    seed_base: int = TUNE_VALIDATION_SEED_BASE) -> xr.Dataset:
    """``ds`` (with a selection) scored on ``problems`` validation problems
    (:func:`validation_seeds`), same horizon and objective.

    The selected and the lowest-mean candidates are run there. If the selected one diverges on a
    validation problem (a step size at the edge of stability for problems it was not tuned on),
    the other near-tied candidates (at most :data:`MAX_VALIDATED`, steadiest first) are run in
    that order, a batch at a time, until one diverges on none: the selection moves to it, else to
    the lowest mean; ``selected_by`` says so. (The result is the one of running every near-tie;
    only what decides it is run: on MNIST each near-tie costs as much as four tuning batches.)
    Adds ``validation_objective (choice, validation_problem)`` with ``choice`` = selected,
    lowest_mean, and attributes ``validation_mean``, ``validation_sem`` (of the selected one),
    ``validation_problems``, ``validation_seed_base`` and ``validated_count`` (the candidates
    run)."""
    seeds = validation_seeds(problems, seed_base)
    if np.any(seeds >= seedlib.TEST_SEED_START):
        raise UserError("validation seeds must lie in the training range")
    selected, best = int(ds.attrs["selected_sample"]), int(ds.attrs["best_sample"])
    tied = np.flatnonzero(ds["tied"].values) if "tied" in ds else np.array([selected])
    spread = ds["objective_std"].values[tied] if "objective_std" in ds else np.zeros(len(tied))
    order = [int(i) for i in tied[np.lexsort((tied, np.nan_to_num(spread, nan=0.0)))]][:MAX_VALIDATED]
    fn = make_evaluator(task, optimizer, int(ds.attrs["steps"]), ds.attrs.get("objective", "meta"))
    validation = sample_problems(task, seeds)
    scores: dict[int, np.ndarray] = {}  # candidate -> its scores on the validation problems

    def run(rows: list[int]) -> None:
        rows = [r for r in rows if r not in scores]
        if rows:
            batch, _ = equal_batches(len(rows), default_batch(task, problems, len(rows)))
            for _, lo, hi, s, _ in evaluate_batches(fn, _theta_rows(ds, rows), validation, batch):
                scores.update(zip(rows[lo:hi], s))

    def stable(r: int) -> bool:
        return bool(np.all(np.isfinite(scores[r])))

    run(sorted({selected, best}))
    ds = ds.copy()
    if not stable(selected):
        step, fallback = default_batch(task, problems, len(order)), None
        for end in range(step, len(order) + step, step):  # the first stable one in ``order``
            run(order[:end])
            fallback = next((r for r in order[:end] if stable(r)), None)
            if fallback is not None:
                break
        if fallback is None:
            fallback = best if stable(best) else selected
        if fallback != selected:
            ds.attrs["selected_sample"] = int(fallback)
            ds.attrs["selected_by"] = (f"{ds.attrs['selected_by']}; candidate {selected} diverged on a "
                                       "validation problem, so the next "
                                       + ("steadiest near-tie" if fallback in order else "lowest mean"))
            selected = int(fallback)
    per_choice = np.stack([scores[selected], scores[best]])
    ds = ds.assign_coords(
        choice=("choice", np.array(["selected", "lowest_mean"], dtype=object),
                {"long_name": "which candidate: the selected one or the lowest mean"}),
        validation_problem=("validation_problem", np.asarray(seeds, np.int64),
                            {"long_name": "validation problem seed (training range)", "units": "1"}))
    ds["validation_objective"] = xr.Variable(("choice", "validation_problem"), per_choice, {
        "long_name": f"{OBJECTIVES[ds.attrs.get('objective', 'meta')]} on validation problems",
        "units": "1"})
    mean, sem = mean_sem(per_choice[0])
    ds.attrs.update({"validation_mean": mean, "validation_sem": sem, "validated_count": len(scores),
                     "validation_problems": int(problems), "validation_seed_base": int(seed_base)})
    return ds


def mean_sem(values) -> tuple[float, float]:
    """Mean and sem (std ddof 1 / √n) of a 1-D array in float64; ``inf``/``nan`` when any value is
    not finite, ``nan`` sem for one value."""
    v = np.asarray(values, np.float64)
    if not np.all(np.isfinite(v)):
        return float("inf") if not np.any(np.isnan(v)) else float("nan"), float("nan")
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), sem


def best_config(ds: xr.Dataset, sample: int | None = None) -> dict:
    """The candidate with the lowest mean objective over the tuning problems (or candidate
    ``sample``): ``{"theta", "objective", "sem", "sample"}``, ``sem`` over problems.

    This is the plain "best on the tuning problems" (the warm start of meta-training uses it);
    tuned baselines are bundled by :func:`selected_config` instead, which breaks near-ties toward
    a candidate that varies less across problems. Raises :class:`UserError` when every candidate
    failed.
    """
    mean = ds["mean_objective"].values
    if not np.any(np.isfinite(mean)):
        raise UserError(f"every {ds.attrs['optimizer']['name']} candidate diverged; widen or lower "
                        "the learning-rate range")
    i = int(np.argmin(mean)) if sample is None else int(sample)
    names = _theta_names(ds) or [k for k in ds.data_vars if ds[k].dims == ("sample",)
                                 and k not in ("mean_objective", "failed")]
    _, sem = mean_sem(ds["objective"].values[i])
    return {"theta": {k: float(ds[k].values[i]) for k in names}, "objective": float(mean[i]),
            "sem": sem, "sample": i}


def selected_config(ds: xr.Dataset) -> dict:
    """The candidate chosen by :func:`select` (computed here if ``ds`` lacks it): what
    :func:`best_config` returns for it, plus ``"selected_by"``, ``"tied_count"``,
    ``"lowest_mean_sample"`` and, when ``ds`` has them, ``"validation"`` (``mean``, ``sem``,
    ``problems``, ``seed_base``, and ``lowest_mean``: the lowest-mean candidate's mean there)."""
    if "selected_sample" not in ds.attrs:
        ds = with_selection(ds)
    a = ds.attrs
    out = best_config(ds, a["selected_sample"] if a["selected_sample"] >= 0 else None)
    out.update(selected_by=a["selected_by"], tied_count=int(a["tied_count"]),
               lowest_mean_sample=int(a["best_sample"]))
    if "validation_mean" in a:
        lowest, _ = mean_sem(ds["validation_objective"].sel(choice="lowest_mean").values)
        out["validation"] = {"mean": float(a["validation_mean"]), "sem": float(a["validation_sem"]),
                             "problems": int(a["validation_problems"]),
                             "seed_base": int(a["validation_seed_base"]), "lowest_mean": lowest}
    return out

