"""Writing a recording into its store: creating it from the template, the background region
writer, and the check that an existing store can be resumed."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from lopt_trace.errors import UserError
from lopt_trace.store.schema import SCHEMA_VERSION
from lopt_trace.store.template import settings_of
from lopt_trace.store.zarr_io import ZARR_FORMAT, is_local, quiet_zarr_writes, remove
from lopt_trace.theta import theta_from_dataset


def create_store(out: str, template: xr.DataTree, encoding: dict, replace: bool = False) -> None:
    """Write the whole (lazy) ``template`` at ``out`` with consolidated metadata; nothing of the
    arrays is computed. ``replace`` removes what is at ``out`` first."""
    if replace:
        remove(out)
    if is_local(out):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    with quiet_zarr_writes():
        template.to_zarr(out, mode="w-", compute=False, consolidated=True,
                         zarr_format=ZARR_FORMAT, encoding=encoding)


def open_for_writing(out: str, mode: str = "r+") -> zarr.Group:
    """The store's root Zarr group (``mode="r"`` to read what was written)."""
    return zarr.open_group(str(out), mode=mode, zarr_format=ZARR_FORMAT)


class RegionWriter(threading.Thread):
    """Writes regions of the store from a bounded queue, in order, in a background thread."""

    def __init__(self, path: str, maxsize: int = 2):
        super().__init__(daemon=True, name="lopt-trace-writer")
        self.group = open_for_writing(path)
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self._arrays: dict = {}

    def _array(self, key):
        if key not in self._arrays:
            # every region the recorder writes holds data: skip zarr's per-chunk check that a chunk
            # equals the fill value (an allocation and a comparison per chunk, ~15 % of the writer)
            array = self.group[key]
            if hasattr(array, "with_config"):  # zarr >= 3.1
                array = array.with_config({"write_empty_chunks": True})
            self._arrays[key] = array
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


def check_resume(out: str, layout, entries) -> tuple[dict, dict]:
    """Open an existing store for --resume and check it matches ``layout`` and ``entries``; return
    its execution plan (the fields of ``recorder.Plan``) and each optimizer's ``run_complete``."""
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
    return dict(attrs["execution"]), done

