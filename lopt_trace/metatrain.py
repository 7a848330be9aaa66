"""Meta-training a learned optimizer by backpropagation through unrolled optimization.

Meta-objective (per problem): mean_k f_k / f_0 over the unrolled steps, averaged over a meta-batch
of problems, plus ``l2 · ½‖θ‖²``. Long horizons can be cut into truncations of ``truncation``
steps: the inner problems carry on across truncations (gradients stop at the boundaries), and a
fresh meta-batch is drawn when the horizon is reached. With the default ``truncation = steps``
every meta-iteration is one full unroll with exact backpropagation.

Defaults (:class:`MetaTrainConfig`): Adam with learning rate 3e-3 decayed exponentially to
``lr_final_fraction`` (0.1) of it over all iterations, element-wise meta-gradient clipping at 1.0,
meta-batch 8, no L2. Steps with a non-finite meta-loss or meta-gradient are skipped
(``optax.apply_if_finite``) and counted.

The meta-gradient is exact backpropagation through each truncation (``estimator="bptt"``,
optionally ``first_order``; :func:`lopt_trace.unroll.run_population`) or a persistent
evolution-strategies estimate from forward unrolls (``estimator="pes"``, :mod:`lopt_trace.pes`).

Optionally, training starts from given weights (``theta0``, e.g. a warm start from
:mod:`lopt_trace.warm_start`) and, with ``validation > 0``, keeps the θ that scores best over the
whole horizon on held-back training-range problems (the start included).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from tqdm.auto import tqdm

from lopt_trace import pes as peslib
from lopt_trace import seeds as seedlib
from lopt_trace.errors import UserError
from lopt_trace.metatrain_history import (HISTORY_ATTRS, check_output, checkpoint_path,  # noqa: F401
                                          checkpoint_wall_time, history_dataset, read_checkpoint,
                                          read_checkpoint_warm_start, thetas_from_history, write_checkpoint)
from lopt_trace.optimizers import LearnedGRU
from lopt_trace.optimizers.io import save_optimizer
from lopt_trace.provenance import machine
from lopt_trace.sharding import batch_placement, shard_count
from lopt_trace.store import locked_output
from lopt_trace.store.zarr_io import exists, remove
from lopt_trace.tasks.base import Task
from lopt_trace.tune import best_config
from lopt_trace.unroll import InnerState, init_inner, loss_curve, meta_objective, run_population


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """Meta-training settings; stored in the optimizer file's ``metatrain`` attribute."""

    iterations: int = 200
    batch: int = 8
    steps: int | None = None        # horizon; None means the task's default
    truncation: int | None = None   # steps per meta-gradient; None means the whole horizon
    learning_rate: float = 3e-3
    lr_final_fraction: float = 0.1
    grad_clip: float = 1.0
    l2: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50
    first_order: bool = False       # drop second derivatives of the task loss (cheaper, approximate)
    validation: int = 0             # held-back training-range problems scored at each checkpoint;
                                    # > 0 also keeps the best-scoring θ (early stopping)
    estimator: str = "bptt"         # meta-gradient: "bptt" (backpropagation) or "pes" (lopt_trace.pes)
    pes_std: float = peslib.DEFAULT_STD      # σ of PES's perturbations
    pes_pairs: int = peslib.DEFAULT_PAIRS    # PES's antithetic pairs per problem

    def settings(self) -> dict:
        """The settings stored with a run (checkpoint and optimizer file). The estimator's keys
        appear only for ``pes``, so backpropagation's settings read as they did before there was
        a choice (and old checkpoints resume)."""
        settings = dataclasses.asdict(self)
        if self.estimator == "bptt":
            for key in ESTIMATOR_KEYS:
                settings.pop(key)
        return settings

    def resolved(self, task: Task) -> "MetaTrainConfig":
        steps = self.steps or task.default_steps
        trunc = self.truncation or steps
        cfg = dataclasses.replace(self, steps=steps, truncation=trunc)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise UserError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.estimator == "pes":
            if not (self.pes_std > 0 and math.isfinite(self.pes_std)):
                raise UserError(f"--pes-std must be a positive number, got {self.pes_std}")
            if int(self.pes_pairs) < 1:
                raise UserError(f"--pes-pairs must be a positive integer, got {self.pes_pairs}")
            if self.first_order:
                raise UserError("--first-order applies to --estimator bptt; PES uses forward unrolls only")
        if int(self.validation) < 0:
            raise UserError(f"--validation must be a non-negative integer, got {self.validation}")
        for field in ("iterations", "batch", "steps", "truncation", "checkpoint_every"):
            if getattr(self, field) is not None and int(getattr(self, field)) < 1:
                raise UserError(f"--{field.replace('_', '-')} must be a positive integer, got {getattr(self, field)}")
        if self.steps and self.truncation and self.steps % self.truncation:
            raise UserError(f"--steps ({self.steps}) must be a multiple of --truncation ({self.truncation})")
        if not self.learning_rate > 0 or not self.grad_clip > 0 or self.l2 < 0:
            raise UserError("learning rate and clip must be positive and l2 non-negative")


