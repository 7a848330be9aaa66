"""The recorder: run test optimizations and stream their dynamics into a labeled Zarr store.

``record(task, optimizers, config, out)`` runs ``config.runs`` held-out test problems with each
optimizer and writes the schema of ``docs/store.md``:

1. Everything is checked first (task, optimizers, numbers, the output path), so a bad input never
   touches an existing store.
2. The whole store is created up front: every array with its final shape and fixed chunks, the
   coordinates, θ and the attributes, with consolidated metadata. Nothing in the metadata changes
   afterwards.
3. Steps are computed in jitted blocks: a ``lax.scan`` over ``block_records`` kept records (each
   record is ``every`` inner steps), ``vmap``-ed over ``run_batch`` runs. With several JAX
   devices the runs of a batch are split across them (``jax.sharding``, a 1-D mesh ``runs``,
   :mod:`lopt_trace.sharding`); runs are independent, so each device computes its own. Inside the block, the
   kept subset of parameters is gathered, the exact per-tensor means of the state and of |g| over
   *all* parameters are taken with ``segment_sum``, and |g| is histogrammed; only those small
   outputs go to the host.
4. A background writer thread writes block i into its region of the store while block i+1
   computes (a bounded queue of two blocks), so memory is bounded by the block size.
5. When all of a run's data is written, its ``run_complete`` flag is set; ``--resume`` keeps the
   finished runs and redoes the rest.

A second recorder on the same store is refused by :class:`lopt_trace.store.StoreLock`.

This module keeps the recording loop and the jitted block. The plan (settings, layout, chunks,
cost) is :mod:`lopt_trace.record_plan`; the store's template, writer and resume check are
:mod:`lopt_trace.store.template` and :mod:`lopt_trace.store.writer`; optimizer specs are resolved
by :mod:`lopt_trace.optimizers.sources`. Their names are importable from here too.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from lopt_trace import seeds as seedlib
from lopt_trace.allocator import bound_malloc_growth
from lopt_trace.defaults import DEFAULT_OPTIMIZERS
from lopt_trace.errors import UserError
from lopt_trace.optimizers import ComponentwiseOptimizer
from lopt_trace.optimizers.sources import Entry, resolve, resolve_many
from lopt_trace.record_plan import (BLOCK_BYTES, CHUNK_BYTES, CHUNK_RECORDS, CHUNK_RUNS,  # noqa: F401
                                    MAX_BLOCK_RECORDS, METADATA_BYTES, Estimate, Layout, Plan,
                                    RecordConfig, check_fits, estimate, make_layout, make_plan,
                                    subset_indices)
from lopt_trace.sharding import batch_placement, shard_count
from lopt_trace.store.lock import StoreLock
from lopt_trace.store.manifest import update_manifest
from lopt_trace.store.schema import HIST_BINS, HIST_LOG10_MAX, HIST_LOG10_MIN
from lopt_trace.store.sizes import human_bytes, size_on_disk
from lopt_trace.store.template import build_template, group_dataset, settings_of  # noqa: F401
from lopt_trace.store.writer import RegionWriter as _Writer
from lopt_trace.store.writer import check_resume, create_store, open_for_writing
from lopt_trace.store.zarr_io import check_replaceable, exists
from lopt_trace.tasks.base import Task
from lopt_trace.unroll import InnerState, init_inner, inner_step


#: one optimizer to record: its group name, the optimizer, θ and where they came from
OptimizerEntry = Entry


def resolve_optimizer(spec: str, task_name: str) -> OptimizerEntry:
    """Turn one ``--optimizer`` SPEC into an :class:`OptimizerEntry` (θ loaded and checked; see
    :func:`lopt_trace.optimizers.sources.resolve`)."""
    return resolve(spec, task_name)


def resolve_optimizers(task_name: str, specs=None) -> list[OptimizerEntry]:
    """Resolve every SPEC (default :data:`DEFAULT_OPTIMIZERS`); group names are made unique."""
    return resolve_many(task_name, specs or DEFAULT_OPTIMIZERS)


# -- the jitted block -------------------------------------------------------------------------------------
def _hist(g: jax.Array, valid, seg: jax.Array, n_tensors: int) -> jax.Array:
    """Counts of |g| per (tensor, log bin); zeros go to the first bin, non-finite are not counted."""
    a = jnp.abs(g)
    finite = jnp.isfinite(a)
    width = (HIST_LOG10_MAX - HIST_LOG10_MIN) / HIST_BINS
    pos = (jnp.log10(jnp.where(finite & (a > 0), a, 1.0)) - HIST_LOG10_MIN) / width
    b = jnp.clip(jnp.floor(pos), 0, HIST_BINS - 1).astype(jnp.int32)
    b = jnp.where(a > 0, b, 0)
    w = (finite & valid).astype(jnp.int32)
    return jax.ops.segment_sum(w, seg * HIST_BINS + b, num_segments=n_tensors * HIST_BINS
                               ).reshape(n_tensors, HIST_BINS)


def make_block_fn(layout: Layout, opt: ComponentwiseOptimizer):
    """``block(theta, data, state, K) -> (state, hist_counts, outputs, losses)``, jitted and vmapped over
    runs. One block is ``plan.block_records`` records of ``every`` steps; steps at or past K are
    masked (the state does not move and nothing is counted), so every block has the same shape."""
    key = ("block", *_task_key(layout.task), repr(opt.config()),
           layout.every, layout.plan, layout.cfg.dtype, hash(layout.flat_index.tobytes()))
    return _cached(key, lambda: _block_fn(layout, opt))


def _block_fn(layout: Layout, opt: ComponentwiseOptimizer):
    task, E = layout.task, layout.every
    n_rec = layout.plan.block_records
    sub = jnp.asarray(layout.flat_index, dtype=jnp.int32)
    seg = task.tensor_index()
    n_t = len(task.tensors)
    sizes = jnp.asarray([t.size for t in task.tensors], dtype=jnp.float32)
    out_dtype = jnp.dtype(layout.cfg.dtype)

    def step(theta, data, s: InnerState, K):
        valid = s.step < K
        s1, rec = inner_step(task, opt, theta, data, s)
        s1 = jax.tree.map(lambda a, b: jnp.where(valid, a, b), s1, s)
        return s1, rec, valid

    def outputs(rec):
        return {
            "gradient": rec.gradient[sub].astype(out_dtype),
            "update": rec.update[sub].astype(out_dtype),
            "state": rec.state[sub].astype(out_dtype),
            "state_mean": jax.ops.segment_sum(rec.state, seg, num_segments=n_t) / sizes[:, None],
            "gradient_abs_mean": jax.ops.segment_sum(jnp.abs(rec.gradient), seg, num_segments=n_t) / sizes,
        }

    def record(theta, data, K, carry, _):
        s, counts = carry
        s, rec, valid = step(theta, data, s, K)
        counts = counts + _hist(rec.gradient, valid, seg, n_t)
        out = outputs(rec)
        losses = rec.loss[None]
        if E > 1:
            def rest(c, _):
                s, counts = c
                s, r, v = step(theta, data, s, K)
                return (s, counts + _hist(r.gradient, v, seg, n_t)), r.loss

            (s, counts), more = jax.lax.scan(rest, (s, counts), None, length=E - 1)
            losses = jnp.concatenate([losses, more])
        return (s, counts), (out, losses)

    def block(theta, data, s, K):
        counts = jnp.zeros((n_t, HIST_BINS), jnp.int32)
        (s, counts), (outs, losses) = jax.lax.scan(
            lambda c, x: record(theta, data, K, c, x), (s, counts), None, length=n_rec)
        return s, counts, outs, losses.reshape(-1)

    return jax.jit(jax.vmap(block, in_axes=(None, 0, 0, None)))


def _task_key(task: Task) -> tuple:
    """What identifies a task's compiled functions (its horizon is an argument, not a constant)."""
    return type(task).__name__, repr({k: v for k, v in task.config().items() if k != "steps"})


