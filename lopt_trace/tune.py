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
merges the best configurations into a ``data/tuned/<task>.json`` file.
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
from lopt_trace.tasks.base import Problem, Task
from lopt_trace.unroll import loss_curve, meta_objective

#: base of the training-range seeds that tuning draws its problems from (meta-training uses its
#: ``--seed``, 0 by default, as base; this one is far from it)
TUNE_SEED_BASE = 12345


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


def evaluate(task: Task, optimizer: ComponentwiseOptimizer, thetas: dict[str, np.ndarray],
             problems: Problem, steps: int, batch: int = 64, objective: str = "meta",
             progress: bool = True, evaluator: Callable | None = None,
             label: str | None = None) -> tuple[np.ndarray, dict]:
    """Scores of all candidates on all problems, ``(candidates, problems)`` float32, and timings.

    Candidates go through ``evaluator`` (default :func:`make_evaluator`) at most ``batch`` at a
    time, in equal batches; the last batch is padded with copies of its first candidate so that
    one compilation serves all.
    Timings: ``compile_seconds`` (the first call, including compilation), ``eval_seconds`` (all
    calls after it) and ``candidates_per_second`` (``batch`` × those calls / their time, i.e. the
    evaluator's throughput; from the first call, compilation included, when there is only one).
    """
    names = list(thetas)
    total = len(thetas[names[0]])
    if total < 1:
        raise UserError("need at least one candidate")
    batch = int(max(1, min(batch, total)))
    n_batches = -(-total // batch)
    batch = -(-total // n_batches)  # equal batches: as little padding as possible
    fn = evaluator or make_evaluator(task, optimizer, steps, objective)
    out = np.empty((total, jax.tree.leaves(problems)[0].shape[0]), np.float32)
    first_s, rest_s, rest_n = 0.0, 0.0, 0
    with tqdm(total=total, desc=f"tune {label or optimizer.name}", unit="cand", disable=not progress) as bar:
        for i in range(n_batches):
            lo, hi = i * batch, min(total, (i + 1) * batch)
            chunk = {}
            for k in names:
                v = np.asarray(thetas[k][lo:hi], np.float32)
                if hi - lo < batch:
                    v = np.concatenate([v, np.repeat(v[:1], batch - (hi - lo), axis=0)])
                chunk[k] = jnp.asarray(v)
            start = time.perf_counter()
            scores = np.asarray(jax.block_until_ready(fn(chunk, problems)))
            elapsed = time.perf_counter() - start
            if i == 0:
                first_s = elapsed
            else:  # throughput of the evaluator: padded slots count, they cost the same
                rest_s, rest_n = rest_s + elapsed, rest_n + batch
            out[lo:hi] = scores[: hi - lo]
            bar.update(hi - lo)
    rate = rest_n / rest_s if rest_n and rest_s > 0 else min(batch, total) / max(first_s, 1e-9)
    return out, {"compile_seconds": first_s, "eval_seconds": rest_s,
                 "candidates_per_second": float(rate), "batch": batch}


def tune(task: Task, optimizer: str, samples: int = 2500, problems: int = 8,
         steps: int | None = None, batch: int | None = None, seed: int = 0,
         seed_base: int = TUNE_SEED_BASE, objective: str = "meta",
         space: dict[str, LogUniform] | None = None, progress: bool = True) -> xr.Dataset:
    """Random search for one baseline on ``task``; returns the dataset described above.

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
    """
    opt = make_optimizer(optimizer)
    space = dict(space or search_space(optimizer))
    default = {k: np.float32(v) for k, v in opt.init_theta().items()}
    unknown = set(space) - set(default)
    if unknown:
        raise UserError(f"search space names {sorted(unknown)} are not hyperparameters of {optimizer}")

    def to_theta(candidates):
        n = len(next(iter(candidates.values())))
        return {k: candidates[k] if k in candidates else np.full(n, default[k], np.float32)
                for k in default}

    ds = random_search(task, opt, space, to_theta, samples, problems, steps, batch, seed,
                       seed_base, objective, progress, label=optimizer)
    ds.attrs["fixed"] = {k: float(default[k]) for k in default if k not in space}
    for k in default:
        if k not in space:
            ds[k] = xr.Variable("sample", np.full(int(samples), float(default[k])),
                                {"long_name": f"{optimizer} {k} (fixed at its default)", "units": "1"})
    return ds


def random_search(task: Task, optimizer: ComponentwiseOptimizer, space: dict[str, LogUniform],
                  to_theta: Callable[[dict[str, np.ndarray]], dict], samples: int, problems: int,
                  steps: int | None = None, batch: int | None = None, seed: int = 0,
                  seed_base: int = TUNE_SEED_BASE, objective: str = "meta", progress: bool = True,
                  label: str | None = None) -> xr.Dataset:
    """Random search over ``space``; ``to_theta`` maps candidates ``{name: (samples,)}`` to a
    batch of θ for ``optimizer`` (leading axis: candidate). Returns the dataset described above
    (one variable per name in ``space``); :func:`tune` and :mod:`lopt_trace.warm_start` use it.
    """
    if int(samples) < 1 or int(problems) < 1:
        raise UserError("--samples and --seeds must be positive integers")
    label = label or optimizer.name
    steps = int(steps or task.default_steps)
    seeds = tuning_seeds(problems, seed_base)
    if np.any(seeds >= seedlib.TEST_SEED_START):
        raise UserError("tuning seeds must lie in the training range")
    batch = int(batch or default_batch(task, problems, samples))

    candidates = sample_candidates(space, samples, seed)
    thetas = to_theta(candidates)
    stacked = sample_problems(task, seeds)
    scores, timing = evaluate(task, optimizer, thetas, stacked, steps, batch, objective, progress,
                              label=label)

    failed = ~np.all(np.isfinite(scores), axis=1)
    mean = np.where(failed, np.inf, np.mean(np.where(np.isfinite(scores), scores, 0.0), axis=1,
                                            dtype=np.float64))
    best = int(np.argmin(mean)) if np.any(np.isfinite(mean)) else -1

    ds = xr.Dataset(coords={
        "sample": ("sample", np.arange(samples, dtype=np.int64),
                   {"long_name": "candidate index", "units": "1"}),
        "problem": ("problem", np.asarray(seeds, np.int64),
                    {"long_name": "problem seed (training range)", "units": "1"}),
    })
    for k, v in candidates.items():
        ds[k] = xr.Variable("sample", np.asarray(v, np.float64),
                            {"long_name": f"{label} {k} ({space[k].describe()})", "units": "1"})
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
        "search_space": {k: v.to_dict() for k, v in space.items()},
        "fixed": {},
        "objective": objective,
        "objective_description": OBJECTIVES[objective],
        "steps": steps,
        "samples": int(samples),
        "problems": int(problems),
        "seed_base": int(seed_base),
        "sampler_seed": int(seed),
        "failed_total": int(failed.sum()),
        "best_sample": best,
        "best_objective": float(mean[best]) if best >= 0 else float("inf"),
        "created": utc_now(),
        **{k: (float(v) if isinstance(v, float) else v) for k, v in timing.items()},
    })
    return ds