#: meta-gradient estimators: backpropagation through the truncation, or PES (lopt_trace.pes)
ESTIMATORS = ("bptt", "pes")
#: the settings that belong to the estimator (stored only when it is not the default)
ESTIMATOR_KEYS = ("estimator", "pes_std", "pes_pairs")

#: seed base of the validation problems (training range; far from meta-training's and tuning's)
VALIDATION_SEED_BASE = 54321


class Population(NamedTuple):
    """The meta-batch of inner optimizations in flight (leading axis: problem)."""

    inner: InnerState
    data: Any
    f0: jax.Array


class TrainState(NamedTuple):
    """Everything a checkpoint holds. ``pes`` (:class:`lopt_trace.pes.PESState`) is ``None``, and
    has no leaves, for backpropagation, so its checkpoints are what they always were."""

    theta: dict
    opt_state: Any
    population: Population
    pes: Any = None


def meta_optimizer(cfg: MetaTrainConfig) -> optax.GradientTransformation:
    """Adam with exponential decay and element-wise clipping, skipping non-finite steps."""
    schedule = optax.exponential_decay(cfg.learning_rate, transition_steps=max(cfg.iterations, 1),
                                       decay_rate=cfg.lr_final_fraction)
    inner = optax.chain(optax.clip(cfg.grad_clip), optax.adam(schedule))
    return optax.apply_if_finite(inner, max_consecutive_errors=2**30)


def problem_placement(batch: int, devices=None):
    """``(replicated, split)`` shardings of meta-training on several JAX devices, or None.

    ``devices`` defaults to every JAX device (``jax.devices()``). With more than one, and a
    meta-batch that is a multiple of their number, the devices form a 1-D mesh ``problems``:
    ``split`` divides an array's leading (problem) axis among them and ``replicated`` copies it
    to each. Otherwise (one device, or a batch that does not divide) None: everything stays on
    the default device, exactly as before there was sharding (:mod:`lopt_trace.sharding`).
    """
    return batch_placement(batch, "problems", devices)


#: jitted steps by (task, optimizer, configuration): a trainer made again for the same run
#: (``--resume`` in one process, tests) reuses them instead of compiling again
_COMPILED: dict = {}