def _sample_fn(task):
    return jax.jit(jax.vmap(task.sample))


def _init_fn(task, opt):
    return jax.jit(jax.vmap(lambda th, p: init_inner(task, opt, th, p), in_axes=(None, 0)))


def _final_fn(task):
    return jax.jit(jax.vmap(lambda d, s: task.flat_loss(d, s.x, s.step)))


#: jitted functions, reused across recordings with the same task, optimizer and layout
_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 6  # small: a compiled MNIST loss embeds the 47 MB data set


def _cached(key, build):
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    fn = _CACHE[key] = build()
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return fn


# -- recording ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RecordResult:
    """What :func:`record` did."""

    path: str
    size: int
    runs: int
    steps: int
    seconds: float
    final_loss: dict[str, np.ndarray]   # optimizer -> (runs,) final loss f(x_K), NaN if not recorded
    complete: bool
    blocks: int                         # jitted blocks computed by this call
    shards: int = 1                     # devices the runs of each batch were split across

    def summary(self) -> str:
        lines = [f"store   {self.path} ({human_bytes(self.size)} on disk)",
                 f"runs    {self.runs} test problems x {self.steps} steps"
                 + ("" if self.complete else "  [INCOMPLETE: continue with --resume]"),
                 "final loss (mean ± sem over runs):"]
        width = max([len(k) for k in self.final_loss] + [4])
        for name, values in self.final_loss.items():
            lines.append(f"  {name:<{width}}  {format_mean_sem(values)}")
        lines.append(f"time    {self.seconds:.1f} s"
                     + (f" (runs split across {self.shards} devices)" if self.shards > 1 else ""))
        return "\n".join(lines)


