"""The store's schema: version, attributes, dims, variables and coordinates, label copies, and
the check that a tree follows it (see ``docs/store.md``)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.errors import UserError

#: version of the layout below; bumped on any incompatible change
SCHEMA_VERSION = 1

#: root attributes every store carries
ROOT_ATTRS = ("schema_version", "lopt_trace_version", "task", "task_config", "created", "command",
              "seeds", "versions", "optimizers", "steps", "every", "params_per_tensor")

#: group attributes of every ``/runs/<optimizer>`` group
GROUP_ATTRS = ("optimizer", "state_names", "source")

#: dims of a ``/runs/<optimizer>`` group
RUN_DIMS = ("run", "step", "loss_step", "param", "unit", "tensor", "bin", "bin_edge")

#: data variables of a ``/runs/<optimizer>`` group: name -> (dims, long_name, units)
RUN_VARIABLES = {
    "loss": (("run", "loss_step"), "training loss f(x_k) on step k's minibatch", "loss"),
    "gradient": (("run", "step", "param"), "gradient g_k of the loss", "loss / parameter"),
    "update": (("run", "step", "param"), "parameter update dx_k = readout(theta, h_{k+1})", "parameter"),
    "state": (("run", "step", "param", "unit"),
              "optimizer state h_{k+1} = F(theta, h_k, g_k) after taking step k's gradient", "1"),
    "initial_state": (("param", "unit"), "initial optimizer state h_0", "1"),
    "state_mean": (("run", "step", "tensor", "unit"),
                   "mean of the optimizer state over all parameters of each tensor", "1"),
    "gradient_abs_mean": (("run", "step", "tensor"),
                          "mean |gradient| over all parameters of each tensor", "loss / parameter"),
    "gradient_hist": (("run", "tensor", "bin"),
                      "count of |gradient| over all parameters and all steps, per log-spaced bin", "1"),
    "run_complete": (("run",), "whether the run was recorded to the end", "1"),
}

#: coordinates of a ``/runs/<optimizer>`` group: name -> (dims, long_name, units)
RUN_COORDS = {
    "run": (("run",), "seed of the test problem", "1"),
    "step": (("step",), "inner step k of the kept record", "step"),
    "loss_step": (("loss_step",), "inner step k", "step"),
    "unit": (("unit",), "optimizer state component", "1"),
    "tensor": (("tensor",), "parameter tensor", "1"),
    "tensor_layer": (("tensor",), "layer of the tensor", "1"),
    "tensor_kind": (("tensor",), "weight or bias", "1"),
    "tensor_size": (("tensor",), "number of parameters in the tensor", "1"),
    "param_tensor": (("param",), "tensor the parameter belongs to", "1"),
    "param_layer": (("param",), "layer the parameter belongs to", "1"),
    "param_kind": (("param",), "weight or bias", "1"),
    "param_index": (("param",), "position of the parameter within its (flattened) tensor", "1"),
    "param_flat_index": (("param",), "position of the parameter in the flat parameter vector", "1"),
    "bin": (("bin",), "geometric centre of the |gradient| bin", "loss / parameter"),
    "bin_edges": (("bin_edge",), "edges of the log-spaced |gradient| bins", "loss / parameter"),
}

#: |gradient| histogram: 4 bins per decade from 1e-10 to 1e4; values outside go to the end bins
HIST_LOG10_MIN = -10.0
HIST_LOG10_MAX = 4.0
HIST_BINS = 56


#: group attribute holding a JSON copy of every string-valued array of the group (see
#: :func:`with_label_copies`), for readers without zarr-python's variable-length strings
LABELS_ATTR = "labels"


def with_label_copies(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with a JSON copy of its string-valued variables and coordinates in ``attrs["labels"]``.

    zarr-python stores string coordinates (``tensor``, ``unit``, ``param_tensor``, ...) with its
    variable-length string type, which other Zarr implementations (tensorstore, for one) cannot
    read. The copy is ``{name: {"dims": [...], "runs": [[value, count], ...]}}``: the values in C
    order, run-length encoded (``param_tensor`` repeats each tensor's name once per kept
    parameter), so ``[v for v, n in runs for _ in range(n)]`` reshaped to the dims' sizes gives
    the array back. Every numeric array reads without help.
    """
    labels = {}
    for name, var in ds.variables.items():
        if var.dtype.kind not in "OUST":
            continue
        flat = [str(v) for v in np.asarray(var.values).ravel()]
        runs: list[list] = []
        for v in flat:
            if runs and runs[-1][0] == v:
                runs[-1][1] += 1
            else:
                runs.append([v, 1])
        labels[str(name)] = {"dims": [str(d) for d in var.dims], "runs": runs}
    out = ds.copy()
    if labels:
        out.attrs = {**ds.attrs, LABELS_ATTR: labels}
    return out


def labels_from_attrs(attrs: dict, sizes: dict) -> dict[str, np.ndarray]:
    """The string arrays of a group from its ``labels`` attribute (inverse of
    :func:`with_label_copies`); ``sizes`` maps dim names to lengths."""
    out = {}
    for name, entry in (attrs.get(LABELS_ATTR) or {}).items():
        values = [v for v, n in entry["runs"] for _ in range(int(n))]
        out[name] = np.array(values, dtype=object).reshape([sizes[d] for d in entry["dims"]])
    return out


def hist_edges() -> np.ndarray:
    """The fixed log-spaced |gradient| bin edges, shape (HIST_BINS + 1,)."""
    return np.logspace(HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS + 1)


def strings(values) -> np.ndarray:
    """Any array of strings (NumPy StringDType, fixed width or object) as an object array of str."""
    return np.array([str(v) for v in np.asarray(values, dtype=object).ravel()],
                    dtype=object).reshape(np.shape(values))


def validate_store(tree: xr.DataTree, path="store") -> None:
    """Raise :class:`UserError` unless ``tree`` follows store schema v1."""
    attrs = tree.attrs
    if "schema_version" not in attrs:
        raise UserError(f"{path} is not a lopt-trace store: it has no schema_version attribute "
                        "(record one with `lopt-trace record`)")
    if attrs["schema_version"] != SCHEMA_VERSION:
        raise UserError(f"{path} has store schema version {attrs['schema_version']!r}; this lopt-trace "
                        f"reads version {SCHEMA_VERSION}; record it again with this version")
    missing = [a for a in ROOT_ATTRS if a not in attrs]
    if missing:
        raise UserError(f"{path} is missing root attributes {', '.join(missing)}; record it again")
    if "runs" not in tree.children:
        raise UserError(f"{path} has no /runs group; record it again")
    for name in attrs["optimizers"]:
        if name not in tree["runs"].children:
            raise UserError(f"{path} is missing the group /runs/{name}; record it again")
        node = tree["runs"][name]
        lacking = [v for v in RUN_VARIABLES if v not in node.variables]
        lacking += [a for a in GROUP_ATTRS if a not in node.attrs]
        if "theta" not in node.children:
            lacking.append("theta")
        if lacking:
            raise UserError(f"{path}: group /runs/{name} lacks {', '.join(lacking)}; record it again")