def best_config(ds: xr.Dataset) -> dict:
    """The best candidate of a tuning dataset: ``{"theta", "objective", "sem", "sample", ...}``.

    Raises :class:`UserError` when every candidate failed.
    """
    mean = ds["mean_objective"].values
    if not np.any(np.isfinite(mean)):
        raise UserError(f"every {ds.attrs['optimizer']['name']} candidate diverged; widen or lower "
                        "the learning-rate range")
    i = int(np.argmin(mean))
    names = [k for k in ds.data_vars if ds[k].dims == ("sample",) and k not in ("mean_objective", "failed")]
    per_problem = ds["objective"].values[i].astype(np.float64)
    sem = float(per_problem.std(ddof=1) / math.sqrt(len(per_problem))) if len(per_problem) > 1 else float("nan")
    return {"theta": {k: float(ds[k].values[i]) for k in names}, "objective": float(mean[i]),
            "sem": sem, "sample": i}


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


def bundle_best(results: dict[str, xr.Dataset], path: str | os.PathLike) -> dict:
    """Merge the best configuration of each optimizer in ``results`` into the JSON at ``path``.

    Entries of other optimizers already in the file are kept. Returns the whole file's content.
    """
    path = Path(path)
    data = load_tuned(path)
    for name, ds in results.items():
        task = ds.attrs["task"]
        if data.get("task") not in (None, task):
            raise UserError(f"{path} holds hyperparameters for task {data['task']!r}, not {task!r}")
        data["task"] = task
        best = best_config(ds)
        data["optimizers"][name] = {
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
        }
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
