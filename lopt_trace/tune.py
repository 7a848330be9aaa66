"""Random search for the hyperparameters of the hand-designed baselines.

Each candidate θ is scored by the meta-objective of :mod:`lopt_trace.unroll`, mean_k f_k / f_0
over the task's horizon (k = 1..K), on the same ``problems`` problems for every candidate
(common random numbers), drawn from the *training* seed range with base :data:`TUNE_SEED_BASE`
(disjoint from the held-out test seeds, and from the seeds meta-training uses by default).

Candidates are evaluated in batches: one jitted call runs ``batch`` candidates × all problems
with ``vmap`` over θ and over problems. A candidate whose loss becomes NaN or Inf on any problem
scores ``inf`` on that problem and is flagged ``failed``; the search carries on.

Search spaces (:data:`SEARCH_SPACES`) are log-uniform; for a decay rate β the search samples
1 − β log-uniform, which spreads candidates evenly over 0.9, 0.99, 0.999, ...

The result of :func:`tune` is an ``xarray.Dataset`` with dims ``sample`` and ``problem``:
one variable per hyperparameter (``sample``), ``objective (sample, problem)``,
``mean_objective (sample)`` and ``failed (sample)``. :func:`tune_tree` puts one per optimizer
under ``/tune/<optimizer>`` for :func:`lopt_trace.zarr_io.write_tree`, and :func:`bundle_best`
merges the selected configurations into a ``data/tuned/<task>.json`` file.

Choosing (:func:`select`): the lowest mean over the tuning problems, except that near-ties (within
one sem of the paired per-problem difference) go to the candidate whose objective varies least
across problems; the choice is then scored on validation problems from their own training-range
seeds (:data:`TUNE_VALIDATION_SEED_BASE`, :func:`with_validation`). :func:`tune_to_store` runs
the searches of several optimizers into a store with checkpoints, a time budget and ``resume``;
:func:`tuning_curve` gives the best-so-far objective against the number of candidates, with a
band over random candidate orders and a plateau verdict. See docs/tuning.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from lopt_trace import seeds as seedlib
from lopt_trace.errors import UserError
from lopt_trace.optimizers import BASELINES, ComponentwiseOptimizer, make_optimizer
from lopt_trace.provenance import command_line, utc_now, versions
from lopt_trace.store import locked_output
from lopt_trace.tasks.base import Problem, Task
from lopt_trace.unroll import loss_curve, meta_objective

#: base of the training-range seeds that tuning draws its problems from (meta-training uses its
#: ``--seed``, 0 by default, as base; this one is far from it)
TUNE_SEED_BASE = 12345
#: base of the training-range seeds of the validation problems that score the selected candidate
#: (far from the tuning problems, meta-training's problems and meta-training's validation problems)
TUNE_VALIDATION_SEED_BASE = 24680
#: validation problems of ``lopt-trace tune`` (``--validation-problems``)
DEFAULT_VALIDATION_PROBLEMS = 16


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """A hyperparameter drawn log-uniformly from [low, high].

    With ``complement``, the log-uniform draw is 1 − value (for decay rates such as β), so the
    value itself lies in [1 − high, 1 − low].
    """

    low: float
    high: float
    complement: bool = False

    def __post_init__(self):
        if not 0 < self.low <= self.high:
            raise ValueError(f"need 0 < low <= high, got [{self.low}, {self.high}]")
        if self.complement and self.high > 1:
            raise ValueError("a complement range must lie within (0, 1]")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = np.exp(rng.uniform(math.log(self.low), math.log(self.high), size=n))
        return 1.0 - u if self.complement else u

    def describe(self) -> str:
        if self.complement:
            return f"1 − value log-uniform in [{self.low:g}, {self.high:g}]"
        return f"log-uniform in [{self.low:g}, {self.high:g}]"

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "complement": self.complement,
                "description": self.describe()}


#: The documented search space of each baseline (see docs/tuning.md). Keys are θ entries.
SEARCH_SPACES: dict[str, dict[str, LogUniform]] = {
    "sgd": {"learning_rate": LogUniform(1e-6, 10.0)},
    "momentum": {"learning_rate": LogUniform(1e-6, 10.0),
                 "beta": LogUniform(1e-3, 1.0, complement=True)},
    "rmsprop": {"learning_rate": LogUniform(1e-6, 1.0),
                "decay": LogUniform(1e-4, 1.0, complement=True),
                "eps": LogUniform(1e-10, 1.0)},
    "adam": {"learning_rate": LogUniform(1e-6, 1.0),
             "b1": LogUniform(1e-3, 1.0, complement=True),
             "b2": LogUniform(1e-5, 1.0, complement=True),
             "eps": LogUniform(1e-10, 1.0)},
}

#: what a candidate's per-problem score is
OBJECTIVES = {
    "meta": "meta-objective: mean_k f_k / f_0 over k = 1..K (non-finite: inf)",
    "final": "final normalised loss f_K / f_0 (non-finite: inf)",
}


def search_space(optimizer: str) -> dict[str, LogUniform]:
    """The search space of a baseline or of an ``optax:`` spec (derived from its hyperparameters'
    names, :func:`lopt_trace.optimizers.optax_wrap.optax_search_space`), or a :class:`UserError`
    naming the choices."""
    if optimizer.startswith("optax:"):
        from lopt_trace.optimizers.optax_wrap import optax_search_space

        return optax_search_space(make_optimizer(optimizer))
    try:
        return SEARCH_SPACES[optimizer]
    except KeyError:
        raise UserError(f"cannot tune {optimizer!r}; choose one of: {', '.join(SEARCH_SPACES)}, all, "
                        "optax:NAME") from None


def sample_candidates(space: dict[str, LogUniform], samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``samples`` random candidates, ``{name: float32 array (samples,)}``.

    Values are rounded to float32 here, so what is stored (and bundled) is exactly what was run.
    """
    rng = np.random.default_rng(seed)
    return {name: dist.sample(rng, samples).astype(np.float32) for name, dist in space.items()}


