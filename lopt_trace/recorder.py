"""The recorder: run test optimizations and stream their dynamics into a labeled Zarr store.

``record(task, optimizers, config, out)`` runs ``config.runs`` held-out test problems with each
optimizer and writes the schema of ``docs/store.md``:

1. Everything is checked first (task, optimizers, numbers, the output path), so a bad input never
   touches an existing store.
2. The whole store is created up front: every array with its final shape and fixed chunks, the
   coordinates, θ and the attributes, with consolidated metadata. Nothing in the metadata changes
   afterwards.
3. Steps are computed in jitted blocks: a ``lax.scan`` over ``block_records`` kept records (each
   record is ``every`` inner steps), ``vmap``-ed over ``run_batch`` runs. Inside the block, the
   kept subset of parameters is gathered, the exact per-tensor means of the state and of |g| over
   *all* parameters are taken with ``segment_sum``, and |g| is histogrammed; only those small
   outputs go to the host.
4. A background writer thread writes block i into its region of the store while block i+1
   computes (a bounded queue of two blocks), so memory is bounded by the block size.
5. When all of a run's data is written, its ``run_complete`` flag is set; ``--resume`` keeps the
   finished runs and redoes the rest.

A second recorder on the same store is refused by :class:`lopt_trace.store.StoreLock`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import queue
import re
import threading
import time
from pathlib import Path

import dask.array as da
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace import bundled
from lopt_trace import seeds as seedlib
from lopt_trace.defaults import DEFAULT_OPTIMIZERS, DEFAULT_PARAMS, DEFAULT_RUNS
from lopt_trace.errors import UserError
from lopt_trace.optimizers import BASELINES, ComponentwiseOptimizer
from lopt_trace.provenance import utc_now, versions
from lopt_trace.store import (HIST_BINS, HIST_LOG10_MAX, HIST_LOG10_MIN, RUN_COORDS, RUN_VARIABLES,
                              SCHEMA_VERSION, StoreLock, hist_edges, human_bytes, size_on_disk,
                              with_label_copies)
from lopt_trace.tasks.base import Task
from lopt_trace.theta import theta_from_dataset, theta_to_dataset
from lopt_trace.unroll import InnerState, init_inner, inner_step
from lopt_trace.manifest import MANIFEST, update_manifest
from lopt_trace.zarr_io import (COMPRESSORS, ZARR_FORMAT, check_replaceable, exists, is_local,
                                quiet_zarr_writes, remove)


#: bytes of block output (per-parameter arrays and aggregates) aimed at per jitted block
BLOCK_BYTES = 16 * 2**20
#: most kept records per block
MAX_BLOCK_RECORDS = 64
#: kept records per chunk along ``step`` (rounded to a multiple of the block)
CHUNK_RECORDS = 64
#: bytes aimed at per chunk of the per-parameter arrays
CHUNK_BYTES = 4 * 2**20
#: runs per chunk along ``run``
CHUNK_RUNS = 4



# -- configuration ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RecordConfig:
    """What to record. ``steps=None`` means the task's default; ``params=None`` keeps every
    parameter."""

    runs: int = DEFAULT_RUNS
    steps: int | None = None
    params: int | None = DEFAULT_PARAMS
    every: int = 1
    dtype: str = "float32"
    seed: int = 0

    def validate(self) -> None:
        for field in ("runs", "steps", "params", "every"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise UserError(f"--{field} must be a positive integer, got {value!r}")
        if self.dtype not in ("float32", "float16"):
            raise UserError(f"--dtype must be float32 or float16, got {self.dtype!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise UserError(f"--seed must be a non-negative integer, got {self.seed!r}")
        try:
            seedlib.test_seeds(self.seed, self.runs)
        except ValueError:
            raise UserError(f"--seed {self.seed} with --runs {self.runs} runs past the test seed "
                            "range; choose a smaller --seed") from None


@dataclasses.dataclass
class OptimizerEntry:
    """One optimizer to record: its group name, the optimizer, θ and where they came from."""

    name: str
    optimizer: ComponentwiseOptimizer
    theta: dict
    source: str
    spec: str
    meta_train: xr.Dataset | None = None
    attrs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the steps are computed: runs per ``vmap`` and kept records per jitted block."""

    run_batch: int
    block_records: int


