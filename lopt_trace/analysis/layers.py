"""Per-tensor behaviour: does the optimizer treat layers and biases differently?

Inputs are the store's exact per-tensor aggregates, computed over every parameter even when only a
subset is stored: ``state_mean (run, step, tensor, unit)`` and ``gradient_hist (run, tensor,
bin)`` with the tensor coords ``tensor_layer``, ``tensor_kind`` and ``tensor_size``.

- :func:`tensor_trajectories`: the mean state trajectory of each tensor (averaged over runs) and
  of each kind (weight, bias: tensors of a kind averaged with weights ``tensor_size``, so it is
  the mean over all of that kind's parameters), their projection on the principal components,
  and the effective learning rate at each mean state (Fig. 7a, b).
- :func:`gradient_histograms`: gradient-magnitude histograms per tensor, per (layer, kind), and
  their medians (Fig. 7c).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from lopt_trace.analysis._common import attrs, strings
from lopt_trace.analysis.adaptation import gradient_range
from lopt_trace.analysis.pca import project
from lopt_trace.analysis.update_functions import effective_learning_rate

KIND = "kind"
LAYER = "layer"


def _kind_means(per_tensor: xr.DataArray, kinds: np.ndarray, sizes: np.ndarray) -> xr.DataArray:
    kind_values = np.array(sorted(set(kinds)), dtype=object)
    weights = xr.DataArray(
        np.array([[float(s) if k == kv else 0.0 for k, s in zip(kinds, sizes)] for kv in kind_values]),
        dims=(KIND, "tensor"), coords={KIND: kind_values})
    weights = weights / weights.sum("tensor")
    return xr.dot(per_tensor.drop_vars([c for c in per_tensor.coords if "tensor" in per_tensor[c].dims]),
                  weights, dim="tensor")


def kind_means(per_tensor: xr.DataArray) -> xr.DataArray:
    """The mean over the tensors of each kind (weight, bias) of a DataArray with a ``tensor`` dim
    and the ``tensor_kind`` and ``tensor_size`` coords, tensors weighted by their size (the mean
    over all of that kind's parameters when the per-tensor values are per-tensor means)."""
    return _kind_means(per_tensor, strings(per_tensor["tensor_kind"].values),
                       np.asarray(per_tensor["tensor_size"].values, dtype=np.float64))


def tensor_trajectories(opt, theta, state_mean: xr.DataArray, pcs: xr.Dataset | None = None,
                        n_components: int = 3) -> xr.Dataset:
    """Mean state per (step, tensor) and per (step, kind), projections and effective rates."""
    per_tensor = state_mean.mean("run").astype(np.float64).compute() if "run" in state_mean.dims \
        else state_mean.astype(np.float64).compute()
    kinds = strings(per_tensor["tensor_kind"].values)
    sizes = np.asarray(per_tensor["tensor_size"].values, dtype=np.float64)
    per_kind = _kind_means(per_tensor, kinds, sizes)
    out = {
        "tensor_state": per_tensor.assign_attrs(attrs("mean state per tensor, over runs")),
        "kind_state": per_kind.assign_attrs(attrs("mean state per kind (weight, bias)")),
        "tensor_effective_learning_rate": effective_learning_rate(opt, theta, per_tensor),
        "kind_effective_learning_rate": effective_learning_rate(opt, theta, per_kind),
    }
    if pcs is not None:
        out["tensor_projection"] = project(per_tensor, pcs, n_components)
        out["kind_projection"] = project(per_kind, pcs, n_components)
    ds = xr.Dataset(out)
    for name in ("tensor_effective_learning_rate", "kind_effective_learning_rate"):
        ds[name].attrs = attrs("effective learning rate at the mean state")
    return ds


def gradient_histograms(gradient_hist: xr.DataArray, edges) -> xr.Dataset:
    """Histograms of |g| summed over runs: per tensor, per (layer, kind), with medians."""
    hist = gradient_hist.sum("run").astype(np.float64).compute() if "run" in gradient_hist.dims \
        else gradient_hist.astype(np.float64).compute()
    edges = np.asarray(edges, dtype=np.float64)
    layers = np.asarray(hist["tensor_layer"].values, dtype=np.int64)
    kinds = strings(hist["tensor_kind"].values)
    layer_values = np.unique(layers)
    kind_values = np.array(sorted(set(kinds)), dtype=object)
    sel = np.array([[[(l == lv) and (k == kv) for l, k in zip(layers, kinds)] for kv in kind_values]
                    for lv in layer_values], dtype=np.float64)  # (layer, kind, tensor)
    by_lk = np.einsum("lkt,tb->lkb", sel, hist.transpose("tensor", "bin").values)
    with np.errstate(invalid="ignore", divide="ignore"):
        density_t = hist / hist.sum("bin")
        density_lk = by_lk / by_lk.sum(-1, keepdims=True)
    med_t = np.array([gradient_range(hist.isel(tensor=i), edges, 0.5) for i in range(hist.sizes["tensor"])])
    med_lk = np.array([[gradient_range(xr.DataArray(by_lk[i, j], dims="bin"), edges, 0.5)
                        for j in range(len(kind_values))] for i in range(len(layer_values))])
    tcoords = {c: hist[c] for c in hist.coords if hist[c].dims == ("tensor",)}
    return xr.Dataset(
        {
            "tensor_hist": hist.drop_vars([c for c in hist.coords if c not in tcoords]).assign_attrs(
                attrs("|g| counts per tensor, all runs", "count")),
            "tensor_density": density_t.assign_attrs(attrs("|g| histogram per tensor, normalised")),
            "layer_kind_hist": ((LAYER, KIND, "bin"), by_lk, attrs("|g| counts per layer and kind", "count")),
            "layer_kind_density": ((LAYER, KIND, "bin"), density_lk,
                                   attrs("|g| histogram per layer and kind, normalised")),
            "tensor_median": (("tensor",), med_t, attrs("median |g| per tensor")),
            "layer_kind_median": ((LAYER, KIND), med_lk, attrs("median |g| per layer and kind")),
            "hist_edges": (("bin_edge",), edges, attrs("|g| bin edges")),
        },
        coords={**tcoords, LAYER: layer_values, KIND: kind_values},
    )


__all__ = ["gradient_histograms", "kind_means", "tensor_trajectories"]