def tuning_seeds(problems: int, base: int = TUNE_SEED_BASE) -> np.ndarray:
    """The training-range seeds of the problems every candidate is scored on."""
    return seedlib.train_seeds(base, 0, problems)


def sample_problems(task: Task, seeds) -> Problem:
    """Problems for ``seeds``, stacked along a leading axis.

    Sampled eagerly (``vmap`` without ``jit``): tasks may cache data arrays on first use, which
    must not happen under a trace.
    """
    return jax.vmap(task.sample)(seedlib.problem_keys(seeds))


def _score(curve: jax.Array, objective: str) -> jax.Array:
    if objective == "meta":
        return meta_objective(curve)
    value = curve[..., -1] / curve[..., 0]
    return jnp.where(jnp.isfinite(value), value, jnp.inf)


def make_evaluator(task: Task, optimizer: ComponentwiseOptimizer, steps: int,
                   objective: str = "meta") -> Callable:
    """A jitted ``(thetas, problems) -> scores (candidates, problems)``.

    ``thetas`` is a dict of arrays with a leading candidate axis (any trailing shape, so a batch of
    GRU weights works as well as a batch of learning rates), ``problems`` a stacked
    :class:`Problem`; the call vmaps over both.
    """
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")

    def one(theta, problem):
        return _score(loss_curve(task, optimizer, theta, problem, steps), objective)

    over_problems = jax.vmap(one, in_axes=(None, 0))
    return jax.jit(jax.vmap(over_problems, in_axes=(0, None)))