# -- optimizers --------------------------------------------------------------------------------------
def _f32_theta(theta: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float32) for k, v in theta.items()}


def _tuned(task_name: str, name: str) -> tuple[dict, dict] | None:
    path = bundled.tuned_path(task_name)
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())["optimizers"].get(name)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise UserError(f"the bundled tuned hyperparameters {path} are unreadable ({exc}); "
                        "reinstall lopt-trace") from None
    if not entry or "theta" not in entry:
        return None
    return entry["theta"], {k: v for k, v in entry.items() if k != "theta"}


def _label(text: str) -> str:
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip("._") or "optimizer"
    return label


def resolve_optimizer(spec: str, task_name: str) -> OptimizerEntry:
    """Turn one ``--optimizer`` SPEC into an :class:`OptimizerEntry` (θ loaded and checked)."""
    from lopt_trace.optimizers.io import load_optimizer
    from lopt_trace.optimizers.optax_wrap import optax_entry

    if spec.startswith("optax:"):  # any component-wise optax transform, θ from the spec
        return OptimizerEntry(*optax_entry(spec), source="spec", spec=spec)
    if spec in BASELINES:
        opt = BASELINES[spec]()
        defaults = _f32_theta(opt.init_theta())
        tuned = _tuned(task_name, spec)
        if tuned is None:
            return OptimizerEntry(spec, opt, defaults, "default", spec)
        values, info = tuned
        if set(values) != set(defaults):
            raise UserError(f"the bundled tuned θ for {spec} on {task_name} has entries {sorted(values)}, "
                            f"expected {sorted(defaults)}; reinstall lopt-trace")
        return OptimizerEntry(spec, opt, _f32_theta(values), "tuned", spec,
                              attrs={"tuned": _jsonable(info),
                                     "tuned_file": str(bundled.tuned_path(task_name))})
    if spec in bundled.LEARNED:
        path = bundled.optimizer_path(task_name, spec)
        if not path.exists():
            raise UserError(f"no {spec} optimizer is bundled for task {task_name!r}; train one with "
                            f"`lopt-trace train --task {task_name} --out FILE`, then pass --optimizer FILE")
        trained, source, name = load_optimizer(path), "bundled", spec
    else:
        if not exists(spec):
            known = ", ".join([*bundled.LEARNED, *BASELINES])
            raise UserError(f"unknown optimizer {spec!r}: use one of {known}, optax:NAME, or the path "
                            f"of an optimizer file (nothing at {spec}; make one with `lopt-trace train`)")
        trained, source, name = load_optimizer(spec), str(spec), _label(Path(str(spec).rstrip("/")).stem)
    attrs = {"optimizer_file": str(path if spec in bundled.LEARNED else spec)}
    if trained.task is not None:
        attrs["trained_on"] = _jsonable(trained.task)
    if trained.attrs.get("metatrain"):
        attrs["metatrain"] = _jsonable(trained.attrs["metatrain"])
    return OptimizerEntry(name, trained.optimizer, _f32_theta(trained.theta), source, spec,
                          meta_train=trained.meta_train, attrs=attrs)


def resolve_optimizers(task_name: str, specs=None) -> list[OptimizerEntry]:
    """Resolve every SPEC (default :data:`DEFAULT_OPTIMIZERS`); group names are made unique."""
    specs = list(specs) if specs else list(DEFAULT_OPTIMIZERS)
    seen_specs = set()
    for spec in specs:
        if spec in seen_specs:
            raise UserError(f"--optimizer {spec} is given twice")
        seen_specs.add(spec)
    entries, names = [], set()
    for spec in specs:
        entry = resolve_optimizer(spec, task_name)
        base, i = entry.name, 2
        while entry.name in names:
            entry.name = f"{base}_{i}"
            i += 1
        names.add(entry.name)
        entries.append(entry)
    return entries


