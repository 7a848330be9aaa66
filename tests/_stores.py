"""Tiny schema-v1 stores for the analysis tests.

``make_store`` records small test optimizations with the real recorder
(:mod:`lopt_trace.recorder`) when it is available, and otherwise builds the same schema-v1 tree
directly from :func:`lopt_trace.unroll.inner_step` in a ``lax.scan``, so that the analyses can be
tested before and independently of the recorder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace.seeds import problem_keys, test_seeds
from lopt_trace.theta import theta_to_dataset
from lopt_trace.unroll import init_inner, inner_step
from lopt_trace.zarr_io import COMPRESSORS, ZARR_FORMAT, open_tree, quiet_zarr_writes, remove

try:  # the store's fixed log-spaced |g| histogram bins
    from lopt_trace.store import hist_edges

    BIN_EDGES = hist_edges()
except ImportError:
    BIN_EDGES = np.logspace(-10, 4, 57)


def _attrs(long_name, units):
    return {"long_name": long_name, "units": units}


_PROBLEMS: dict = {}


def _problems(task, seeds):
    """The test problems for ``seeds`` (sampled once per task configuration and seeds)."""
    key = (repr(task.config()), tuple(int(x) for x in seeds))
    if key not in _PROBLEMS:
        _PROBLEMS[key] = jax.jit(jax.vmap(task.sample))(problem_keys(seeds))
    return _PROBLEMS[key]


def _record_one(task, opt, theta, seeds, steps):
    """Run ``len(seeds)`` problems for ``steps`` steps; every per-step record, all parameters."""

    def one(problem):
        start = init_inner(task, opt, theta, problem)

        def body(s, _):
            s, rec = inner_step(task, opt, theta, problem.data, s)
            return s, rec

        final, recs = jax.lax.scan(body, start, None, length=steps)
        last = task.flat_loss(problem.data, final.x, final.step)
        return jnp.append(recs.loss, last), recs.gradient, recs.update, recs.state, start.h

    return jax.jit(jax.vmap(one))(_problems(task, seeds))


def build_tree(task, optimizers: dict, runs: int = 3, steps: int | None = None, every: int = 1,
               params_per_tensor: int | None = None, seed_base: int = 0) -> xr.DataTree:
    """A schema-v1 tree in memory. ``optimizers`` maps a group name to ``(opt, theta)``."""
    steps = int(steps or task.default_steps)
    seeds = test_seeds(seed_base, runs)
    kept_steps = np.arange(0, steps, every)
    # the kept parameters: ``params_per_tensor`` evenly spread within each tensor
    flat, ptensor, players, pkinds, pindex = [], [], [], [], []
    start = 0
    for t in task.tensors:
        n = t.size if params_per_tensor is None else min(t.size, params_per_tensor)
        idx = np.unique(np.round(np.linspace(0, t.size - 1, n)).astype(int))
        flat.append(start + idx)
        ptensor += [t.name] * len(idx)
        players += [t.layer] * len(idx)
        pkinds += [t.kind] * len(idx)
        pindex.append(idx)
        start += t.size
    flat, pindex = np.concatenate(flat), np.concatenate(pindex)
    tensor_of = np.asarray(task.tensor_index())
    n_tensors = len(task.tensors)
    sizes = np.array([t.size for t in task.tensors])

    nodes = {}
    names = []
    for name, (opt, theta) in optimizers.items():
        names.append(name)
        loss, grad, upd, state, h0 = (np.asarray(a) for a in _record_one(task, opt, theta, seeds, steps))
        # exact per-tensor aggregates over all parameters
        onehot = np.eye(n_tensors)[tensor_of] / sizes[tensor_of][:, None]  # (n, tensors)
        st_k, g_k = state[:, kept_steps], grad[:, kept_steps]
        state_mean = np.einsum("rsnu,nt->rstu", st_k, onehot)
        gabs_mean = np.einsum("rsn,nt->rst", np.abs(g_k), onehot)
        # values outside the edges go to the end bins, as the recorder does
        clipped = np.clip(np.abs(grad), BIN_EDGES[0], BIN_EDGES[-1])
        hist = np.stack([[np.histogram(clipped[r][:, tensor_of == t], BIN_EDGES)[0]
                          for t in range(n_tensors)] for r in range(runs)])
        coords = {
            "run": ("run", seeds.astype(np.int64)),
            "step": ("step", kept_steps.astype(np.int64)),
            "loss_step": ("loss_step", np.arange(steps + 1, dtype=np.int64)),
            "unit": ("unit", np.array(opt.state_names, dtype=object)),
            "tensor": ("tensor", np.array([t.name for t in task.tensors], dtype=object)),
            "tensor_layer": ("tensor", np.array([t.layer for t in task.tensors], dtype=np.int64)),
            "tensor_kind": ("tensor", np.array([t.kind for t in task.tensors], dtype=object)),
            "tensor_size": ("tensor", sizes.astype(np.int64)),
            "param_tensor": ("param", np.array(ptensor, dtype=object)),
            "param_layer": ("param", np.array(players, dtype=np.int64)),
            "param_kind": ("param", np.array(pkinds, dtype=object)),
            "param_index": ("param", pindex.astype(np.int64)),
            "param_flat_index": ("param", flat.astype(np.int64)),
            "bin_edges": ("bin_edge", BIN_EDGES),
            "bin": ("bin", np.sqrt(BIN_EDGES[:-1] * BIN_EDGES[1:])),
        }
        ds = xr.Dataset(
            {
                "loss": (("run", "loss_step"), loss, _attrs("training loss", "1")),
                "gradient": (("run", "step", "param"), g_k[:, :, flat], _attrs("gradient", "1")),
                "update": (("run", "step", "param"), upd[:, kept_steps][:, :, flat],
                           _attrs("parameter update", "1")),
                "state": (("run", "step", "param", "unit"), st_k[:, :, flat],
                          _attrs("optimizer state after the step", "1")),
                "initial_state": (("param", "unit"), h0[0][flat], _attrs("initial optimizer state", "1")),
                "state_mean": (("run", "step", "tensor", "unit"), state_mean,
                               _attrs("mean optimizer state per tensor", "1")),
                "gradient_abs_mean": (("run", "step", "tensor"), gabs_mean,
                                      _attrs("mean gradient magnitude per tensor", "1")),
                "gradient_hist": (("run", "tensor", "bin"), hist.astype(np.int64),
                                  _attrs("gradient magnitude histogram", "count")),
                "run_complete": (("run",), np.ones(runs, dtype=bool), _attrs("run recorded to the end", "1")),
            },
            coords=coords,
            attrs={"optimizer": opt.config(), "state_names": list(opt.state_names), "source": "test"},
        )
        nodes[f"/runs/{name}"] = ds
        nodes[f"/runs/{name}/theta"] = theta_to_dataset({k: np.asarray(v) for k, v in theta.items()})
    nodes["/"] = xr.Dataset(attrs={
        "schema_version": 1, "lopt_trace_version": "test", "task": task.name,
        "task_config": task.config(), "created": "2026-01-01T00:00:00Z", "command": "tests",
        "seeds": [int(s) for s in seeds], "versions": {}, "optimizers": names, "steps": steps,
        "every": every, "params_per_tensor": -1 if params_per_tensor is None else params_per_tensor,
    })
    return xr.DataTree.from_dict(nodes)


def make_store(path, task, optimizers: dict, **kwargs) -> str:
    """Write a tiny store to ``path`` and return the path."""
    tree = build_tree(task, optimizers, **kwargs)
    remove(path)
    limits = {"step": 50, "param": 4096, "run": 4}  # chunks like a recorder's, for big stores

    def chunks(var):
        return tuple(min(n, limits.get(d, n)) for d, n in zip(var.dims, var.shape))

    enc = {node.path: {name: {"compressors": COMPRESSORS, "chunks": chunks(var)}
                       for name, var in node.to_dataset(inherit=False).variables.items()
                       if var.ndim > 0 and var.dtype != object}
           for node in tree.subtree}
    with quiet_zarr_writes():
        tree.to_zarr(str(path), mode="w-", zarr_format=ZARR_FORMAT, consolidated=True, encoding=enc)
    return str(path)


def open_store(path) -> xr.DataTree:
    """Open a store Dask-backed (the real ``lopt_trace.open_store`` when it exists)."""
    try:
        from lopt_trace.store import open_store as real
    except ImportError:
        return open_tree(path, chunks={})
    return real(path)


# -- shared stores for the analysis tests (built once per test session) ---------------------------
import atexit  # noqa: E402
import functools  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

_TMP = None

#: hyperparameters of the ground-truth optimizers
GT = {"momentum": {"learning_rate": 0.05, "beta": 0.8},
      "sgd": {"learning_rate": 0.1},
      "clip": 0.3,
      "rmsprop": {"learning_rate": 0.01, "decay": 0.9, "eps": 1e-8},
      "gru": {"beta": 0.7, "learning_rate": 0.04}}


def _tmpdir():
    global _TMP
    if _TMP is None:
        _TMP = tempfile.mkdtemp(prefix="lopt-trace-analysis-tests-")
        atexit.register(shutil.rmtree, _TMP, True)
    return _TMP


def _f32(d):
    return {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}


def ground_truth_optimizers() -> dict:
    """Group name -> (optimizer, θ) with known answers."""
    from lopt_trace.optimizers import make_optimizer, momentum_gru

    gru, gru_theta = momentum_gru(GT["gru"]["beta"], GT["gru"]["learning_rate"], units=2)
    return {
        "momentum": (make_optimizer("momentum"), _f32(GT["momentum"])),
        "sgd": (make_optimizer("sgd"), _f32(GT["sgd"])),
        "sgd_clip": (make_optimizer("sgd", clip=GT["clip"]), _f32(GT["sgd"])),
        "rmsprop": (make_optimizer("rmsprop"), _f32(GT["rmsprop"])),
        "learned": (gru, gru_theta),
    }


@functools.lru_cache(maxsize=None)
def ground_truth_store() -> str:
    """A linear-regression store with momentum, SGD, clipped SGD, RMSProp and the hand-built
    momentum GRU (as ``learned``): 3 runs of 40 steps."""
    from lopt_trace.tasks import get_task

    path = f"{_tmpdir()}/ground_truth.zarr"
    return make_store(path, get_task("linear_regression", steps=40), ground_truth_optimizers(), runs=3)


@functools.lru_cache(maxsize=None)
def two_moons_store() -> str:
    """A small two-moons store (4 parameters kept per tensor, every 2nd step) with a random GRU
    as ``learned``."""
    from lopt_trace.optimizers import LearnedGRU
    from lopt_trace.tasks import get_task

    gru = LearnedGRU(units=4, output_scale=0.01)
    theta = gru.init_theta(jax.random.PRNGKey(3))
    theta = {**theta, "readout": jax.random.normal(jax.random.PRNGKey(4), (4,)),
             "b_h": 0.3 * jax.random.normal(jax.random.PRNGKey(5), (4,))}
    path = f"{_tmpdir()}/two_moons.zarr"
    return make_store(path, get_task("two_moons", steps=12, n_samples=128),
                      {"learned": (gru, theta)},
                      runs=2, every=2, params_per_tensor=4)