def default_batch(task: Task, problems: int, samples: int) -> int:
    """Candidates per jitted call: many for tiny tasks, few for large ones (memory and cache)."""
    per_candidate = max(1, task.num_params * problems)
    return int(max(1, min(samples, 256, max(4, 2**20 // per_candidate))))


def equal_batches(total: int, batch: int) -> tuple[int, int]:
    """``(batch, n_batches)``: ``total`` candidates in equal batches of at most ``batch``, with as
    little padding as possible (the last batch is padded up to ``batch``)."""
    batch = int(max(1, min(batch, total)))
    n_batches = -(-total // batch)
    return -(-total // n_batches), n_batches


def evaluate_batches(fn: Callable, thetas: dict[str, np.ndarray], problems: Problem, batch: int,
                     start: int = 0):
    """Run the candidate batches ``start, start + 1, ...`` through ``fn``, one call each.

    ``batch`` must come from :func:`equal_batches`. Yields ``(i, lo, hi, scores, seconds)`` per
    batch: its index, its candidates ``lo:hi``, their scores ``(hi - lo, problems)`` float32 and
    the call's wall time. The last batch is padded with copies of its first candidate, so one
    compilation serves all.
    """
    names = list(thetas)
    total = len(thetas[names[0]])
    for i in range(start, -(-total // batch)):
        lo, hi = i * batch, min(total, (i + 1) * batch)
        chunk = {}
        for k in names:
            v = np.asarray(thetas[k][lo:hi], np.float32)
            if hi - lo < batch:
                v = np.concatenate([v, np.repeat(v[:1], batch - (hi - lo), axis=0)])
            chunk[k] = jnp.asarray(v)
        begin = time.perf_counter()
        scores = np.asarray(jax.block_until_ready(fn(chunk, problems)))
        yield i, lo, hi, scores[: hi - lo], time.perf_counter() - begin


def evaluate(task: Task, optimizer: ComponentwiseOptimizer, thetas: dict[str, np.ndarray],
             problems: Problem, steps: int, batch: int = 64, objective: str = "meta",
             progress: bool = True, evaluator: Callable | None = None,
             label: str | None = None) -> tuple[np.ndarray, dict]:
    """Scores of all candidates on all problems, ``(candidates, problems)`` float32, and timings.

    Candidates go through ``evaluator`` (default :func:`make_evaluator`) at most ``batch`` at a
    time, in equal batches (:func:`equal_batches`, :func:`evaluate_batches`).
    Timings: ``compile_seconds`` (the first call, including compilation), ``eval_seconds`` (all
    calls after it) and ``candidates_per_second`` (``batch`` × those calls / their time, i.e. the
    evaluator's throughput; from the first call, compilation included, when there is only one).
    """
    total = len(next(iter(thetas.values())))
    if total < 1:
        raise UserError("need at least one candidate")
    state = SearchProgress.start(total, jax.tree.leaves(problems)[0].shape[0])
    fn = evaluator or make_evaluator(task, optimizer, steps, objective)
    batch, _ = equal_batches(total, batch)
    with tqdm(total=total, desc=f"tune {label or optimizer.name}", unit="cand", disable=not progress) as bar:
        for i, lo, hi, scores, seconds in evaluate_batches(fn, thetas, problems, batch):
            state.record(i, lo, hi, scores, seconds, batch, first=i == 0)
            bar.update(hi - lo)
    return state.scores, state.timing(batch)


@dataclasses.dataclass
class SearchProgress:
    """How far a search has got: the scores of its first ``done`` batches and the time they took.

    ``scores (samples, problems)`` float32 holds valid rows for the candidates of those batches
    only. Timings add up over interruptions: ``compile_seconds`` is the first call of each session
    (compilation included), ``eval_seconds`` and ``eval_candidates`` the other calls.
    """

    scores: np.ndarray
    done: int = 0
    compile_seconds: float = 0.0
    eval_seconds: float = 0.0
    eval_candidates: int = 0

    @classmethod
    def start(cls, samples: int, problems: int) -> "SearchProgress":
        return cls(np.full((int(samples), int(problems)), np.nan, np.float32))

    def record(self, i: int, lo: int, hi: int, scores: np.ndarray, seconds: float, batch: int,
               first: bool) -> None:
        """Keep batch ``i``'s scores (candidates ``lo:hi``) and its time; ``first``: the first
        call of this session (it includes compilation)."""
        self.scores[lo:hi] = scores
        self.done = i + 1
        if first:
            self.compile_seconds += seconds
        else:  # throughput of the evaluator: padded slots count, they cost the same
            self.eval_seconds += seconds
            self.eval_candidates += batch

    def timing(self, batch: int) -> dict:
        """The timing attributes of a search dataset."""
        if self.eval_candidates and self.eval_seconds > 0:
            rate = self.eval_candidates / self.eval_seconds
        else:
            rate = min(batch, len(self.scores)) / max(self.compile_seconds, 1e-9)
        return {"compile_seconds": float(self.compile_seconds), "eval_seconds": float(self.eval_seconds),
                "candidates_per_second": float(rate), "batch": int(batch)}

    def to_dataset(self) -> xr.Dataset:
        """The progress as a checkpoint group (see :func:`search_progress`)."""
        return xr.Dataset(
            {"objective": xr.Variable(("sample", "problem"), self.scores,
                                      {"long_name": "score per problem (valid for batches < done)"})},
            attrs={"done": int(self.done), "compile_seconds": float(self.compile_seconds),
                   "eval_seconds": float(self.eval_seconds), "eval_candidates": int(self.eval_candidates)})

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> "SearchProgress":
        a = ds.attrs
        return cls(np.array(ds["objective"].values, np.float32), int(a["done"]),
                   float(a["compile_seconds"]), float(a["eval_seconds"]), int(a["eval_candidates"]))


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


def tuning_setup(optimizer: str, space: dict[str, LogUniform] | None = None
                 ) -> tuple[ComponentwiseOptimizer, dict[str, LogUniform], Callable, dict]:
    """``(optimizer, space, to_theta, fixed)`` of a baseline's search: ``to_theta`` fills the
    θ entries that ``space`` does not search with their defaults, ``fixed`` (float32)."""
    opt = make_optimizer(optimizer)
    space = dict(space or search_space(optimizer))
    default = {k: np.float32(v) for k, v in opt.init_theta().items()}
    unknown = set(space) - set(default)
    if unknown:
        raise UserError(f"search space names {sorted(unknown)} are not hyperparameters of {optimizer}")
    fixed = {k: v for k, v in default.items() if k not in space}

    def to_theta(candidates):
        n = len(next(iter(candidates.values())))
        return {k: candidates[k] if k in candidates else np.full(n, default[k], np.float32)
                for k in default}

    return opt, space, to_theta, fixed


def with_fixed(ds: xr.Dataset, fixed: dict, optimizer: str) -> xr.Dataset:
    """``ds`` with the hyperparameters the search did not vary, as constant ``sample`` variables."""
    ds.attrs["fixed"] = {k: float(v) for k, v in fixed.items()}
    for k, v in fixed.items():
        ds[k] = xr.Variable("sample", np.full(ds.sizes["sample"], float(v)),
                            {"long_name": f"{optimizer} {k} (fixed at its default)", "units": "1"})
    return ds


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


def with_validation(task: Task, optimizer: ComponentwiseOptimizer, ds: xr.Dataset, problems: int,
                    seed_base: int = TUNE_VALIDATION_SEED_BASE) -> xr.Dataset:
    """``ds`` (with a selection) plus the objective of the selected and the lowest-mean candidates
    on ``problems`` validation problems (:func:`validation_seeds`), same horizon and objective:
    ``validation_objective (choice, validation_problem)`` with ``choice`` = selected,
    lowest_mean, and attributes ``validation_mean``, ``validation_sem`` (of the selected one),
    ``validation_problems`` and ``validation_seed_base``."""
    seeds = validation_seeds(problems, seed_base)
    if np.any(seeds >= seedlib.TEST_SEED_START):
        raise UserError("validation seeds must lie in the training range")
    rows = [int(ds.attrs["selected_sample"]), int(ds.attrs["best_sample"])]
    unique = sorted(set(rows))
    fn = make_evaluator(task, optimizer, int(ds.attrs["steps"]), ds.attrs.get("objective", "meta"))
    scores = np.asarray(fn({k: jnp.asarray(v) for k, v in _theta_rows(ds, unique).items()},
                           sample_problems(task, seeds)))
    per_choice = scores[[unique.index(r) for r in rows]]
    ds = ds.copy()
    ds = ds.assign_coords(
        choice=("choice", np.array(["selected", "lowest_mean"], dtype=object),
                {"long_name": "which candidate: the selected one or the lowest mean"}),
        validation_problem=("validation_problem", np.asarray(seeds, np.int64),
                            {"long_name": "validation problem seed (training range)", "units": "1"}))
    ds["validation_objective"] = xr.Variable(("choice", "validation_problem"), per_choice, {
        "long_name": f"{OBJECTIVES[ds.attrs.get('objective', 'meta')]} on validation problems",
        "units": "1"})
    mean, sem = mean_sem(per_choice[0])
    ds.attrs.update({"validation_mean": mean, "validation_sem": sem,
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


def tune_tree(results: dict[str, xr.Dataset], task: Task) -> xr.DataTree:
    """One tree with each optimizer's dataset at ``/tune/<optimizer>``."""
    root = xr.Dataset(attrs={"task": task.name, "task_config": task.config(), "created": utc_now(),
                             "command": command_line(), "versions": versions(),
                             "optimizers": list(results)})
    nodes = {"/": root}
    nodes.update({f"/tune/{_group(name)}": ds for name, ds in results.items()})
    return xr.DataTree.from_dict(nodes)


def _group(name: str) -> str:
    """The group of an optimizer under /tune: its name; ``optax_lion`` for an ``optax:`` spec (the
    spec itself is in the group's ``optimizer`` attribute)."""
    if name.startswith("optax:"):
        from lopt_trace.optimizers.optax_wrap import optax_label

        return optax_label(name)
    return name


def load_tuned(path: str | os.PathLike) -> dict:
    """Read a tuned-hyperparameter file; ``{"task", "optimizers": {}}`` when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return {"task": None, "optimizers": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable tuned-hyperparameter file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("optimizers"), dict):
        raise UserError(f"{path} is not a tuned-hyperparameter file (no 'optimizers' mapping)")
    return data


def bundle_best(results: dict[str, xr.Dataset], path: str | os.PathLike,
                store: str | os.PathLike | None = None) -> dict:
    """Merge the selected configuration (:func:`selected_config`) of each optimizer in ``results``
    into the JSON at ``path``, with its selection, validation score and tuning-curve verdict
    (:func:`tuning_curve`); ``store``, the tune store the results came from, is recorded too.

    Entries of other optimizers already in the file are kept. Returns the whole file's content.
    """
    path = Path(path)
    data = load_tuned(path)
    for name, ds in results.items():
        task = ds.attrs["task"]
        if data.get("task") not in (None, task):
            raise UserError(f"{path} holds hyperparameters for task {data['task']!r}, not {task!r}")
        data["task"] = task
        best = selected_config(ds)
        curve = tuning_curve(ds)
        entry = {
            "theta": best["theta"],
            "objective": best["objective"],
            "objective_sem": best["sem"],
            "samples": int(ds.attrs["samples"]),
            "problems": int(ds.attrs["problems"]),
            "steps": int(ds.attrs["steps"]),
            "seed_base": int(ds.attrs["seed_base"]),
            "failed": int(ds.attrs["failed_total"]),
            "search_space": ds.attrs["search_space"],
            "task_config": ds.attrs["task_config"],
            "candidates_per_second": round(float(ds.attrs["candidates_per_second"]), 3),
            "created": ds.attrs["created"],
            "selection": {"sample": best["sample"], "selected_by": best["selected_by"],
                          "tied_count": best["tied_count"],
                          "lowest_mean_sample": best["lowest_mean_sample"],
                          "lowest_mean_objective": float(ds["mean_objective"].values[best["lowest_mean_sample"]]),
                          "rule": SELECTION_RULE},
            "tuning_curve": {"plateaued": bool(curve.attrs["plateaued"]),
                             "improvement_last_half": float(curve.attrs["improvement_last_half"]),
                             "permutations": int(curve.attrs["permutations"]),
                             "rule": curve.attrs["plateau_rule"]},
        }
        if "validation" in best:
            entry["validation"] = best["validation"]
        if store is not None:
            entry["store"] = str(store)
        data["optimizers"][name] = entry
    data["optimizers"] = {k: data["optimizers"][k] for k in sorted(data["optimizers"], key=_order)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return data


def _order(name: str) -> tuple[int, str]:
    order = list(BASELINES)
    return (order.index(name) if name in order else len(order), name)


def tuned_theta(task: str, optimizer: str, path: str | os.PathLike | None = None) -> dict | None:
    """The bundled tuned θ of ``optimizer`` for ``task`` (float32 arrays), or None if absent."""
    from lopt_trace import bundled

    if path is not None and not Path(path).is_file():  # given explicitly: missing is an error
        raise UserError(f"no tuned-hyperparameter file at {path}")
    data = load_tuned(path or bundled.tuned_path(task))
    entry = data["optimizers"].get(optimizer)
    if entry is None:
        return None
    return {k: jnp.asarray(v, jnp.float32) for k, v in entry["theta"].items()}


# -- a resumable search into a store ---------------------------------------------------------------
@dataclasses.dataclass
class TuneOutcome:
    """What :func:`tune_to_store` did: the finished results (``{optimizer: Dataset}``), why it
    stopped early (``None`` when the store was written) and ``batches`` ``{optimizer: (done,
    total)}``."""

    results: dict
    stopped: str | None
    batches: dict


def _checkpoint_tree(settings: dict, results: dict, states: dict) -> xr.DataTree:
    """The checkpoint: the settings, the finished results and the others' progress."""
    root = xr.Dataset(attrs={"settings": settings, "finished": list(results), "versions": versions(),
                             "created": utc_now(), "kind": "lopt-trace tune checkpoint"})
    nodes = {"/": root}
    nodes.update({f"/tune/{_group(n)}": ds for n, ds in results.items()})
    nodes.update({f"/tune/{_group(n)}": s.to_dataset() for n, s in states.items() if n not in results})
    return xr.DataTree.from_dict(nodes)


def _read_checkpoint(path, settings: dict) -> tuple[dict, dict]:
    """``(results, states)`` from a checkpoint made with ``settings`` (else a :class:`UserError`)."""
    from lopt_trace.zarr_io import open_tree

    tree = open_tree(path)
    if tree.attrs.get("kind") != "lopt-trace tune checkpoint":
        raise UserError(f"{path} is not a tuning checkpoint; move it away or start again with --overwrite")
    if tree.attrs["settings"] != settings:
        raise UserError(f"checkpoint {path} was made with other settings; resume with the same options")
    results, states = {}, {}
    for name in settings["optimizers"]:
        group = _group(name)
        if "tune" not in tree.children or group not in tree["tune"].children:
            continue
        ds = tree["tune"][group].to_dataset().load()
        if name in tree.attrs["finished"]:
            results[name] = ds
        else:
            states[name] = SearchProgress.from_dataset(ds)
    return results, states


def read_tune_store(path: str | os.PathLike) -> dict[str, xr.Dataset]:
    """The datasets of a tune store, ``{optimizer: Dataset}`` (loaded), in the order tuned."""
    from lopt_trace.zarr_io import exists, open_tree

    if not exists(path):
        raise UserError(f"no tune store at {path}; make one with `lopt-trace tune`")
    tree = open_tree(path)
    if "tune" not in tree.children:
        raise UserError(f"{path} is not a tune store (no /tune group)")
    names = tree.attrs.get("optimizers") or list(tree["tune"].children)
    return {n: tree["tune"][_group(n)].to_dataset().load() for n in names
            if _group(n) in tree["tune"].children}


@locked_output("tuning run")  # one `tune` per --out (lock <out>.lock, as train and record)
def tune_to_store(task: Task, optimizers: list[str], out: str | os.PathLike, *, samples: int = 2500,
                  problems: int = 8, steps: int | None = None, batch: int | None = None,
                  seed: int = 0, seed_base: int = TUNE_SEED_BASE, objective: str = "meta",
                  spaces: dict[str, dict[str, LogUniform]] | None = None,
                  validation_problems: int = DEFAULT_VALIDATION_PROBLEMS,
                  validation_seed_base: int = TUNE_VALIDATION_SEED_BASE,
                  checkpoint_every: int = 10, resume: bool = False, overwrite: bool = False,
                  progress: bool = True, time_budget: float | None = None,
                  stop_after: int | None = None,
                  clock: Callable[[], float] = time.monotonic) -> TuneOutcome:
    """Tune each of ``optimizers`` (as :func:`tune`) and write the tune store ``out``, resumably.

    Every candidate is drawn up front from ``seed``, so a search can stop anywhere and continue.
    A checkpoint (``out`` + ``.checkpoint``, :func:`lopt_trace.metatrain.checkpoint_path`) holds
    the scores of the batches evaluated so far and the finished optimizers' results; it is written
    every ``checkpoint_every`` batches, after each optimizer and when the call stops early, and
    removed when the store is written. ``resume`` continues from it without evaluating any batch
    again, and gives the same store as an uninterrupted search (up to the timings and dates).

    ``time_budget`` (seconds, counted by ``clock`` from this call) stops, with a checkpoint,
    before a batch (or a validation) that would end past the budget, judged by the longest of the
    last few batches; ``stop_after`` stops once that many batches are done in total (all
    optimizers, in order), to simulate an interruption. At least one batch runs per call.
    ``spaces`` overrides the search space of some optimizers (``--lr-range``).
    """
    from lopt_trace.metatrain import check_output, checkpoint_path
    from lopt_trace.zarr_io import exists, remove, write_tree

    began = clock()
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    if int(checkpoint_every) < 1:
        raise UserError(f"--checkpoint-every must be a positive integer, got {checkpoint_every}")
    if int(validation_problems) < 0:
        raise UserError(f"--validation-problems must be a non-negative integer, got {validation_problems}")
    setups, plans = {}, {}
    for name in optimizers:
        opt, space, to_theta, fixed = tuning_setup(name, (spaces or {}).get(name))
        setups[name] = (opt, fixed)
        plans[name] = plan_search(task, space, to_theta, samples, problems, steps, batch, seed,
                                  seed_base, label=name)
    settings = json.loads(json.dumps({
        "task": task.config(), "optimizers": list(optimizers), "samples": int(samples),
        "problems": int(problems), "steps": plans[optimizers[0]].steps,
        "batch": {n: p.batch for n, p in plans.items()}, "seed": int(seed),
        "seed_base": int(seed_base), "objective": objective,
        "search_spaces": {n: {k: v.to_dict() for k, v in p.space.items()} for n, p in plans.items()},
        "validation_problems": int(validation_problems),
        "validation_seed_base": int(validation_seed_base)}))
    check_output(out, resume, overwrite)
    ckpt = checkpoint_path(out)
    if not resume and exists(ckpt):
        remove(ckpt)
    results, states = _read_checkpoint(ckpt, settings) if resume else ({}, {})

    durations: list[float] = []  # seconds per batch in this call
    tick = [clock()]
    ran = [0]  # batches evaluated in this call
    stopped: list[str | None] = [None]

    def batches_done() -> int:
        return sum(plans[n].n_batches if n in results else (states[n].done if n in states else 0)
                   for n in optimizers)

    def out_of_time() -> bool:
        if ran[0] and time_budget is not None and clock() - began + max(durations[-5:]) > time_budget:
            stopped[0] = "time budget"
        return stopped[0] is not None

    def must_stop() -> bool:
        if ran[0] and stop_after is not None and batches_done() >= stop_after:
            stopped[0] = "stop_after"
        return out_of_time()

    def write_checkpoint():
        write_tree(_checkpoint_tree(settings, results, states), ckpt, overwrite=True)

    def after_batch(state: SearchProgress):
        ran[0] += 1
        now = clock()
        durations.append(now - tick[0])
        tick[0] = now
        if state.done % checkpoint_every == 0:
            write_checkpoint()

    def outcome() -> TuneOutcome:
        return TuneOutcome(dict(results), stopped[0], {
            n: (plans[n].n_batches if n in results else (states[n].done if n in states else 0),
                plans[n].n_batches) for n in optimizers})

    for name in optimizers:
        if name in results:
            continue
        opt, fixed = setups[name]
        plan = plans[name]
        state = states.setdefault(name, SearchProgress.start(plan.samples, len(plan.seeds)))
        if state.done < plan.n_batches and not must_stop():
            tick[0] = clock()
            run_search(task, opt, plan, objective, state, progress,
                       stop=lambda i: must_stop(), after_batch=after_batch)
        if state.done < plan.n_batches or (validation_problems and out_of_time()):
            write_checkpoint()  # the validation that is left counts as one more batch
            return outcome()
        ds = search_dataset(task, opt, plan, state.scores, state.timing(plan.batch), objective)
        results[name] = finish_search(task, opt, with_fixed(ds, fixed, name), validation_problems,
                                      validation_seed_base)
        write_checkpoint()
    write_tree(tune_tree(results, task), out, overwrite=overwrite)
    remove(ckpt)
    return outcome()


# -- the tuning curve ------------------------------------------------------------------------------
#: a search has plateaued when its mean best-so-far improved by less than this (relative to
#: its final value) over the last half of the candidates
PLATEAU_TOLERANCE = 0.01
PLATEAU_RULE = ("plateaued when the mean best-so-far over random candidate orders improves by less "
                "than 1 % over the last half of the candidates: (e(ceil(S/2)) - e(S)) / e(S) < 0.01, "
                "e(n) the mean over orders of the best of the first n of the S candidates")


def best_so_far(scores: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Running minimum of ``scores (samples,)`` taken in each order of ``orders (n, samples)``
    (candidate indices): ``(n, samples)``, element ``[j, k]`` the best of the first k + 1
    candidates of order j."""
    return np.minimum.accumulate(np.asarray(scores, np.float64)[orders], axis=1)


def plateau_improvement(curve: np.ndarray) -> float:
    """(e(⌈S/2⌉) − e(S)) / e(S) of a best-so-far curve ``(S,)``: how much the last half of the
    candidates improved it, relative to the final value (``inf`` when the curve is not finite at
    half the candidates, ``nan`` for fewer than two candidates or no finite candidate)."""
    e = np.asarray(curve, np.float64)
    if len(e) < 2 or not np.isfinite(e[-1]):
        return float("nan")
    half, end = e[-(-len(e) // 2) - 1], e[-1]
    if not np.isfinite(half):
        return float("inf")
    if end == 0:
        return 0.0 if half == 0 else float("inf")
    return float((half - end) / abs(end))


def tuning_curve(ds: xr.Dataset, permutations: int = 200, seed: int = 0,
                 band: tuple[float, float] = (0.05, 0.95),
                 tolerance: float = PLATEAU_TOLERANCE) -> xr.Dataset:
    """Best-so-far selection score (``mean_objective``; ``inf`` for a failed candidate) against
    the number of candidates, from a tuning dataset.

    Returns a Dataset over ``candidates`` (1..S) with ``in_order`` (the search's own order), and
    over ``permutations`` random orders of the same candidates (drawn with ``seed``): ``median``,
    ``low`` and ``high`` (the ``band`` quantiles; nearest-rank, so ``inf`` stays ``inf``) and
    ``mean``. At S candidates every order has seen them all, so the band closes.

    The plateau is judged on the mean (:func:`plateau_improvement`, :data:`PLATEAU_RULE`), not
    the median: at exactly half the candidates a random order holds the overall best with
    probability ½, so the median there flips between the best and the second best and says
    nothing; the mean weighs the next-best candidates by how often the first half holds them
    (the 2nd best ¼, the 3rd ⅛, ...), so it is below 1 % only when the few best candidates are all
    within about 1 % of the best. Attributes: ``plateaued``, ``improvement_last_half``,
    ``plateau_rule``, ``permutations``, ``band`` and the optimizer, task, samples and problems.
    """
    scores = np.asarray(ds["mean_objective"].values, np.float64)
    n = len(scores)
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(n) for _ in range(int(permutations))])
    curves = best_so_far(scores, orders)
    low, median, high = np.quantile(curves, [band[0], 0.5, band[1]], axis=0, method="nearest")
    with np.errstate(invalid="ignore"):
        mean = curves.mean(axis=0)
    improvement = plateau_improvement(mean)
    dims = "candidates"
    attrs = {"long_name": "best mean objective so far", "units": "1"}
    out = xr.Dataset(
        {"in_order": (dims, best_so_far(scores, np.arange(n)[None])[0], attrs),
         "median": (dims, median, {**attrs, "long_name": "median best-so-far over random orders"}),
         "low": (dims, low, {**attrs, "long_name": f"{band[0]:.0%} quantile over random orders"}),
         "high": (dims, high, {**attrs, "long_name": f"{band[1]:.0%} quantile over random orders"}),
         "mean": (dims, mean, {**attrs, "long_name": "mean best-so-far over random orders"})},
        coords={dims: (dims, np.arange(1, n + 1, dtype=np.int64),
                       {"long_name": "candidates evaluated", "units": "1"})})
    out.attrs.update({
        "plateaued": bool(improvement < tolerance), "improvement_last_half": improvement,
        "plateau_rule": PLATEAU_RULE, "permutations": int(permutations), "band": list(band),
        "optimizer": (ds.attrs.get("optimizer") or {}).get("name"), "task": ds.attrs.get("task"),
        "samples": int(n), "problems": int(ds.sizes.get("problem", 0))})
    return out