# -- layout ------------------------------------------------------------------------------------------
def subset_indices(task: Task, params: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept parameters: ``params`` per tensor, evenly spaced (``np.linspace``) within each
    flattened tensor, or all of them. Returns (flat index, tensor number, index within tensor)."""
    flat, tensor, within = [], [], []
    offset = 0
    for i, t in enumerate(task.tensors):
        if params is None or params >= t.size:
            idx = np.arange(t.size)
        else:
            idx = np.unique(np.round(np.linspace(0, t.size - 1, params)).astype(np.int64))
        flat.append(offset + idx)
        tensor.append(np.full(idx.shape, i))
        within.append(idx)
        offset += t.size
    return (np.concatenate(flat).astype(np.int64), np.concatenate(tensor).astype(np.int64),
            np.concatenate(within).astype(np.int64))


@dataclasses.dataclass
class Layout:
    """Shapes, chunks and the execution plan of one store."""

    task: Task
    cfg: RecordConfig
    steps: int
    seeds: np.ndarray
    flat_index: np.ndarray
    param_tensor: np.ndarray
    param_index: np.ndarray
    plan: Plan
    max_units: int

    @property
    def every(self) -> int:
        return self.cfg.every

    @property
    def runs(self) -> int:
        return self.cfg.runs

    @property
    def n_params(self) -> int:
        return int(self.flat_index.size)

    @property
    def n_records(self) -> int:
        return -(-self.steps // self.every)

    @property
    def record_steps(self) -> np.ndarray:
        return np.arange(self.n_records, dtype=np.int64) * self.every

    @property
    def n_blocks(self) -> int:
        return -(-self.n_records // self.plan.block_records)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.cfg.dtype).itemsize

    def run_groups(self) -> list[tuple[int, int]]:
        b = self.plan.run_batch
        return [(r, min(r + b, self.runs)) for r in range(0, self.runs, b)]

    # chunks: fixed at creation, sized for appending along step and reading along any dim
    def chunks(self, units: int) -> dict[str, tuple[int, ...]]:
        rc = min(self.runs, CHUNK_RUNS)
        b = self.plan.block_records
        sc = min(self.n_records, b * max(1, CHUNK_RECORDS // b))
        if self.n_records >= 2:
            sc = max(sc, 2)
        p, t = self.n_params, len(self.task.tensors)

        def pc(per_param: int) -> int:
            fit = CHUNK_BYTES // max(1, rc * sc * per_param)
            return int(min(p, max(fit, 2)))

        lc = min(self.steps + 1, max(2, sc * self.every))
        return {
            "loss": (rc, lc),
            "gradient": (rc, sc, pc(self.itemsize)),
            "update": (rc, sc, pc(self.itemsize)),
            "state": (rc, sc, pc(self.itemsize * units), units),
            "initial_state": (self.n_params, units),
            "state_mean": (rc, sc, t, units),
            "gradient_abs_mean": (rc, sc, t),
            "gradient_hist": (rc, t, HIST_BINS),
            "run_complete": (self.runs,),
        }


def make_plan(task: Task, cfg: RecordConfig, steps: int, n_params: int, max_units: int) -> Plan:
    """Choose runs per vmap and records per block so a block's outputs stay near BLOCK_BYTES."""
    n_rec = -(-steps // cfg.every)
    run_batch = min(cfg.runs, 4)
    isz = np.dtype(cfg.dtype).itemsize
    per_record = run_batch * (n_params * (2 + max_units) * isz
                              + len(task.tensors) * (max_units + 1) * 4 + cfg.every * 4)
    block = int(max(1, min(MAX_BLOCK_RECORDS, BLOCK_BYTES // per_record)))
    block = min(block, n_rec)
    n_blocks = -(-n_rec // block)
    return Plan(run_batch=run_batch, block_records=-(-n_rec // n_blocks))


def make_layout(task: Task, cfg: RecordConfig, entries: list[OptimizerEntry],
                plan: Plan | None = None) -> Layout:
    cfg.validate()
    steps = cfg.steps or task.default_steps
    flat, tens, within = subset_indices(task, cfg.params)
    max_units = max(e.optimizer.state_size for e in entries)
    plan = plan or make_plan(task, cfg, steps, flat.size, max_units)
    return Layout(task, cfg, steps, seedlib.test_seeds(cfg.seed, cfg.runs), flat, tens, within,
                  plan, max_units)


# -- what it will cost ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes a recording needs, known before any work: ``store`` (the arrays uncompressed, zstd
    saves little on states, plus coordinates and the learned optimizer's meta-training history;
    tiny stores add some kB of metadata) and ``memory`` (the inner problems in flight and two
    blocks of outputs, besides the interpreter, JAX and the task's data)."""

    store: int
    memory: int

    def describe(self) -> str:
        return f"store about {human_bytes(self.store)}, working memory about {human_bytes(self.memory)}"


#: metadata bytes per group of a store, about (measured on small stores: their zarr.json files,
#: θ subgroups and manifest entries)
METADATA_BYTES = 40_000


def estimate(layout: Layout, entries: list[OptimizerEntry]) -> Estimate:
    """The :class:`Estimate` of recording ``entries`` with ``layout``."""
    r, n, p, t, k = layout.runs, layout.n_records, layout.n_params, len(layout.task.tensors), layout.steps
    isz = layout.itemsize
    store = METADATA_BYTES * (1 + len(entries))  # zarr.json files, θ groups, the manifest
    for e in entries:
        d = e.optimizer.state_size
        store += r * n * p * (d + 2) * isz          # state, gradient, update per kept parameter
        store += r * n * t * (d + 1) * 4            # per-tensor means
        store += r * (k + 1) * 4 + r * t * HIST_BINS * 8 + p * d * 4
        store += p * 48 + (int(e.meta_train.nbytes) if e.meta_train is not None else 0)  # labels, history
    total = int(layout.task.num_params)
    rb, b = layout.plan.run_batch, layout.plan.block_records
    per_record = rb * (p * (2 + layout.max_units) * isz + t * (layout.max_units + 1) * 4 + layout.every * 4)
    memory = rb * total * (layout.max_units + 2) * 4 * 2 + 2 * per_record * b  # problems (twice: the
    return Estimate(int(store), int(memory))                                       # scan's carry) + blocks


def check_fits(est: Estimate, out: str) -> None:
    """Refuse, with the estimate in the message, a recording that cannot fit in the free disk
    space (local stores) or the available memory."""
    import shutil

    import psutil

    avail = psutil.virtual_memory().available
    if est.memory > avail:
        raise UserError(f"this recording needs about {human_bytes(est.memory)} of memory and "
                        f"{human_bytes(avail)} is available; record fewer --runs or --params, or use "
                        "--every to keep fewer steps")
    if is_local(out):
        parent = Path(out).resolve().parent
        while not parent.exists():
            parent = parent.parent
        free = shutil.disk_usage(parent).free
        if est.store > free:
            raise UserError(f"{out}: the store needs about {human_bytes(est.store)} and {human_bytes(free)} "
                            "is free there; free some space, keep fewer --params or --runs, use --every "
                            "or --dtype float16, or choose another --out")


# -- the template --------------------------------------------------------------------------------------
def _jsonable(obj):
    """Plain JSON types (zarr attributes are JSON)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else
                                 (o.tolist() if hasattr(o, "tolist") else str(o))))


def _var(name: str, data, **extra_attrs) -> xr.Variable:
    dims, long_name, units = (RUN_VARIABLES.get(name) or RUN_COORDS[name])
    return xr.Variable(dims, data, {"long_name": long_name, "units": units, **extra_attrs})


def _strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


def group_dataset(layout: Layout, entry: OptimizerEntry) -> tuple[xr.Dataset, dict]:
    """The lazy template of one ``/runs/<optimizer>`` group and its encoding."""
    task, opt = layout.task, entry.optimizer
    d = opt.state_size
    chunks = layout.chunks(d)
    r, s, p, t = layout.runs, layout.n_records, layout.n_params, len(task.tensors)
    dt = np.dtype(layout.cfg.dtype)
    shapes = {
        "loss": ((r, layout.steps + 1), np.float32),
        "gradient": ((r, s, p), dt),
        "update": ((r, s, p), dt),
        "state": ((r, s, p, d), dt),
        "state_mean": ((r, s, t, d), np.float32),
        "gradient_abs_mean": ((r, s, t), np.float32),
        "gradient_hist": ((r, t, HIST_BINS), np.int64),
    }
    data_vars = {name: _var(name, da.zeros(shape, dtype=dtype, chunks=chunks[name]))
                 for name, (shape, dtype) in shapes.items()}
    n_all = task.num_params
    h0 = np.asarray(opt.init_state(jax.tree.map(jnp.asarray, entry.theta), n_all))[layout.flat_index]
    data_vars["initial_state"] = _var("initial_state", h0.astype(dt))
    data_vars["run_complete"] = _var("run_complete", np.zeros(r, dtype=bool))
    edges = hist_edges()
    names = [ti.name for ti in task.tensors]
    coords = {
        "run": _var("run", layout.seeds.astype(np.int64)),
        "step": _var("step", layout.record_steps),
        "loss_step": _var("loss_step", np.arange(layout.steps + 1, dtype=np.int64)),
        "unit": _var("unit", _strings(opt.state_names)),
        "tensor": _var("tensor", _strings(names)),
        "tensor_layer": _var("tensor_layer", np.array([ti.layer for ti in task.tensors], np.int64)),
        "tensor_kind": _var("tensor_kind", _strings(ti.kind for ti in task.tensors)),
        "tensor_size": _var("tensor_size", np.array([ti.size for ti in task.tensors], np.int64)),
        "param_tensor": _var("param_tensor", _strings(names[i] for i in layout.param_tensor)),
        "param_layer": _var("param_layer", np.array([task.tensors[i].layer for i in layout.param_tensor], np.int64)),
        "param_kind": _var("param_kind", _strings(task.tensors[i].kind for i in layout.param_tensor)),
        "param_index": _var("param_index", layout.param_index),
        "param_flat_index": _var("param_flat_index", layout.flat_index),
        "bin": _var("bin", np.sqrt(edges[:-1] * edges[1:])),
        "bin_edges": _var("bin_edges", edges),
    }
    attrs = {
        "optimizer": _jsonable(opt.config()),
        "state_names": list(opt.state_names),
        "source": entry.source,
        "spec": entry.spec,
        **entry.attrs,
    }
    ds = with_label_copies(xr.Dataset(data_vars, coords=coords, attrs=_jsonable(attrs)))
    encoding = {}
    for name in ds.variables:
        encoding[name] = {"compressors": COMPRESSORS}
        if name in chunks:
            encoding[name]["chunks"] = chunks[name]
    return ds, encoding


def settings_of(layout: Layout, entries: list[OptimizerEntry]) -> dict:
    """What a resumed recording must match."""
    cfg = layout.cfg
    return _jsonable({
        "task": layout.task.config(), "runs": cfg.runs, "steps": layout.steps, "every": cfg.every,
        "params": cfg.params if cfg.params is not None else "all", "dtype": cfg.dtype, "seed": cfg.seed,
        "optimizers": [{"name": e.name, "config": e.optimizer.config(), "source": e.source}
                       for e in entries],
    })


def build_template(layout: Layout, entries: list[OptimizerEntry], command: str) -> tuple[xr.DataTree, dict]:
    """The whole store, lazily: the tree to write with ``compute=False`` and its encoding."""
    from lopt_trace._version import __version__

    cfg = layout.cfg
    root_attrs = {
        "schema_version": SCHEMA_VERSION,
        "lopt_trace_version": __version__,
        "task": layout.task.name,
        "task_config": layout.task.config(),
        "created": utc_now(),
        "command": command,
        "seeds": [int(s) for s in layout.seeds],
        "seed": cfg.seed,
        "runs": cfg.runs,
        "versions": versions(),
        "optimizers": [e.name for e in entries],
        "steps": layout.steps,
        "every": cfg.every,
        "params_per_tensor": cfg.params if cfg.params is not None else "all",
        "dtype": cfg.dtype,
        "record_settings": settings_of(layout, entries),
        "manifest": MANIFEST,
        "execution": dataclasses.asdict(layout.plan),
    }
    nodes = {"/": xr.Dataset(attrs=_jsonable(root_attrs)), "/runs": xr.Dataset()}
    encoding = {}
    meta = None
    for e in entries:
        ds, enc = group_dataset(layout, e)
        nodes[f"/runs/{e.name}"] = ds
        encoding[f"/runs/{e.name}"] = enc
        th = theta_to_dataset(e.theta)
        nodes[f"/runs/{e.name}/theta"] = th
        encoding[f"/runs/{e.name}/theta"] = {v: {"compressors": COMPRESSORS} for v in th.variables}
        if meta is None and e.meta_train is not None:
            meta = e.meta_train.drop_encoding()
            meta.attrs = {**meta.attrs, "optimizer": e.name}
    if meta is not None:
        nodes["/meta_train"] = meta
        encoding["/meta_train"] = {v: {"compressors": COMPRESSORS} for v in meta.variables}
    return xr.DataTree.from_dict(nodes), encoding


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


# -- the writer ----------------------------------------------------------------------------------------------
class _Writer(threading.Thread):
    """Writes regions of the store from a bounded queue, in order, in a background thread."""

    def __init__(self, path: str, maxsize: int = 2):
        super().__init__(daemon=True, name="lopt-trace-writer")
        import zarr

        self.group = zarr.open_group(str(path), mode="r+", zarr_format=ZARR_FORMAT)
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self._arrays: dict = {}

    def _array(self, key):
        if key not in self._arrays:
            self._arrays[key] = self.group[key]
        return self._arrays[key]

    def run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # keep draining so the producer never blocks
            try:
                if callable(item):  # e.g. a manifest update, after the writes queued before it
                    item()
                    continue
                group, writes = item
                for var, region, value in writes:
                    self._array(f"runs/{group}/{var}")[region] = value
            except BaseException as exc:  # reported to the main thread
                self.error = exc

    def put(self, item):
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self.is_alive():
                    raise RuntimeError("the store writer stopped") from self.error

    def close(self, raise_error: bool = True):
        self.queue.put(None)
        self.join()
        if raise_error and self.error is not None:
            raise self.error


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

    def summary(self) -> str:
        lines = [f"store   {self.path} ({human_bytes(self.size)} on disk)",
                 f"runs    {self.runs} test problems x {self.steps} steps"
                 + ("" if self.complete else "  [INCOMPLETE: continue with --resume]"),
                 "final loss (mean ± sem over runs):"]
        width = max([len(k) for k in self.final_loss] + [4])
        for name, values in self.final_loss.items():
            lines.append(f"  {name:<{width}}  {format_mean_sem(values)}")
        lines.append(f"time    {self.seconds:.1f} s")
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


_MALLOC_BOUNDED = False


def bound_malloc_growth(threshold: int = 1 << 20) -> None:
    """Serve allocations of ``threshold`` bytes and more with mmap, so freed blocks go back to the
    system at once (glibc only; elsewhere nothing happens).

    glibc raises its mmap threshold dynamically up to 32 MB as large arrays are freed; afterwards
    block-sized arrays come from the heap, and with a writer thread the heap fragments, so a
    long recording's resident memory creeps up by a few percent of the data written (measured:
    +80 MB per 4x steps on two_moons). A fixed threshold keeps the peak flat. Called by
    :func:`record`; it affects only how large allocations are served in this process.
    """
    global _MALLOC_BOUNDED
    if _MALLOC_BOUNDED:
        return
    _MALLOC_BOUNDED = True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, int(threshold))  # M_MMAP_THRESHOLD (also turns off the dynamic raise)
    except (OSError, AttributeError):  # not glibc
        pass


def _check_resume(out: str, layout: Layout, entries: list[OptimizerEntry]) -> tuple[Plan, dict]:
    """Open an existing store for --resume; check it matches; return its plan and completion."""
    try:
        tree = xr.open_datatree(out, engine="zarr", chunks=None)
    except Exception as exc:
        raise UserError(f"{out} is not a complete store ({type(exc).__name__}); start again with --overwrite") from None
    attrs = tree.attrs
    if attrs.get("schema_version") != SCHEMA_VERSION or "record_settings" not in attrs:
        raise UserError(f"{out} is not a store this lopt-trace can resume (schema "
                        f"{attrs.get('schema_version')!r}); start again with --overwrite")
    want, have = settings_of(layout, entries), attrs["record_settings"]
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise UserError(f"{out} was recorded with other settings ({', '.join(diff)} differ); resume "
                        "with the same options, or start again with --overwrite")
    done = {}
    for e in entries:
        node = tree["runs"][e.name]
        stored = theta_from_dataset(node["theta"].to_dataset(inherit=False))
        if set(stored) != set(e.theta) or any(not np.array_equal(stored[k], e.theta[k]) for k in stored):
            raise UserError(f"{out}: the θ of {e.name} differs from the one given now; resume with the "
                            "same optimizer, or start again with --overwrite")
        done[e.name] = np.asarray(node["run_complete"].values, dtype=bool)
    return Plan(**attrs["execution"]), done


def record(task: Task, entries: list[OptimizerEntry], cfg: RecordConfig, out, *,
           overwrite: bool = False, resume: bool = False, progress: bool = True,
           command: str | None = None, plan: Plan | None = None, stop_after: int | None = None,
           callback=None) -> RecordResult:
    """Record ``cfg.runs`` test runs of every optimizer in ``entries`` on ``task`` into ``out``.

    ``out`` is a local path or an fsspec URL. An existing store is replaced only with
    ``overwrite``; ``resume`` continues an interrupted store (finished runs kept, unfinished runs
    redone; the data equal an uninterrupted recording). ``stop_after`` stops cleanly after that
    many blocks, to simulate an interruption; ``callback(info)`` is called after every block.
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
    layout = make_layout(task, cfg, entries, plan)
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
            stored_plan, done = _check_resume(out, layout, entries)
            layout = dataclasses.replace(layout, plan=stored_plan)
        else:
            if there:
                remove(out)
            if is_local(out):
                Path(out).parent.mkdir(parents=True, exist_ok=True)
            with quiet_zarr_writes():
                template.to_zarr(out, mode="w-", compute=False, consolidated=True,
                                 zarr_format=ZARR_FORMAT, encoding=encoding)
            done = {e.name: np.zeros(layout.runs, dtype=bool) for e in entries}
            update_manifest(out, done)  # the metadata, coordinates and θ, final from now on
        blocks = _compute(layout, entries, out, done, progress, stop_after, callback)
        import zarr

        group = zarr.open_group(out, mode="r", zarr_format=ZARR_FORMAT)
        flags = {e.name: np.asarray(group[f"runs/{e.name}/run_complete"][:], dtype=bool) for e in entries}
        update_manifest(out, flags)  # everything that is final (all of it when every run is done)

    final = {}
    complete = True
    for e in entries:
        loss = np.asarray(group[f"runs/{e.name}/loss"][:, layout.steps])
        final[e.name] = np.where(flags[e.name], loss, np.nan)
        complete &= bool(flags[e.name].all())
    return RecordResult(out, size_on_disk(out), layout.runs, layout.steps,
                        time.perf_counter() - start, final, complete, blocks)


def _compute(layout: Layout, entries, out, done, progress, stop_after, callback) -> int:
    """Run every unfinished (optimizer, run group) and stream it to the writer; returns blocks."""
    from tqdm.auto import tqdm

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