def format_mean_sem(values) -> str:
    """'0.1234 ± 0.0056', noting runs that are missing or not finite."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "n/a (no finite value)"
    text = f"{finite.mean():.4g}"
    text += f" ± {finite.std(ddof=1) / np.sqrt(finite.size):.2g}" if finite.size > 1 else " (1 run)"
    if finite.size < values.size:
        text += f"  [{values.size - finite.size} of {values.size} runs not finite]"
    return text


class _Stop(Exception):
    pass


def record(task: Task, entries: list[OptimizerEntry], cfg: RecordConfig, out, *,
           overwrite: bool = False, resume: bool = False, progress: bool = True,
           command: str | None = None, plan: Plan | None = None, stop_after: int | None = None,
           callback=None, devices=None) -> RecordResult:
    """Record ``cfg.runs`` test runs of every optimizer in ``entries`` on ``task`` into ``out``.

    ``out`` is a local path or an fsspec URL. An existing store is replaced only with
    ``overwrite``; ``resume`` continues an interrupted store (finished runs kept, unfinished runs
    redone; the data equal an uninterrupted recording). ``stop_after`` stops cleanly after that
    many blocks, to simulate an interruption; ``callback(info)`` is called after every block.

    ``devices`` (default every JAX device, ``jax.devices()``): with several, the runs of each
    ``vmap`` are split across them (up to 4 runs per device; :func:`make_plan`). The data equal a
    single device's: runs are independent. A store resumed with a plan whose runs per ``vmap`` do
    not divide among the devices is computed on the default device.
    """
    start = time.perf_counter()
    out = str(out)
    if not out.strip():
        raise UserError("--out is empty; give the store's path or URL")
    bound_malloc_growth()
    if overwrite and resume:
        raise UserError("--overwrite and --resume exclude each other")
    if not entries:
        raise UserError("no optimizer to record")
    devices = jax.devices() if devices is None else list(devices)
    layout = make_layout(task, cfg, entries, plan, shards=len(devices))
    cost = estimate(layout, entries)
    check_fits(cost, out)  # issue #14: refuse what cannot fit before any work
    if progress:
        print(f"record {task.name}: {len(entries)} optimizer(s) × {layout.runs} runs × {layout.steps} steps, "
              f"{layout.n_params} of {task.num_params} parameters kept; {cost.describe()}", flush=True)
    if command is None:
        command = (f"lopt_trace.recorder.record(task={task.name!r}, optimizers="
                   f"{[e.spec for e in entries]!r}, {cfg!r})")
    there = exists(out)
    if there and not (overwrite or resume):
        raise UserError(f"{out} already exists; pass --overwrite to replace it, --resume to continue "
                        "it, or choose another --out")
    if resume and not there:
        raise UserError(f"nothing to resume: no store at {out}; run without --resume")
    if overwrite and there:
        check_replaceable(out)  # only a store (or other output) lopt-trace made is replaced
    if not resume:
        template, encoding = build_template(layout, entries, command)  # before touching anything

    with StoreLock(out) as lock:
        if lock.took_over and progress:
            print(f"note: took over the stale lock of pid {lock.took_over.get('pid')}")
        if resume:
            execution, done = check_resume(out, layout, entries)
            layout = dataclasses.replace(layout, plan=Plan(**execution))
        else:
            create_store(out, template, encoding, replace=there)
            done = {e.name: np.zeros(layout.runs, dtype=bool) for e in entries}
            update_manifest(out, done)  # the metadata, coordinates and θ, final from now on
        placement = batch_placement(layout.plan.run_batch, "runs", devices)
        blocks = _compute(layout, entries, out, done, progress, stop_after, callback, placement)
        group = open_for_writing(out, mode="r")
        flags = {e.name: np.asarray(group[f"runs/{e.name}/run_complete"][:], dtype=bool) for e in entries}
        update_manifest(out, flags)  # everything that is final (all of it when every run is done)

    final = {}
    complete = True
    for e in entries:
        loss = np.asarray(group[f"runs/{e.name}/loss"][:, layout.steps])
        final[e.name] = np.where(flags[e.name], loss, np.nan)
        complete &= bool(flags[e.name].all())
    return RecordResult(out, size_on_disk(out), layout.runs, layout.steps,
                        time.perf_counter() - start, final, complete, blocks, shard_count(placement))


def _compute(layout: Layout, entries, out, done, progress, stop_after, callback, placement=None) -> int:
    """Run every unfinished (optimizer, run group) and stream it to the writer; returns blocks.

    ``placement`` (:func:`lopt_trace.sharding.batch_placement`): θ copied to every device and the
    problems split along their run axis, so the jitted functions (unchanged) run each device's
    runs where they are and their outputs stay split the same way; None: the default device."""
    task = layout.task
    K, E, B = layout.steps, layout.every, layout.plan.block_records
    rb = layout.plan.run_batch
    groups = layout.run_groups()
    todo = [(e, g) for e in entries for g in groups if not done[e.name][g[0]:g[1]].all()]
    bar = tqdm(total=sum(g[1] - g[0] for _, g in todo) * K, disable=not progress, unit="step",
               desc=f"record {task.name}")
    tkey = _task_key(task)
    sample = _cached(("sample", *tkey), functools.partial(_sample_fn, task))
    steps_arg = jnp.asarray(K, dtype=jnp.int32)
    writer = _Writer(out)
    writer.start()
    finished = {k: np.asarray(v, dtype=bool).copy() for k, v in done.items()}
    blocks = 0
    compiled: set[int] = set()
    try:
        for entry in entries:
            mine = [g for e, g in todo if e is entry]
            if not mine:
                continue
            opt = entry.optimizer
            theta = jax.tree.map(jnp.asarray, entry.theta)
            if placement is not None:
                theta = jax.device_put(theta, placement[0])
            block_fn = make_block_fn(layout, opt)
            okey = (*tkey, repr(opt.config()))
            init = _cached(("init", *okey), functools.partial(_init_fn, task, opt))
            final_loss = _cached(("final", *tkey), functools.partial(_final_fn, task))
            for r0, r1 in mine:
                where = f"{entry.name}, runs {r0}-{r1 - 1}"
                first = id(block_fn) not in compiled  # its first call compiles (or loads the cache)
                bar.set_postfix_str(f"{where}, compiling" if first else where)
                bar.refresh()
                n_valid = r1 - r0
                seeds = np.concatenate([layout.seeds[r0:r1], np.repeat(layout.seeds[r1 - 1], rb - n_valid)])
                problems = sample(seedlib.problem_keys(seeds))
                if placement is not None:
                    problems = jax.device_put(problems, placement[1])
                state = init(theta, problems)
                hist = np.zeros((n_valid, len(task.tensors), HIST_BINS), np.int64)
                pending = None
                for b in range(layout.n_blocks):
                    state, counts, outs, losses = block_fn(theta, problems.data, state, steps_arg)
                    if first:  # compiled: the call returned (the computation itself runs on)
                        first = False
                        compiled.add(id(block_fn))
                        bar.set_postfix_str(where)
                        bar.refresh()
                    if pending is not None:
                        hist += _emit(writer, entry.name, layout, pending, r0, n_valid)
                        blocks += 1
                        bar.update(min(B * E, K - (pending[0] * B * E)) * n_valid)
                        _after_block(callback, stop_after, blocks, entry.name, r0, pending[0])
                    pending = (b, counts, outs, losses)
                hist += _emit(writer, entry.name, layout, pending, r0, n_valid)
                blocks += 1
                bar.update(min(B * E, K - (pending[0] * B * E)) * n_valid)
                last = np.asarray(final_loss(problems.data, state), dtype=np.float32)[:n_valid]
                writer.put((entry.name, [
                    ("loss", (slice(r0, r1), K), last),
                    ("gradient_hist", (slice(r0, r1),), hist),
                    ("run_complete", (slice(r0, r1),), np.ones(n_valid, dtype=bool)),
                ]))
                finished[entry.name][r0:r1] = True
                writer.put(functools.partial(update_manifest, out,
                                             {k: v.copy() for k, v in finished.items()}))
                _after_block(callback, stop_after, blocks, entry.name, r0, pending[0])
    except _Stop:
        pass
    except BaseException:
        bar.close()
        writer.close(raise_error=False)  # what was queued is written; the first error wins
        raise
    bar.close()
    writer.close()
    return blocks


def _after_block(callback, stop_after, blocks, name, r0, b):
    if callback is not None:
        callback({"blocks": blocks, "optimizer": name, "run": r0, "block": b})
    if stop_after is not None and blocks >= stop_after:
        raise _Stop()


def _emit(writer: _Writer, name: str, layout: Layout, pending, r0: int, n_valid: int) -> np.ndarray:
    """Fetch one block's outputs and queue their writes; returns its histogram counts (int64)."""
    b, counts, outs, losses = pending
    B, E, K = layout.plan.block_records, layout.every, layout.steps
    outs, losses, counts = jax.device_get((outs, losses, counts))
    s0 = b * B
    s1 = min(s0 + B, layout.n_records)
    l0 = s0 * E
    l1 = min(l0 + B * E, K)
    rs = slice(r0, r0 + n_valid)
    writes = [(var, (rs, slice(s0, s1)), np.asarray(value[:n_valid, : s1 - s0]))
              for var, value in outs.items()]
    writes.append(("loss", (rs, slice(l0, l1)), np.asarray(losses[:n_valid, : l1 - l0], np.float32)))
    writer.put((name, writes))
    return np.asarray(counts[:n_valid], dtype=np.int64)
