"""One random search: plan, run (resumable batch by batch) and its ``xarray.Dataset``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from lopt_trace import seeds as seedlib
from lopt_trace.errors import UserError
from lopt_trace.optimizers import ComponentwiseOptimizer
from lopt_trace.provenance import utc_now
from lopt_trace.tasks.base import Task
from lopt_trace.tune.scoring import (
    TUNE_SEED_BASE,
    SearchProgress,
    default_batch,
    equal_batches,
    evaluate_batches,
    make_evaluator,
    sample_problems,
    tuning_seeds,
)
from lopt_trace.tune.selection import (
    TUNE_VALIDATION_SEED_BASE,
    with_selection,
    with_validation,
)
from lopt_trace.tune.space import (
    OBJECTIVES,
    LogUniform,
    sample_candidates,
    tuning_setup,
    with_fixed,
)


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """Everything a random search evaluates, fixed up front from the seeds: the candidates
    ``{name: (samples,)}``, their θ (leading axis ``samples``), the problem seeds ``(problems,)``,
    the horizon and the batches. Any part of the search can therefore be run, or run again, alone."""

    label: str
    space: dict
    candidates: dict
    thetas: dict
    seeds: np.ndarray
    steps: int
    batch: int
    n_batches: int
    seed: int
    seed_base: int

    @property
    def samples(self) -> int:
        return len(next(iter(self.candidates.values())))


def plan_search(task: Task, space: dict[str, LogUniform], to_theta: Callable, samples: int,
                problems: int, steps: int | None = None, batch: int | None = None, seed: int = 0,
                seed_base: int = TUNE_SEED_BASE, label: str = "") -> SearchPlan:
    """The :class:`SearchPlan` of a random search (see :func:`random_search` for the arguments)."""
    if int(samples) < 1 or int(problems) < 1:
        raise UserError("--samples and --seeds must be positive integers")
    seeds = tuning_seeds(problems, seed_base)
    if np.any(seeds >= seedlib.TEST_SEED_START):
        raise UserError("tuning seeds must lie in the training range")
    candidates = sample_candidates(space, samples, seed)
    batch, n_batches = equal_batches(int(samples), int(batch or default_batch(task, problems, samples)))
    return SearchPlan(label, dict(space), candidates, to_theta(candidates), seeds,
                      int(steps or task.default_steps), batch, n_batches, int(seed), int(seed_base))


def run_search(task: Task, optimizer: ComponentwiseOptimizer, plan: SearchPlan, objective: str = "meta",
               state: SearchProgress | None = None, progress: bool = True,
               evaluator: Callable | None = None, stop: Callable[[int], bool] | None = None,
               after_batch: Callable[[SearchProgress], None] | None = None) -> SearchProgress:
    """Evaluate the batches of ``plan`` that ``state`` has not done yet (all, without ``state``).

    ``stop(i)`` is asked before batch ``i`` (never before the first of this call) and ends the
    call early when true; ``after_batch(state)`` runs after each batch (to write a checkpoint).
    Returns the progress: complete when ``state.done == plan.n_batches``.
    """
    state = state or SearchProgress.start(plan.samples, len(plan.seeds))
    if state.done >= plan.n_batches:
        return state
    fn = evaluator or make_evaluator(task, optimizer, plan.steps, objective)
    problems = sample_problems(task, plan.seeds)
    first = True
    with tqdm(total=plan.samples, initial=min(plan.samples, state.done * plan.batch),
              desc=f"tune {plan.label or optimizer.name}", unit="cand", disable=not progress) as bar:
        batches = evaluate_batches(fn, plan.thetas, problems, plan.batch, state.done)
        while state.done < plan.n_batches:
            if not first and stop is not None and stop(state.done):
                break
            i, lo, hi, scores, seconds = next(batches)
            state.record(i, lo, hi, scores, seconds, plan.batch, first)
            first = False
            bar.update(hi - lo)
            if after_batch is not None:
                after_batch(state)
    return state


def search_dataset(task: Task, optimizer: ComponentwiseOptimizer, plan: SearchPlan,
                   scores: np.ndarray, timing: dict, objective: str = "meta") -> xr.Dataset:
    """The dataset of a finished search (described above) from its plan and ``scores
    (samples, problems)``."""
    failed = ~np.all(np.isfinite(scores), axis=1)
    mean = np.where(failed, np.inf, np.mean(np.where(np.isfinite(scores), scores, 0.0), axis=1,
                                            dtype=np.float64))
    best = int(np.argmin(mean)) if np.any(np.isfinite(mean)) else -1
    samples = plan.samples
    label = plan.label or optimizer.name

    ds = xr.Dataset(coords={
        "sample": ("sample", np.arange(samples, dtype=np.int64),
                   {"long_name": "candidate index", "units": "1"}),
        "problem": ("problem", np.asarray(plan.seeds, np.int64),
                    {"long_name": "problem seed (training range)", "units": "1"}),
    })
    for k, v in plan.candidates.items():
        ds[k] = xr.Variable("sample", np.asarray(v, np.float64),
                            {"long_name": f"{label} {k} ({plan.space[k].describe()})", "units": "1"})
    ds["objective"] = xr.Variable(("sample", "problem"), scores,
                                  {"long_name": OBJECTIVES[objective], "units": "1"})
    ds["mean_objective"] = xr.Variable("sample", mean,
                                       {"long_name": "objective averaged over problems (inf if any failed)",
                                        "units": "1"})
    ds["failed"] = xr.Variable("sample", failed,
                               {"long_name": "loss became NaN or Inf on at least one problem",
                                "units": "1"})
    ds.attrs.update({
        "optimizer": optimizer.config(),
        "task": task.name,
        "task_config": task.config(),
        "search_space": {k: v.to_dict() for k, v in plan.space.items()},
        "fixed": {},
        "objective": objective,
        "objective_description": OBJECTIVES[objective],
        "steps": plan.steps,
        "samples": int(samples),
        "problems": int(len(plan.seeds)),
        "seed_base": int(plan.seed_base),
        "sampler_seed": int(plan.seed),
        "failed_total": int(failed.sum()),
        "best_sample": best,
        "best_objective": float(mean[best]) if best >= 0 else float("inf"),
        "created": utc_now(),
        **{k: (float(v) if isinstance(v, float) else v) for k, v in timing.items()},
    })
    return ds


def random_search(task: Task, optimizer: ComponentwiseOptimizer, space: dict[str, LogUniform],
                  to_theta: Callable[[dict[str, np.ndarray]], dict], samples: int, problems: int,
                  steps: int | None = None, batch: int | None = None, seed: int = 0,
                  seed_base: int = TUNE_SEED_BASE, objective: str = "meta", progress: bool = True,
                  label: str | None = None) -> xr.Dataset:
    """Random search over ``space``; ``to_theta`` maps candidates ``{name: (samples,)}`` to a
    batch of θ for ``optimizer`` (leading axis: candidate). Returns the dataset described above
    (one variable per name in ``space``); :func:`tune` and :mod:`lopt_trace.warm_start` use it.

    The pieces, for a search that is checkpointed and resumed (:func:`tune_to_store`):
    :func:`plan_search`, :func:`run_search`, :func:`search_dataset`.
    """
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    plan = plan_search(task, space, to_theta, samples, problems, steps, batch, seed, seed_base,
                       label or optimizer.name)
    state = run_search(task, optimizer, plan, objective, progress=progress)
    return search_dataset(task, optimizer, plan, state.scores, state.timing(plan.batch), objective)


def tune(task: Task, optimizer: str, samples: int = 2500, problems: int = 8,
         steps: int | None = None, batch: int | None = None, seed: int = 0,
         seed_base: int = TUNE_SEED_BASE, objective: str = "meta",
         space: dict[str, LogUniform] | None = None, progress: bool = True,
         validation_problems: int = 0,
         validation_seed_base: int = TUNE_VALIDATION_SEED_BASE) -> xr.Dataset:
    """Random search for one baseline on ``task``; returns the dataset described above, with the
    selection (:func:`with_selection`) and, for ``validation_problems > 0``, the selected
    candidate's scores on validation problems (:func:`with_validation`).

    Args:
      task: the task.
      optimizer: ``sgd``, ``momentum``, ``rmsprop``, ``adam`` or an ``optax:`` spec.
      samples: number of random candidates.
      problems: number of training-range problems each candidate is scored on.
      steps: horizon K (default: the task's).
      batch: candidates per jitted call (default :func:`default_batch`).
      seed: seed of the candidate sampler.
      seed_base: base of the problem seeds (:func:`tuning_seeds`).
      objective: ``"meta"`` (the meta-objective, default) or ``"final"`` (f_K / f_0).
      space: search space (default :data:`SEARCH_SPACES`); keys must be θ entries.
      validation_problems: held-out training-range problems that score the selected candidate
        (0: none; the CLI's default is :data:`DEFAULT_VALIDATION_PROBLEMS`).
      validation_seed_base: base of their seeds (:func:`validation_seeds`).
    """
    opt, space, to_theta, fixed = tuning_setup(optimizer, space)
    ds = random_search(task, opt, space, to_theta, samples, problems, steps, batch, seed,
                       seed_base, objective, progress, label=optimizer)
    return finish_search(task, opt, with_fixed(ds, fixed, optimizer), validation_problems,
                         validation_seed_base)


def finish_search(task: Task, optimizer: ComponentwiseOptimizer, ds: xr.Dataset,
                  validation_problems: int = 0,
                  validation_seed_base: int = TUNE_VALIDATION_SEED_BASE) -> xr.Dataset:
    """A searched dataset with its selection and (``validation_problems > 0``) validation."""
    ds = with_selection(ds)
    if validation_problems and ds.attrs["selected_sample"] >= 0:
        ds = with_validation(task, optimizer, ds, validation_problems, validation_seed_base)
    return ds

