"""Scoring candidates: tuning problems, the jitted vmapped evaluator, batched evaluation and its progress."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from lopt_trace import seeds as seedlib
from lopt_trace.errors import UserError
from lopt_trace.optimizers import ComponentwiseOptimizer
from lopt_trace.sharding import mesh_shardings
from lopt_trace.tasks.base import Problem, Task
from lopt_trace.tune.space import OBJECTIVES
from lopt_trace.unroll import loss_curve, meta_objective

#: base of the training-range seeds that tuning draws its problems from (meta-training uses its
#: ``--seed``, 0 by default, as base; this one is far from it)
TUNE_SEED_BASE = 12345


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
                   objective: str = "meta", devices=None) -> Callable:
    """A jitted ``(thetas, problems) -> scores (candidates, problems)``.

    ``thetas`` is a dict of arrays with a leading candidate axis (any trailing shape, so a batch of
    GRU weights works as well as a batch of learning rates), ``problems`` a stacked
    :class:`Problem`; the call vmaps over both.

    ``devices`` (default: every JAX device, ``jax.devices()``): with more than one, the candidates
    are split across them (:class:`ShardedEvaluator`, ``jax.sharding`` over a 1-D mesh
    ``candidates``); with one, the evaluator is the plain jitted function.
    """
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")

    def one(theta, problem):
        return _score(loss_curve(task, optimizer, theta, problem, steps), objective)

    over_problems = jax.vmap(one, in_axes=(None, 0))
    batched = jax.vmap(over_problems, in_axes=(0, None))
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) < 2:
        return jax.jit(batched)  # one device: exactly the computation of before there was sharding
    return ShardedEvaluator(batched, devices)


class ShardedEvaluator:
    """``(thetas, problems) -> scores`` with the candidates split across several JAX devices.

    The devices form a 1-D mesh with axis ``candidates``: every leaf of ``thetas`` is split along
    its leading (candidate) axis, the problems are replicated on every device, and each device
    scores its share of the candidates (no communication: candidates are independent). A batch is
    padded with copies of its first candidate up to a multiple of the device count, and the
    padding's scores are dropped, so any number of candidates works.
    """

    def __init__(self, batched: Callable, devices):
        self.devices = list(devices)
        self.shards = len(self.devices)
        self.replicated, self.candidate_sharding = mesh_shardings("candidates", self.devices)
        self._fn = jax.jit(batched, in_shardings=(self.candidate_sharding, self.replicated),
                           out_shardings=self.candidate_sharding)

    def replicate(self, problems: Problem) -> Problem:
        """``problems`` on every device (do it once, not at every call)."""
        return jax.device_put(problems, self.replicated)

    def __call__(self, thetas: dict, problems: Problem) -> jax.Array:
        n = len(next(iter(thetas.values())))
        padded = -(-n // self.shards) * self.shards
        chunk = {}
        for k, v in thetas.items():
            v = np.asarray(v)
            if padded > n:
                v = np.concatenate([v, np.repeat(v[:1], padded - n, axis=0)])
            chunk[k] = jax.device_put(v, self.candidate_sharding)
        scores = self._fn(chunk, self.replicate(problems))
        return scores[:n] if padded > n else scores


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
    if isinstance(fn, ShardedEvaluator):
        problems = fn.replicate(problems)  # once, not at every batch
    for i in range(start, -(-total // batch)):
        lo, hi = i * batch, min(total, (i + 1) * batch)
        chunk = {}
        for k in names:
            v = np.asarray(thetas[k][lo:hi], np.float32)
            if hi - lo < batch:
                v = np.concatenate([v, np.repeat(v[:1], batch - (hi - lo), axis=0)])
            # a sharded evaluator places the host array on its devices itself
            chunk[k] = v if isinstance(fn, ShardedEvaluator) else jnp.asarray(v)
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

