"""The recorder's store template: every group, array (lazy, final shape and chunks), coordinate
and attribute of a new store, and the settings a resumed recording must match."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import dask.array as da
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace._version import __version__
from lopt_trace.provenance import utc_now, versions
from lopt_trace.store.manifest import MANIFEST
from lopt_trace.store.schema import (HIST_BINS, RUN_COORDS, RUN_VARIABLES, SCHEMA_VERSION, hist_edges,
                                     with_label_copies)
from lopt_trace.store.zarr_io import COMPRESSORS, bit_round, per_parameter_compressors
from lopt_trace.theta import theta_to_dataset

if TYPE_CHECKING:  # the recorder's types; the template only reads their fields
    from lopt_trace.optimizers.sources import Entry as OptimizerEntry
    from lopt_trace.record_plan import Layout


def to_json_types(obj):
    """Plain JSON types (zarr attributes are JSON)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else
                                 (o.tolist() if hasattr(o, "tolist") else str(o))))


def _var(name: str, data, **extra_attrs) -> xr.Variable:
    dims, long_name, units = (RUN_VARIABLES.get(name) or RUN_COORDS[name])
    return xr.Variable(dims, data, {"long_name": long_name, "units": units, **extra_attrs})


def _strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)


#: the per-parameter arrays that ``--keep-bits`` rounds (not losses, means, θ or coordinates)
ROUNDED = ("state", "gradient", "update")


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
    keep = layout.cfg.keep_bits
    rounded = {"keep_bits": keep} if keep is not None else {}  # says so on the arrays too
    data_vars = {name: _var(name, da.zeros(shape, dtype=dtype, chunks=chunks[name]),
                            **(rounded if name in ROUNDED else {}))
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
        "optimizer": to_json_types(opt.config()),
        "state_names": list(opt.state_names),
        "source": entry.source,
        "spec": entry.spec,
        **entry.attrs,
    }
    ds = with_label_copies(xr.Dataset(data_vars, coords=coords, attrs=to_json_types(attrs)))
    encoding = {}
    per_param = per_parameter_compressors(layout.cfg.dtype, keep)
    for name in ds.variables:
        encoding[name] = {"compressors": per_param if name in ROUNDED else COMPRESSORS}
        if keep is not None and name in ROUNDED:
            encoding[name]["filters"] = (bit_round(keep),)
        if name in chunks:
            encoding[name]["chunks"] = chunks[name]
    return ds, encoding


def settings_of(layout: Layout, entries: list[OptimizerEntry]) -> dict:
    """What a resumed recording must match."""
    cfg = layout.cfg
    settings = {
        "task": layout.task.config(), "runs": cfg.runs, "steps": layout.steps, "every": cfg.every,
        "params": cfg.params if cfg.params is not None else "all", "dtype": cfg.dtype, "seed": cfg.seed,
        "optimizers": [{"name": e.name, "config": e.optimizer.config(), "source": e.source}
                       for e in entries],
    }
    if cfg.keep_bits is not None:  # absent when not rounded: stores from before --keep-bits resume
        settings["keep_bits"] = cfg.keep_bits
    return to_json_types(settings)


def build_template(layout: Layout, entries: list[OptimizerEntry], command: str) -> tuple[xr.DataTree, dict]:
    """The whole store, lazily: the tree to write with ``compute=False`` and its encoding."""
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
        # lossy: mantissa bits kept of state, gradient and update (None: every bit)
        "keep_bits": cfg.keep_bits,
        "record_settings": settings_of(layout, entries),
        "manifest": MANIFEST,
        "execution": dataclasses.asdict(layout.plan),
    }
    nodes = {"/": xr.Dataset(attrs=to_json_types(root_attrs)), "/runs": xr.Dataset()}
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