class MetaTrainer:
    """Builds the jitted pieces of meta-training for one task, optimizer and configuration."""

    def __init__(self, task: Task, optimizer: LearnedGRU, cfg: MetaTrainConfig, devices=None):
        self.task, self.opt, self.cfg = task, optimizer, cfg.resolved(task)
        self._placement = problem_placement(self.cfg.batch, devices)
        self.shards = shard_count(self._placement)
        self.tx = meta_optimizer(self.cfg)
        self.schedule = optax.exponential_decay(self.cfg.learning_rate, max(self.cfg.iterations, 1),
                                                self.cfg.lr_final_fraction)
        self.segments = self.cfg.steps // self.cfg.truncation
        key = (type(task).__name__, json.dumps(task.config(), sort_keys=True),
               type(optimizer).__name__, json.dumps(optimizer.config(), sort_keys=True), self.cfg,
               self.shards)
        if key not in _COMPILED:  # trainers of one configuration share compiled steps (resume)
            while len(_COMPILED) >= 4:
                _COMPILED.pop(next(iter(_COMPILED)))
            _COMPILED[key] = (jax.jit(lambda s, i: self._meta_step(s, i, fresh=True)),
                              jax.jit(lambda s, i: self._meta_step(s, i, fresh=False)),
                              jax.jit(jax.vmap(task.sample)))
        self._step_fresh, self._step_cont, self._sample = _COMPILED[key]
        self._validate = None
        if self.cfg.validation:
            keys = seedlib.problem_keys(seedlib.train_seeds(VALIDATION_SEED_BASE, 0, self.cfg.validation))
            problems = jax.vmap(task.sample)(keys)
            steps = self.cfg.steps
            one = lambda theta, p: meta_objective(loss_curve(task, optimizer, theta, p, steps))
            scores = jax.jit(jax.vmap(one, in_axes=(None, 0)))
            self._validate = lambda theta: float(np.mean(np.asarray(scores(theta, problems), np.float64)))

    def validate(self, theta) -> float:
        """Mean meta-objective of ``theta`` over the whole horizon on the validation problems."""
        return self._validate(theta)

    # -- pieces --------------------------------------------------------------------------------
    def sample_population(self, theta, iteration: int) -> Population:
        """A fresh meta-batch for the episode that starts at ``iteration`` (training seeds only)."""
        episode = iteration // self.segments
        keys = seedlib.problem_keys(seedlib.train_seeds(self.cfg.seed, episode, self.cfg.batch))
        problems = self._sample(keys)
        inner = jax.vmap(lambda p: init_inner(self.task, self.opt, theta, p))(problems)
        f0 = jax.vmap(lambda p, s: self.task.flat_loss(p.data, s.x, s.step))(problems, inner)
        return Population(inner, problems.data, f0)

    def penalty(self, theta):
        return 0.5 * self.cfg.l2 * sum(jnp.sum(v * v) for v in jax.tree.leaves(theta))

    def meta_loss(self, theta, pop: Population, fresh: bool):
        """Mean normalised loss over one truncation, for the whole meta-batch."""
        inner = pop.inner
        if fresh:  # the initial state depends on θ (learned h0): let gradients reach it
            h0 = self.opt.init_state(theta, inner.x.shape[-1])
            inner = inner._replace(h=jnp.broadcast_to(h0, inner.h.shape))
        finals, losses = run_population(self.task, self.opt, theta, pop.data, inner,
                                        self.cfg.truncation, first_order=self.cfg.first_order)
        objective = jnp.mean(losses, axis=-1) / pop.f0
        return jnp.mean(objective) + self.penalty(theta), finals

    def pes_key(self, iteration) -> jax.Array:
        """The PRNG key of iteration ``iteration``'s PES perturbations (a function of the seed and
        the iteration only, so a resumed run draws the same ones)."""
        return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed), 0x9E5), iteration)

    def _meta_step(self, state: TrainState, iteration, fresh: bool):
        pes = state.pes
        if self.cfg.estimator == "pes":
            pop = state.population
            loss, grads, pes, _ = peslib.estimate(
                self.task, self.opt, state.theta, pes, pop.data, pop.f0, pop.inner if fresh else None,
                self.pes_key(iteration), std=self.cfg.pes_std, truncation=self.cfg.truncation)
            loss = loss + self.penalty(state.theta)
            grads = jax.tree.map(lambda g, t: g + self.cfg.l2 * t, grads, state.theta)
            pop = state.population
        else:
            (loss, finals), grads = jax.value_and_grad(self.meta_loss, has_aux=True)(
                state.theta, state.population, fresh)
            pop = state.population._replace(inner=jax.tree.map(jax.lax.stop_gradient, finals))
        grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        grad_norm = optax.tree.norm(grads)
        return TrainState(theta, opt_state, pop, pes), {
            "meta_loss": loss, "meta_grad_norm": grad_norm,
            "skipped": ~jnp.isfinite(loss) | ~jnp.isfinite(grad_norm)}

    def init(self, theta0: dict | None = None) -> TrainState:
        """The state before iteration 0: ``theta0`` (a warm start) or a fresh random θ."""
        if theta0 is None:
            theta = self.opt.init_theta(jax.random.PRNGKey(self.cfg.seed))
        else:
            theta = {k: jnp.asarray(v, jnp.float32) for k, v in theta0.items()}
        pop = self.sample_population(theta, 0)
        pes = None
        if self.cfg.estimator == "pes":
            pes = jax.jit(lambda th, start: peslib.init_state(self.opt, th, start, self.cfg.pes_pairs))(
                theta, pop.inner)
        return TrainState(theta, self.tx.init(theta), pop, pes)

    def place(self, state: TrainState) -> TrainState:
        """``state`` on the devices: with several (:func:`problem_placement`), θ and the
        meta-optimizer's state replicated and the meta-batch (population, PES particles) split
        along its problem axis; the jitted step then runs each device's problems where they are.
        Unchanged on one device; free when the state is already placed."""
        if self._placement is None:
            return state
        replicated, split = self._placement
        return TrainState(jax.device_put(state.theta, replicated),
                          jax.device_put(state.opt_state, replicated),
                          jax.device_put(state.population, split),
                          None if state.pes is None else jax.device_put(state.pes, split))

    def step(self, state: TrainState, iteration: int) -> tuple[TrainState, dict]:
        """One meta-iteration (one truncation of the current meta-batch)."""
        if iteration % self.segments == 0 and iteration > 0:
            state = state._replace(population=self.sample_population(state.theta, iteration))
        state = self.place(state)
        fn = self._step_fresh if iteration % self.segments == 0 else self._step_cont
        state, metrics = fn(state, jnp.asarray(iteration, jnp.int32))
        metrics = {k: np.asarray(v) for k, v in metrics.items()}
        metrics["learning_rate"] = np.asarray(self.schedule(iteration))
        return state, metrics


