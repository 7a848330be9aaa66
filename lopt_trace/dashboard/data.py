"""What the dashboard and the report read from a store: a lazily opened tree, its optimizer
groups, the ``/analysis/*`` results present, and a way to compute the missing ones.

Nothing here loads a per-parameter array whole; each panel reads only what it shows.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import xarray as xr

from lopt_trace import recipes_loader
from lopt_trace.analysis.rebuild import open_for_analysis, optimizer_names, rebuild, select_optimizer
from lopt_trace.errors import UserError
from lopt_trace.store import SCHEMA_VERSION, open_store
from lopt_trace.store.sizes import human_bytes as store_human_bytes
from lopt_trace.store.sizes import size_on_disk
from lopt_trace.store.zarr_io import is_local

#: the recipes the dashboard and report know about, and what each adds (from the registry)
RECIPE_ROLES = recipes_loader.ROLES


def _strings(values) -> list[str]:
    return [str(v) for v in np.asarray(values, dtype=object).ravel()]


class StoreView:
    """A store as the dashboard sees it: opened once, lazily (Dask-backed), re-opened after an
    analysis is written. ``store`` is a path or URL, or an already opened tree (then nothing can be
    computed into it)."""

    def __init__(self, store):
        if isinstance(store, xr.DataTree):
            self.path, self._tree = None, store
        else:
            self.path, self._tree = os.fspath(store), None
        self._lock = threading.Lock()
        #: small results panels computed themselves (PCA when /analysis/momentum is absent, ...)
        self.cache: dict = {}

    # -- the tree ---------------------------------------------------------------------------
    @property
    def tree(self) -> xr.DataTree:
        if self._tree is None:
            with self._lock:
                if self._tree is None:
                    self._tree = self._open()
        return self._tree

    def _open(self) -> xr.DataTree:
        """Open validated; a store that fails validation (a group its attributes promise is
        missing, say) still opens, and :attr:`problem` says what is wrong."""
        try:
            return open_for_analysis(self.path)
        except UserError as exc:
            tree = open_store(self.path, validate=False)  # not a store at all: raises again
            if tree.attrs.get("schema_version") != SCHEMA_VERSION:  # not one this version reads:
                raise exc from None                               # refused, as info and analyze do
            self.problem = str(exc)
            return tree

    #: why the store failed validation (it was opened anyway), or None
    problem: str | None = None

    def refresh(self) -> None:
        """Re-open the store (after a recipe wrote a result into it) and drop cached results."""
        if self.path is not None:
            with self._lock:
                self._tree = self._open()
        self.cache.clear()

    @property
    def attrs(self) -> dict:
        return dict(self.tree.attrs)

    @property
    def task(self) -> str:
        return str(self.attrs.get("task", "?"))

    @property
    def label(self) -> str:
        return self.path if self.path is not None else "(in-memory store)"

    # -- optimizer groups -------------------------------------------------------------------
    @property
    def optimizers(self) -> list[str]:
        try:
            return optimizer_names(self.tree)
        except UserError:
            return []

    def default_optimizer(self) -> str | None:
        """``learned`` if recorded, else the group the analyses were computed for, else the first."""
        names = self.optimizers
        if not names:
            return None
        if "learned" not in names:
            for recipe in recipes_loader.PER_OPTIMIZER:
                analysed = self.analysis_optimizer(recipe)
                if analysed in names:
                    return analysed
        return select_optimizer(self.tree)

    def group(self, name: str) -> xr.Dataset:
        """The lazily loaded Dataset of ``/runs/<name>`` (without θ)."""
        return self.tree[f"runs/{name}"].to_dataset(inherit=False)

    def has_variable(self, name: str, variable: str) -> bool:
        return name in self.optimizers and variable in self.tree[f"runs/{name}"].ds.variables

    def rebuild(self, name: str):
        """``(optimizer, θ)`` of a group, cached."""
        key = ("rebuild", name)
        if key not in self.cache:
            self.cache[key] = rebuild(self.tree, name)
        return self.cache[key]

    # -- analysis results -------------------------------------------------------------------
    @property
    def analyses(self) -> list[str]:
        tree = self.tree
        return list(tree["analysis"].children) if "analysis" in tree.children else []

    def analysis(self, recipe: str, optimizer: str | None = None) -> xr.Dataset | None:
        """``/analysis/<recipe>`` loaded (results are small), or None when it is not in the store,
        or when ``optimizer`` is given and the result is about another optimizer group."""
        if recipe not in self.analyses:
            return None
        key = ("analysis", recipe)
        if key not in self.cache:
            self.cache[key] = self.tree[f"analysis/{recipe}"].to_dataset(inherit=False).load()
        ds = self.cache[key]
        if optimizer is not None and "optimizer" in ds.attrs and str(ds.attrs["optimizer"]) != optimizer:
            return None
        return ds

    def analysis_optimizer(self, recipe: str) -> str | None:
        ds = self.analysis(recipe)
        return None if ds is None else ds.attrs.get("optimizer")

    @property
    def writable(self) -> bool:
        """Whether results can be computed into the store (a local path that we may write)."""
        if self.path is None:
            return False
        if not is_local(self.path):
            return True
        return os.access(Path(self.path.removeprefix("file://")), os.W_OK)

    def command(self, recipe: str, optimizer: str | None = None) -> str:
        """The command that computes ``recipe`` for this store (``lopt-trace distill`` for the
        recipes ``analyze all`` leaves out)."""
        opt = f" --optimizer {optimizer}" if optimizer and recipe != "performance" else ""
        if recipe in recipes_loader.ON_DEMAND:
            return f"lopt-trace {recipe} {self.path or 'STORE'}{opt}"
        return f"lopt-trace analyze {recipe} {self.path or 'STORE'}{opt}"

    def compute(self, recipe: str, optimizer: str | None = None, **params) -> xr.Dataset:
        """Run a recipe (through the recipes loader), write ``/analysis/<recipe>``, re-open."""
        if self.path is None:
            raise UserError("this store was opened from memory; run the recipe on a store path")
        module = recipes_loader.load(recipe)
        if optimizer is not None and recipe != "performance":
            params = {"optimizer": optimizer, **params}
        module.run(self.path, **params)
        self.refresh()
        return self.analysis(recipe)

    # -- sizes ------------------------------------------------------------------------------
    def size_bytes(self) -> int | None:
        """Bytes on disk of a local store (None for URLs and in-memory trees)."""
        if self.path is None or not is_local(self.path):
            return None
        return size_on_disk(self.path)

    def runs(self, name: str) -> list[int]:
        return [int(r) for r in self.group(name)["run"].values]

    def tensors(self, name: str) -> list[str]:
        return _strings(self.group(name)["tensor"].values)


def human_bytes(n: int | None) -> str:
    """:func:`lopt_trace.store.human_bytes`, and ``n/a`` for None."""
    return "n/a" if n is None else store_human_bytes(n)


__all__ = ["StoreView", "RECIPE_ROLES", "human_bytes"]
