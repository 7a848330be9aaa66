"""Analysis results in a store: ``/analysis/<recipe>``, with provenance.

A recipe's Dataset is written into the store it analysed, as the group ``/analysis/<recipe>``,
with the attrs ``recipe``, ``recipe_version``, ``parameters`` (the keyword arguments it ran with)
and ``created`` (UTC, ISO 8601). Writing again replaces that group and nothing else; the root's
consolidated metadata is refreshed so the result opens with the rest of the tree.
"""

from __future__ import annotations

import os

import numpy as np
import xarray as xr
import zarr

from lopt_trace.errors import UserError
from lopt_trace.provenance import utc_now
from lopt_trace.store.lock import StoreLock
from lopt_trace.store.opening import check_integrity
from lopt_trace.store.schema import strings, with_label_copies
from lopt_trace.store.zarr_io import COMPRESSORS, ZARR_FORMAT, exists, quiet_zarr_writes

GROUP = "analysis"


def jsonable(value):
    """``value`` with NumPy scalars and arrays, tuples and paths turned into JSON types
    (non-finite floats stay floats: zarr writes them as NaN / Infinity and reads them back)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _storable(ds: xr.Dataset) -> xr.Dataset:
    """Loaded, with strings as object arrays (no zarr-v3 string warnings) and JSON-safe attrs."""
    ds = ds.load()
    out = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "UT" or str(var.dtype).startswith("StringDType"):
            var = var.copy(data=strings(var.values))
        var.attrs = jsonable(dict(var.attrs))
        out[name] = var
    ds = ds.copy()
    for name, var in out.items():
        if name in ds.coords:
            ds = ds.assign_coords({name: var})
        else:
            ds[name] = var
    for name in ds.variables:
        ds[name].attrs.setdefault("long_name", str(name).replace("_", " "))
        ds[name].attrs.setdefault("units", "1")
    ds.attrs = jsonable(dict(ds.attrs))
    return ds


def provenance(recipe: str, version: str | int, parameters: dict) -> dict:
    """The attrs every result carries."""
    return {"recipe": recipe, "recipe_version": str(version),
            "parameters": jsonable(parameters), "created": utc_now()}


def write_result(store, recipe: str, ds: xr.Dataset, *, version: str | int,
                 parameters: dict | None = None) -> xr.Dataset:
    """Write ``ds`` to ``/analysis/<recipe>`` of ``store`` (a path or URL), replacing it."""
    path = os.fspath(store)
    if not exists(path):
        raise UserError(f"no store at {path}")
    # the input must be what was recorded (every file at its size and checksum), or no result is
    # written: a lost chunk reads as NaN and would change the result without a word
    check_integrity(path, full=True)
    ds = with_label_copies(_storable(ds))
    ds.attrs.update(provenance(recipe, version, parameters or {}))
    encoding = {name: {"compressors": COMPRESSORS} for name in ds.variables}
    # the store's writer lock: a result is never written while a recorder writes
    with StoreLock(path), quiet_zarr_writes():
        ds.to_zarr(path, group=f"{GROUP}/{recipe}", mode="w", zarr_format=ZARR_FORMAT,
                   consolidated=False, encoding=encoding)
        zarr.consolidate_metadata(path)
    return ds


def read_result(store, recipe: str) -> xr.Dataset:
    """The result a recipe wrote, or a clear error if it has not been run on this store."""
    tree = store if isinstance(store, xr.DataTree) else xr.open_datatree(os.fspath(store), engine="zarr", chunks={})
    if GROUP not in tree.children or recipe not in tree[GROUP].children:
        raise UserError(f"no /analysis/{recipe} in the store; run `lopt-trace analyze {recipe} STORE` first")
    return tree[f"{GROUP}/{recipe}"].to_dataset(inherit=False)


__all__ = ["GROUP", "jsonable", "provenance", "read_result", "write_result"]
