"""``lopt-trace tune``'s store: several searches with checkpoints, a time budget and ``resume``."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.metatrain_history import check_output, checkpoint_path
from lopt_trace.provenance import utc_now, versions
from lopt_trace.store import locked_output
from lopt_trace.store.zarr_io import exists, open_tree, remove, write_tree
from lopt_trace.tasks.base import Task
from lopt_trace.tune.bundle import _group, tune_tree
from lopt_trace.tune.scoring import TUNE_SEED_BASE, SearchProgress
from lopt_trace.tune.search import (
    finish_search,
    plan_search,
    run_search,
    search_dataset,
)
from lopt_trace.tune.selection import (
    DEFAULT_VALIDATION_PROBLEMS,
    TUNE_VALIDATION_SEED_BASE,
)
from lopt_trace.tune.space import OBJECTIVES, LogUniform, tuning_setup, with_fixed


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


def validation_batches(plan, validation_problems: int) -> float:
    """What the validation of a finished search costs, in its tuning batches (at least one): the
    selected and the lowest-mean candidates on ``validation_problems`` problems, against ``batch``
    candidates on the tuning problems (near-ties run only when the selection diverges)."""
    return max(1.0, 2 * int(validation_problems) / (plan.batch * len(plan.seeds)))


def _read_checkpoint(path, settings: dict) -> tuple[dict, dict]:
    """``(results, states)`` from a checkpoint made with ``settings`` (else a :class:`UserError`)."""
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

    def out_of_time(batches: float = 1.0) -> bool:
        """Would ``batches`` more batches (as long as the longest of the last five) end past the budget?"""
        if ran[0] and time_budget is not None and clock() - began + batches * max(durations[-5:]) > time_budget:
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
        if state.done < plan.n_batches or (  # batches left, or no time for the validation
                validation_problems and out_of_time(validation_batches(plan, validation_problems))):
            write_checkpoint()
            return outcome()
        ds = search_dataset(task, opt, plan, state.scores, state.timing(plan.batch), objective)
        results[name] = finish_search(task, opt, with_fixed(ds, fixed, name), validation_problems,
                                      validation_seed_base)
        write_checkpoint()
    write_tree(tune_tree(results, task), out, overwrite=overwrite)
    remove(ckpt)
    return outcome()

