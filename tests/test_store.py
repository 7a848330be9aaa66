"""The store schema: round trip, plain-xarray opening, validation errors, the writer's lock,
fsspec (memory://) stores."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from lopt_trace import open_store
from lopt_trace.errors import UserError
from lopt_trace.optimizers import make_optimizer
from lopt_trace.recorder import RecordConfig, record, resolve_optimizers
from lopt_trace.store import (HIST_BINS, ROOT_ATTRS, RUN_COORDS, RUN_VARIABLES, SCHEMA_VERSION,
                              StoreLock, hist_edges, lock_path)
from lopt_trace.tasks import get_task
from lopt_trace.theta import theta_from_dataset
from lopt_trace.zarr_io import COMPRESSORS, ZARR_FORMAT, quiet_zarr_writes

STEPS = 6


def _record(out, **cfg):
    task = get_task("linear_regression", steps=STEPS)
    entries = resolve_optimizers(task.name, ["sgd", "adam"])
    cfg = RecordConfig(**{"runs": 2, "params": None, **cfg})
    return record(task, entries, cfg, out, progress=False), entries


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("store") / "lr.zarr")
    result, entries = _record(path)
    return path, result, entries


def test_schema_round_trip(store):
    path, result, entries = store
    assert result.complete
    tree = open_store(path)
    assert tree.attrs["schema_version"] == SCHEMA_VERSION
    for key in ROOT_ATTRS:
        assert key in tree.attrs, key
    assert tree.attrs["optimizers"] == ["sgd", "adam"]
    assert tree.attrs["task_config"] == get_task("linear_regression", steps=STEPS).config()
    assert tree.attrs["seeds"] == [1_000_000_000, 1_000_000_001]
    for e in entries:
        node = tree["runs"][e.name]
        ds = node.to_dataset()
        for name, (dims, _, _) in RUN_VARIABLES.items():
            assert ds[name].dims == dims, name
        for name, (dims, _, _) in RUN_COORDS.items():
            assert ds[name].dims == dims, name
        # every variable and coordinate is labelled
        for name, var in ds.variables.items():
            assert var.attrs.get("long_name") and var.attrs.get("units"), name
        assert ds.sizes["loss_step"] == STEPS + 1 and ds.sizes["step"] == STEPS
        assert ds.sizes["bin"] == HIST_BINS
        np.testing.assert_array_equal(ds["bin_edges"].values, hist_edges())
        assert list(ds["unit"].values) == list(e.optimizer.state_names)
        assert list(ds["run"].values) == tree.attrs["seeds"]
        # the optimizer and θ come back from the store alone
        rebuilt = make_optimizer(node.attrs["optimizer"])
        assert rebuilt.config() == e.optimizer.config()
        theta = theta_from_dataset(node["theta"].to_dataset(inherit=False))
        assert theta.keys() == e.theta.keys()
        for k in theta:
            np.testing.assert_array_equal(theta[k], e.theta[k])
        assert node.attrs["state_names"] == list(e.optimizer.state_names)
        assert node.attrs["source"] in ("tuned", "default")
        assert ds["run_complete"].values.all()
        assert np.isfinite(ds["loss"].values).all()
        # the update is the readout of the recorded state
        h = ds["state"].values
        np.testing.assert_allclose(
            ds["update"].values, np.asarray(rebuilt.readout({k: v for k, v in theta.items()}, h)),
            rtol=1e-6, atol=1e-7)


def test_plain_xarray_opens_dask_backed_without_warnings(store):
    path = store[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = xr.open_datatree(path, engine="zarr", chunks={})
        tree2 = open_store(path)
        tree2["runs/adam"].to_dataset().compute()  # reading the data (strings included) is quiet too
    for t in (tree, tree2):
        for node in t.subtree:
            for name, var in node.to_dataset(inherit=False).variables.items():
                if name in node.to_dataset(inherit=False).indexes or var.ndim == 0:
                    continue  # index coordinates and scalars (θ of a baseline) load eagerly by design
                assert isinstance(var.data, da.Array), (node.path, name)


def test_chunks_fixed_and_no_length_one(store):
    import zarr

    group = zarr.open_group(store[0], mode="r", zarr_format=ZARR_FORMAT)
    for name in RUN_VARIABLES:
        arr = group[f"runs/adam/{name}"]
        for size, chunk in zip(arr.shape, arr.chunks):
            assert chunk >= 2 or size == 1, (name, arr.shape, arr.chunks)
        codec, crc = arr.compressors  # Blosc LZ4 over bit-shuffled values (typesize from the dtype), CRC32C
        assert type(crc).__name__ == "Crc32cCodec", (name, crc)
        assert (type(codec).__name__, str(codec.cname.value), str(codec.shuffle.value)) == (
            "BloscCodec", "lz4", "bitshuffle"), (name, codec)
        if arr.dtype.kind == "f":
            assert codec.typesize == arr.dtype.itemsize, (name, codec)


def _write(path, tree):
    enc = {n.path: {v: {"compressors": COMPRESSORS} for v in n.to_dataset(inherit=False).variables}
           for n in tree.subtree}
    with quiet_zarr_writes():
        tree.to_zarr(path, mode="w-", zarr_format=ZARR_FORMAT, consolidated=True, encoding=enc)


def test_open_store_rejects_wrong_or_missing_schema(store, tmp_path):
    tree = xr.open_datatree(store[0], engine="zarr").load()
    for n in tree.subtree:  # drop the on-disk encodings before writing elsewhere
        for v in n.to_dataset(inherit=False).variables:
            n[v].encoding = {}
    missing = tree.copy()
    missing.attrs = {k: v for k, v in tree.attrs.items() if k != "schema_version"}
    _write(str(tmp_path / "missing.zarr"), missing)
    with pytest.raises(UserError, match="no schema_version"):
        open_store(tmp_path / "missing.zarr")

    wrong = tree.copy()
    wrong.attrs = {**tree.attrs, "schema_version": 99}
    _write(str(tmp_path / "wrong.zarr"), wrong)
    with pytest.raises(UserError, match="schema version 99"):
        open_store(tmp_path / "wrong.zarr")

    ghost = tree.copy()
    ghost.attrs = {**tree.attrs, "optimizers": ["sgd", "adam", "ghost"]}
    _write(str(tmp_path / "ghost.zarr"), ghost)
    with pytest.raises(UserError, match="missing the group /runs/ghost"):
        open_store(tmp_path / "ghost.zarr")
    assert open_store(tmp_path / "ghost.zarr", validate=False).attrs["optimizers"][-1] == "ghost"

    with pytest.raises(UserError, match="no store at"):
        open_store(tmp_path / "nothing.zarr")


def test_lock_refuses_live_holder_and_takes_over_stale(tmp_path):
    path = str(tmp_path / "s.zarr")
    with StoreLock(path) as first:
        assert os.path.exists(lock_path(path))
        with pytest.raises(UserError, match="being written by another recorder"):
            StoreLock(path).acquire()
        assert first.holder()["pid"] == os.getpid()
    assert not os.path.exists(lock_path(path))

    # a lock left by a process that has exited is stale and taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = StoreLock(path)
    with open(lock.lock, "w") as f:
        f.write(f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "started": "earlier"}}')
    with lock:
        assert lock.took_over["pid"] == dead.pid
    # a lock held from another host cannot be checked, so it is refused
    with open(lock.lock, "w") as f:
        f.write('{"pid": 1, "host": "some-other-host", "started": "earlier"}')
    with pytest.raises(UserError, match="some-other-host"):
        StoreLock(path).acquire()


def test_memory_store_equals_local_store(store):
    url = "memory://lopt-trace-tests/lr.zarr"
    result, _ = _record(url)
    assert result.size > 0 and result.complete
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mem = open_store(url)
    local = open_store(store[0])
    for name in ("sgd", "adam"):
        xr.testing.assert_identical(mem["runs"][name].to_dataset().load(),
                                    local["runs"][name].to_dataset().load())
    # the lock of a memory:// store lives in the same filesystem and is gone afterwards
    import fsspec

    fs, root = fsspec.core.url_to_fs(lock_path(url))
    assert not fs.exists(root)
    fs.rm("/lopt-trace-tests", recursive=True)


def test_string_labels_have_a_json_copy_readable_without_zarr_python(store, tmp_path):
    """Every string array of a store (coordinates such as ``tensor``, ``unit``, ``param_tensor``,
    and those of analysis results) is also in its group's ``zarr.json`` as plain JSON, so a reader
    without zarr-python's string type (tensorstore, say) has the labels too."""
    import json
    from pathlib import Path

    from lopt_trace import recipes_loader
    from lopt_trace.analysis import write_result
    from lopt_trace.store import LABELS_ATTR, labels_from_attrs

    import shutil

    store = str(shutil.copytree(store[0], tmp_path / "copy.zarr"))  # the shared store stays as it is
    ds = recipes_loader.load("performance").compute(open_store(store))
    write_result(store, "performance", ds, version="1")
    tree = open_store(store)
    checked = 0
    for node in tree.subtree:
        group = node.to_dataset(inherit=False)
        strings = [n for n, v in group.variables.items() if v.dtype.kind in "OUST"]
        if not strings:
            continue
        meta = json.loads((Path(store) / node.path.lstrip("/") / "zarr.json").read_text())  # plain JSON
        copies = labels_from_attrs(meta["attributes"], dict(group.sizes))
        assert sorted(copies) == sorted(strings), node.path
        for name in strings:
            assert copies[name].tolist() == [[str(x) for x in row] if isinstance(row, list) else str(row) for row in group[name].values.tolist()], name
            checked += 1
        assert LABELS_ATTR in group.attrs
    assert checked >= 6  # tensor, unit, param_tensor, ... and the result's optimizer
