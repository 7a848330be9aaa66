"""Run a recipe on a store and keep its result in ``/analysis/<recipe>``.

Writing and reading the result are the store's job (:mod:`lopt_trace.store.results`, re-exported
here); this module runs the recipe's computation on the opened store.
"""

from __future__ import annotations

import os

import xarray as xr

from lopt_trace.analysis.rebuild import open_for_analysis
from lopt_trace.errors import UserError
from lopt_trace.store.manifest import StoreDamaged, is_decode_error, undecodable_message
from lopt_trace.store.results import GROUP, jsonable, provenance, read_result, write_result


def run_recipe(store, recipe: str, version: str | int, compute, parameters: dict,
               write: bool = True) -> xr.Dataset:
    """Open ``store``, ``compute(tree, **parameters)``, write the result to ``/analysis/<recipe>``
    (when ``store`` is a path or URL and ``write``) and return it."""
    tree = open_for_analysis(store)  # refuses a store whose manifest shows lost or truncated files
    try:
        ds = compute(tree, **parameters)
    except Exception as exc:
        _raise_if_damaged(store, exc)  # a chunk that cannot be decoded: one line naming it
        raise
    if write and not isinstance(store, xr.DataTree):
        ds = write_result(store, recipe, ds, version=version, parameters=parameters)
    return ds


def _raise_if_damaged(store, exc: BaseException) -> None:
    if isinstance(store, xr.DataTree) or isinstance(exc, UserError):
        return
    if is_decode_error(exc):
        message = undecodable_message(os.fspath(store), exc)
        if message:
            raise StoreDamaged(message) from None


__all__ = ["GROUP", "jsonable", "provenance", "read_result", "run_recipe", "write_result"]