# -- warm start --------------------------------------------------------------------------------
def best_of_search(ds: xr.Dataset) -> dict:
    """The best candidate of a warm-start search with its objective, as stored in the settings."""
    best = best_config(ds)
    return {"theta": best["theta"], "objective": best["objective"], "objective_sem": best["sem"],
            "samples": int(ds.sizes["sample"]), "problems": int(ds.sizes["problem"])}



@locked_output("training run")  # issue #14: one `train` per --out (lock <out>.lock, as record)
def train(task: Task, optimizer: LearnedGRU, cfg: MetaTrainConfig, out: str | os.PathLike, *,
          resume: bool = False, overwrite: bool = False, progress: bool = True,
          stop_after: int | None = None, callback: Callable | None = None,
          theta0: dict | None = None, warm_start: xr.Dataset | None = None,
          time_budget: float | None = None, clock: Callable[[], float] = time.monotonic) -> xr.Dataset:
    """Meta-train and write the optimizer file to ``out``; returns the history.

    ``theta0`` starts meta-training from given weights instead of random ones;
    ``warm_start`` (the search that chose them, :mod:`lopt_trace.warm_start`) is then stored in
    the optimizer file as the ``/warm_start`` group, and its best candidate in the settings.

    A checkpoint (``out`` + ``.checkpoint``) is written every ``checkpoint_every`` iterations and
    removed when training finishes. ``resume`` continues from it and gives the same result, bit
    for bit on the CPU, as a run that was never stopped. ``stop_after`` stops (with a checkpoint)
    after that many iterations in total, to simulate an interruption.

    ``time_budget`` (seconds, counted by ``clock`` from this call) stops the same way, with a
    checkpoint, before an iteration that would end past the budget (judged by the longest of the
    last few iterations; at least one iteration runs per call). A run that stopped early returns
    a history with fewer than ``cfg.iterations`` iterations and ``attrs["stopped"]`` saying why.
    """
    began = clock()
    began_wall = time.monotonic()  # the run's wall time (``clock`` may be a test's fake budget clock)
    trainer = MetaTrainer(task, optimizer, cfg)
    cfg = trainer.cfg
    settings = {**cfg.settings(), "optimizer": optimizer.config(), "task": task.config()}
    if warm_start is not None:
        settings["warm_start"] = {"kind": warm_start.attrs.get("warm_start"),
                                  **best_of_search(warm_start)}
    check_output(out, resume, overwrite)
    ckpt = checkpoint_path(out)
    if not resume and exists(ckpt):
        remove(ckpt)

    state = trainer.init(theta0)
    records = {k: [] for k in HISTORY_ATTRS}
    thetas, theta_iters, scores = [], [], []
    start = 0
    prior_s = 0.0  # wall time of the commands that ran this run before (from the checkpoint)
    if resume:
        prior_s = checkpoint_wall_time(ckpt)
        state, start, history, saved = read_checkpoint(ckpt, state)
        if saved != settings:
            raise UserError(f"checkpoint {ckpt} was made with other settings; resume with the same options")
        for k in records:
            records[k] = list(history[k].values)
        thetas = thetas_from_history(history)
        theta_iters = [int(i) for i in history["checkpoint"].values] if thetas else []
        scores = list(history["validation"].values) if "validation" in history else []

    def keep(theta, iteration):
        thetas.append(jax.tree.map(np.asarray, theta))
        theta_iters.append(iteration)
        if cfg.validation:
            scores.append(trainer.validate(theta))

    if cfg.validation and start == 0:
        keep(state.theta, 0)  # the starting θ competes too (a warm start may be the best)
    end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    stopped = "stop_after" if end < cfg.iterations else None
    durations = []  # seconds per iteration (step, validation, checkpoint) in this call
    bar = tqdm(range(start, end), initial=start, total=cfg.iterations, disable=not progress,
               desc=f"meta-train {task.name}", unit="it")
    for it in bar:
        if time_budget is not None and durations:
            if clock() - began + max(durations[-5:]) > time_budget:
                end, stopped = it, "time budget"
                break
        tick = clock()
        state, metrics = trainer.step(state, it)
        for k in records:
            records[k].append(metrics[k])
        if callback is not None:
            callback(it, metrics)
        done = it + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            keep(state.theta, done)
            if done < cfg.iterations:
                write_checkpoint(ckpt, state, done, history_dataset(records, thetas, theta_iters, scores),
                                 settings, warm_start, prior_s + time.monotonic() - began_wall)
        durations.append(clock() - tick)
        postfix = {"meta_loss": f"{float(metrics['meta_loss']):.4f}",
                   "skipped": int(np.sum(records["skipped"]))}
        if scores:
            postfix["validation"] = f"{scores[-1]:.4f}"
            postfix["best_validation"] = f"{np.nanmin(scores):.4f}"
        if time_budget is not None:
            postfix["budget_left"] = tqdm.format_interval(max(0.0, time_budget - (clock() - began)))
        bar.set_postfix(postfix)
    bar.close()
    if end < cfg.iterations:
        write_checkpoint(ckpt, state, end, history_dataset(records, thetas, theta_iters, scores),
                         settings, warm_start, prior_s + time.monotonic() - began_wall)
        history = history_dataset(records, thetas, theta_iters, scores)
        history.attrs["stopped"] = stopped
        return history
    final, selected = jax.tree.map(np.asarray, state.theta), None
    if cfg.validation:
        finite = np.where(np.isfinite(scores), scores, np.inf)
        best = int(np.argmin(finite))
        final, selected = thetas[best], theta_iters[best]
    history = history_dataset(records, thetas, theta_iters, scores, selected)
    finished = {**settings, "finished": True, "iterations_done": cfg.iterations,
                "wall_time_s": round(prior_s + time.monotonic() - began_wall, 1), "machine": machine()}
    save_optimizer(out, optimizer, final, task=task.config(),
                   metatrain=finished, meta_train=history, warm_start=warm_start, overwrite=overwrite)
    remove(ckpt)
    return history
