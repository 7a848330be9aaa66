"""What a recording will be, decided before any work: its settings, the kept parameters, the
arrays' shapes and chunks, the execution plan (runs per ``vmap``, records per jitted block) and
what it will cost in disk and memory."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil

from lopt_trace import seeds as seedlib
from lopt_trace.defaults import DEFAULT_PARAMS, DEFAULT_RUNS
from lopt_trace.errors import UserError
from lopt_trace.store.schema import HIST_BINS
from lopt_trace.store.sizes import human_bytes
from lopt_trace.store.zarr_io import is_local
from lopt_trace.tasks.base import Task

if TYPE_CHECKING:  # for annotations only
    from lopt_trace.optimizers.sources import Entry as OptimizerEntry

#: bytes of block output (per-parameter arrays and aggregates) aimed at per jitted block
BLOCK_BYTES = 16 * 2**20
#: most kept records per block
MAX_BLOCK_RECORDS = 64
#: most kept records per chunk along ``step``: a chunk holds exactly one block's records, so every
#: block writes whole chunks (chunks spanning several blocks were read, decompressed, recompressed
#: and written again by every block: at mnist ``--params all`` with 256 units, one record per
#: block and 50 per chunk, about 25× the store's bytes); kept for the old name, = MAX_BLOCK_RECORDS
CHUNK_RECORDS = MAX_BLOCK_RECORDS
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
    #: lossy: mantissa bits kept of the per-parameter arrays (state, gradient, update), rounded
    #: to nearest by zarr's ``numcodecs.bitround`` codec when written; None keeps every bit
    keep_bits: int | None = None

    def validate(self) -> None:
        for field in ("runs", "steps", "params", "every"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise UserError(f"--{field} must be a positive integer, got {value!r}")
        if self.dtype not in ("float32", "float16"):
            raise UserError(f"--dtype must be float32 or float16, got {self.dtype!r}")
        if self.keep_bits is not None:
            top = np.finfo(self.dtype).nmant  # mantissa bits: the valid --keep-bits are 1 to these
            if (isinstance(self.keep_bits, bool) or not isinstance(self.keep_bits, (int, np.integer))
                    or not 1 <= self.keep_bits <= top):
                raise UserError(f"--keep-bits must be an integer from 1 to {top} for {self.dtype} "
                                f"(the mantissa bits kept), got {self.keep_bits!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise UserError(f"--seed must be a non-negative integer, got {self.seed!r}")
        try:
            seedlib.test_seeds(self.seed, self.runs)
        except ValueError:
            raise UserError(f"--seed {self.seed} with --runs {self.runs} runs past the test seed "
                            "range; choose a smaller --seed") from None



@dataclasses.dataclass(frozen=True)
class Plan:
    """How the steps are computed: runs per ``vmap`` and kept records per jitted block."""

    run_batch: int
    block_records: int


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

    @property
    def stored_itemsize(self) -> float:
        """Bytes per value of the per-parameter arrays in the store's estimate: the itemsize, or
        with ``--keep-bits N`` roughly what compression keeps of a rounded value (sign, exponent and N
        mantissa bits; the zeroed low bits compress away)."""
        if self.cfg.keep_bits is None:
            return float(self.itemsize)
        return (1 + np.finfo(self.cfg.dtype).iexp + self.cfg.keep_bits) / 8

    def run_groups(self) -> list[tuple[int, int]]:
        b = self.plan.run_batch
        return [(r, min(r + b, self.runs)) for r in range(0, self.runs, b)]

    # chunks: fixed at creation, sized for appending along step and reading along any dim
    def chunks(self, units: int) -> dict[str, tuple[int, ...]]:
        rc = min(self.runs, CHUNK_RUNS)
        b = self.plan.block_records
        # one block per chunk along step: every block's write covers whole chunks (never a read-
        # modify-write of a chunk another block began); a plan of one record per block (given
        # explicitly) keeps chunks of 2, written in two halves
        sc = min(self.n_records, b)
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


#: most runs per ``vmap`` on each device
RUNS_PER_DEVICE = 4


def make_plan(task: Task, cfg: RecordConfig, steps: int, n_params: int, max_units: int,
              shards: int = 1) -> Plan:
    """Choose runs per vmap and records per block so a block's outputs stay near BLOCK_BYTES (but
    at least 2 records: a block is also a chunk along ``step``; :meth:`Layout.chunks`).

    With ``shards`` devices the runs of one ``vmap`` are split across them: up to
    :data:`RUNS_PER_DEVICE` each, a multiple of ``shards`` (padded with copies of the last run when
    there are fewer runs). One device: ``min(runs, 4)``, as before sharding existed."""
    n_rec = -(-steps // cfg.every)
    shards = max(1, int(shards))
    run_batch = min(-(-cfg.runs // shards), RUNS_PER_DEVICE) * shards
    isz = np.dtype(cfg.dtype).itemsize
    per_record = run_batch * (n_params * (2 + max_units) * isz
                              + len(task.tensors) * (max_units + 1) * 4 + cfg.every * 4)
    # at least 2 records when there are 2: a chunk along step is one block, and no chunk has length 1
    block = int(max(2, min(MAX_BLOCK_RECORDS, BLOCK_BYTES // per_record)))
    block = min(block, n_rec)
    n_blocks = -(-n_rec // block)
    return Plan(run_batch=run_batch, block_records=-(-n_rec // n_blocks))


def make_layout(task: Task, cfg: RecordConfig, entries: list[OptimizerEntry],
                plan: Plan | None = None, shards: int = 1) -> Layout:
    """The :class:`Layout` of a recording; ``shards``: the devices its runs are split across."""
    cfg.validate()
    steps = cfg.steps or task.default_steps
    flat, tens, within = subset_indices(task, cfg.params)
    max_units = max(e.optimizer.state_size for e in entries)
    plan = plan or make_plan(task, cfg, steps, flat.size, max_units, shards)
    return Layout(task, cfg, steps, seedlib.test_seeds(cfg.seed, cfg.runs), flat, tens, within,
                  plan, max_units)


# -- what it will cost ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes a recording needs, known before any work: ``store`` (the arrays uncompressed, an
    upper bound: compression saves 15-25 % on states; plus coordinates and the learned optimizer's
    meta-training history; tiny stores add some kB of metadata; with ``--keep-bits N`` the
    per-parameter arrays count sign, exponent and N mantissa bits per value, a rough guess of what
    compression keeps) and ``memory`` (the inner problems in flight and two blocks of outputs,
    besides the interpreter, JAX and the task's data)."""

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
    isz, ssz = layout.itemsize, layout.stored_itemsize
    store = METADATA_BYTES * (1 + len(entries))  # zarr.json files, θ groups, the manifest
    for e in entries:
        d = e.optimizer.state_size
        store += r * n * p * (d + 2) * ssz          # state, gradient, update per kept parameter
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
