"""The recording engine: subsets, exact aggregates, every-E-th steps, baselines against optax,
resume, the lock, float16 and flat peak memory."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import xarray as xr

from lopt_trace import open_store
from lopt_trace.errors import UserError
from lopt_trace.recorder import Plan, RecordConfig, record, resolve_optimizers, subset_indices
from lopt_trace.store import hist_edges, lock_path
from lopt_trace.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
MOONS_STEPS = 6


def _rec(task, specs, out, **kw):
    plan = kw.pop("plan", None)
    callback = kw.pop("callback", None)
    resume = kw.pop("resume", False)
    entries = resolve_optimizers(task.name, specs)
    return record(task, entries, RecordConfig(**kw), out, progress=False, plan=plan,
                  callback=callback, resume=resume)


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    """two_moons with every parameter kept, and with 3 per tensor at every 4th step."""
    tmp = tmp_path_factory.mktemp("moons")
    task = get_task("two_moons", steps=MOONS_STEPS)
    full = str(tmp / "all.zarr")
    sub = str(tmp / "sub.zarr")
    _rec(task, ["rmsprop"], full, runs=2, params=None)
    _rec(task, ["rmsprop"], sub, runs=2, params=3, every=4)
    return task, open_store(full), open_store(sub)


def test_subset_coordinates_say_which_parameters_were_kept(moons):
    task, full, sub = moons
    ds = sub["runs/rmsprop"].to_dataset()
    offset = 0
    for t in task.tensors:
        kept = ds["param_tensor"].values == t.name
        expected = np.unique(np.round(np.linspace(0, t.size - 1, min(3, t.size))).astype(int))
        np.testing.assert_array_equal(ds["param_index"].values[kept], expected)
        np.testing.assert_array_equal(ds["param_flat_index"].values[kept], offset + expected)
        assert set(ds["param_layer"].values[kept]) == {t.layer}
        assert set(ds["param_kind"].values[kept]) == {t.kind}
        offset += t.size
    assert ds.sizes["param"] == sum(min(3, t.size) for t in task.tensors)
    # the kept values are exactly those parameters of the full recording, at the kept steps
    assert list(ds["step"].values) == [0, 4]
    ref = full["runs/rmsprop"].to_dataset().isel(param=ds["param_flat_index"].values).sel(step=[0, 4])
    for name in ("gradient", "update", "state"):
        np.testing.assert_array_equal(ds[name].values, ref[name].values)
    np.testing.assert_array_equal(ds["initial_state"].values, ref["initial_state"].values)
    # losses are kept at every step, whatever --every is
    np.testing.assert_array_equal(ds["loss"].values, full["runs/rmsprop/loss"].values)
    assert ds.sizes["loss_step"] == MOONS_STEPS + 1


def test_exact_per_tensor_aggregates_equal_direct_computation(moons):
    task, full, sub = moons
    for name in ("rmsprop",):
        ds = full[f"runs/{name}"].to_dataset().load()
        direct = ds["state"].groupby("param_tensor").mean("param")
        direct = direct.rename(param_tensor="tensor").sel(tensor=ds["tensor"].values)
        np.testing.assert_allclose(ds["state_mean"].values, direct.values, rtol=2e-5, atol=1e-9)
        gabs = abs(ds["gradient"]).groupby("param_tensor").mean("param")
        gabs = gabs.rename(param_tensor="tensor").sel(tensor=ds["tensor"].values)
        np.testing.assert_allclose(ds["gradient_abs_mean"].values, gabs.values, rtol=2e-5, atol=1e-9)
        # the histogram counts every |g| of every step (every step is kept here)
        edges = hist_edges()
        g = np.clip(np.abs(ds["gradient"].values), edges[0], edges[-1] * 0.999)
        for r in range(ds.sizes["run"]):
            for t, tname in enumerate(ds["tensor"].values):
                mine = ds["param_tensor"].values == tname
                counts = np.histogram(g[r][:, mine], edges)[0]
                np.testing.assert_array_equal(ds["gradient_hist"].values[r, t], counts)
        assert ds["gradient_hist"].values.sum() == ds.sizes["run"] * MOONS_STEPS * task.num_params
    # a subset store still has the exact means over all parameters, at its kept steps
    ds_sub = sub["runs/rmsprop"].to_dataset()
    ref = full["runs/rmsprop"].to_dataset().sel(step=[0, 4])
    np.testing.assert_array_equal(ds_sub["state_mean"].values, ref["state_mean"].values)
    np.testing.assert_array_equal(ds_sub["gradient_abs_mean"].values, ref["gradient_abs_mean"].values)
    np.testing.assert_array_equal(ds_sub["gradient_hist"].values, ref["gradient_hist"].values)


def test_momentum_and_adam_states_equal_optax(tmp_path):
    task = get_task("linear_regression", steps=25)
    tree_path = str(tmp_path / "lr.zarr")
    _rec(task, ["momentum", "adam"], tree_path, runs=2, params=None)
    tree = open_store(tree_path)
    for name in ("momentum", "adam"):
        ds = tree[f"runs/{name}"].to_dataset().load()
        th = {k: float(v) for k, v in tree[f"runs/{name}/theta"].to_dataset(inherit=False).items()}
        if name == "momentum":
            tx = optax.sgd(th["learning_rate"], momentum=th["beta"])
        else:
            tx = optax.adam(th["learning_rate"], b1=th["b1"], b2=th["b2"], eps=th["eps"])
        for r in range(ds.sizes["run"]):
            grads = ds["gradient"].values[r]
            state = tx.init(jnp.zeros(grads.shape[1]))
            for k in range(grads.shape[0]):
                upd, state = tx.update(jnp.asarray(grads[k]), state)
                rec = ds["state"].values[r, k]
                # float32 round-off only: relative to the scale of each array
                close = lambda a, b: np.testing.assert_allclose(  # noqa: E731
                    a, b, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(b))))
                if name == "momentum":
                    close(rec[:, 0], state[0].trace)
                else:
                    adam = state[0]
                    close(rec[:, 0], adam.mu)
                    close(rec[:, 1], adam.nu)
                    np.testing.assert_array_equal(rec[:, 2], np.full(rec.shape[0], int(adam.count)))
                close(ds["update"].values[r, k], upd)


def test_resume_after_interruption_gives_identical_data_and_lock_is_exclusive(tmp_path):
    task = get_task("linear_regression", steps=12)
    plan = Plan(run_batch=2, block_records=3)  # groups of runs (0, 1) and (2,): 4 blocks each
    kw = dict(runs=3, params=None, plan=plan)
    whole = str(tmp_path / "whole.zarr")
    _rec(task, ["sgd", "momentum"], whole, **kw)

    cut = str(tmp_path / "cut.zarr")
    refused = []

    def interrupt(info):
        if info["blocks"] == 2:  # a second recorder on the same store is refused while we write
            try:
                _rec(task, ["sgd", "momentum"], cut, resume=True, **kw)
            except UserError as exc:
                refused.append(str(exc))
        if info["blocks"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _rec(task, ["sgd", "momentum"], cut, callback=interrupt, **kw)
    assert refused and "being written by another recorder" in refused[0]
    assert not os.path.exists(lock_path(cut))  # released on the way out
    part = open_store(cut)
    np.testing.assert_array_equal(part["runs/sgd/run_complete"].values, [True, True, False])
    np.testing.assert_array_equal(part["runs/momentum/run_complete"].values, [False] * 3)
    assert np.isnan(part["runs/momentum/loss"].values).all()  # never written: the fill value

    result = _rec(task, ["sgd", "momentum"], cut, resume=True, **kw)
    assert result.complete and result.blocks == 4 + 8  # only unfinished runs were redone
    a, b = open_store(whole), open_store(cut)
    for name in ("sgd", "momentum"):
        xr.testing.assert_identical(a[f"runs/{name}"].to_dataset().load(), b[f"runs/{name}"].to_dataset().load())
    # resuming a finished store computes nothing
    assert _rec(task, ["sgd", "momentum"], cut, resume=True, **kw).blocks == 0


def test_float16_store(tmp_path):
    task = get_task("linear_regression", steps=8)
    out32, out16 = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    _rec(task, ["adam"], out32, runs=2, params=None)
    _rec(task, ["adam"], out16, runs=2, params=None, dtype="float16")
    a, b = open_store(out32)["runs/adam"], open_store(out16)["runs/adam"]
    for name in ("gradient", "update", "state", "initial_state"):
        assert b[name].dtype == np.float16
        np.testing.assert_allclose(b[name].values.astype(np.float32), a[name].values, rtol=2e-3, atol=1e-6)
    assert b["loss"].dtype == np.float32 and b["state_mean"].dtype == np.float32
    np.testing.assert_array_equal(a["loss"].values, b["loss"].values)
    # lossy per-parameter arrays are compressed for size (zstd), lossless ones for speed (LZ4)
    assert _cname(out16, "runs/adam/state") == "zstd" and _cname(out16, "runs/adam/loss") == "blosc lz4"
    assert _cname(out32, "runs/adam/state") == "blosc lz4"


def _cname(store: str, array: str) -> str:
    """The compressor named in ``array``'s zarr.json (what a reader without lopt-trace sees):
    ``blosc <cname>`` or ``zstd``; every array ends in a CRC32C."""
    meta = json.loads((Path(store) / array / "zarr.json").read_text())
    assert meta["codecs"][-1]["name"] == "crc32c", meta["codecs"]
    (comp,) = [c for c in meta["codecs"] if c["name"] in ("blosc", "zstd")]
    return f"blosc {comp['configuration']['cname']}" if comp["name"] == "blosc" else comp["name"]


def _bytes_under(store: str, group: str, names) -> int:
    return sum(f.stat().st_size for n in names for f in (Path(store) / group / n).rglob("*") if f.is_file())


KEEP_READER = r'''
import sys
import numpy as np, xarray as xr
tree = xr.open_datatree(sys.argv[1], engine="zarr")
assert not any(m.startswith("lopt_trace") for m in sys.modules), "lopt_trace was imported"
np.save(sys.argv[2], tree["runs/adam/state"].values)
'''


@pytest.mark.parametrize("dtype, bits", [("float32", 8), ("float16", 5)])
def test_keep_bits_rounds_the_per_parameter_arrays(tmp_path, dtype, bits):
    """--keep-bits N stores numcodecs' bit rounding of exactly the values a plain store has: the
    per-parameter arrays within 2**-N relative, losses and means untouched, a smaller store, the
    setting in the attributes (resume must match it), and plain xarray reads it back."""
    import subprocess
    import sys

    from numcodecs import BitRound

    from lopt_trace.record_plan import estimate, make_layout

    task = get_task("two_moons", steps=MOONS_STEPS)
    plain, kept = str(tmp_path / "plain.zarr"), str(tmp_path / "kept.zarr")
    kw = dict(runs=2, params=None, dtype=dtype)
    _rec(task, ["adam"], plain, **kw)
    _rec(task, ["adam"], kept, keep_bits=bits, **kw)
    a, b = open_store(plain), open_store(kept)
    assert b.attrs["keep_bits"] == bits and a.attrs["keep_bits"] is None
    assert b.attrs["record_settings"]["keep_bits"] == bits and "keep_bits" not in a.attrs["record_settings"]
    ga, gb = a["runs/adam"].to_dataset(), b["runs/adam"].to_dataset()
    for name in ("state", "gradient", "update"):
        x, y = ga[name].values, gb[name].values
        assert y.dtype == np.dtype(dtype) and gb[name].attrs["keep_bits"] == bits
        rounded = BitRound(keepbits=bits).encode(x).view(x.dtype)
        np.testing.assert_array_equal(y, rounded, err_msg=name)  # numpy's bit rounding, exactly
        # relative to normal numbers (a subnormal has fewer mantissa bits: float16's Adam v is)
        normal = np.isfinite(x) & (np.abs(x) >= np.finfo(x.dtype).tiny)
        rel = np.abs(y[normal].astype(np.float64) - x[normal]) / np.abs(x[normal])
        assert rel.max() <= 2.0**-bits, (name, rel.max())
        assert rel.max() > 0  # something was rounded
    for name in ("loss", "state_mean", "gradient_abs_mean", "gradient_hist", "initial_state"):
        np.testing.assert_array_equal(ga[name].values, gb[name].values, err_msg=name)
    arrays = ("state", "gradient", "update")
    assert _bytes_under(kept, "runs/adam", arrays) < 0.8 * _bytes_under(plain, "runs/adam", arrays)
    # rounded per-parameter arrays: zstd over bit-shuffled values (Blosc); the rest LZ4
    assert [_cname(kept, f"runs/adam/{n}") for n in arrays + ("loss",)] == ["blosc zstd"] * 3 + ["blosc lz4"]
    entries = resolve_optimizers(task.name, ["adam"])
    est = [estimate(make_layout(task, RecordConfig(keep_bits=k, **kw), entries), entries).store
           for k in (None, bits)]
    assert est[1] < est[0]
    # resume must keep the setting: another N, or none, is refused in one line
    for other in (bits + 1, None):
        with pytest.raises(UserError, match=r"other settings \(keep_bits differ\)"):
            _rec(task, ["adam"], kept, resume=True, keep_bits=other, **kw)
    assert _rec(task, ["adam"], kept, resume=True, keep_bits=bits, **kw).blocks == 0
    # plain xarray (zarr registers numcodecs.bitround) reads it without lopt_trace imported
    out = tmp_path / "state.npy"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", KEEP_READER, kept, str(out)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out), gb["state"].values)


@pytest.mark.parametrize("dtype, bits", [("float32", 0), ("float32", 24), ("float16", 11),
                                         ("float32", -1), ("float32", 2.5), ("float32", True)])
def test_keep_bits_out_of_range_refused(dtype, bits):
    top = 23 if dtype == "float32" else 10
    with pytest.raises(UserError, match=f"--keep-bits must be an integer from 1 to {top} for {dtype}"):
        RecordConfig(dtype=dtype, keep_bits=bits).validate()


def test_subset_indices_evenly_spaced():
    task = get_task("mnist")
    flat, tensor, within = subset_indices(task, 64)
    assert flat.size == 4 * 64 + 3 * 16 + 10
    dense = task.tensors[6]
    idx = within[tensor == 6]
    assert idx[0] == 0 and idx[-1] == dense.size - 1 and np.all(np.diff(idx) > 0)
    assert np.ptp(np.diff(idx)) <= 1  # evenly spaced
    flat_all, _, _ = subset_indices(task, None)
    np.testing.assert_array_equal(flat_all, np.arange(task.num_params))


@pytest.mark.slow
def test_peak_memory_flat_in_steps():
    """Recording 4x the steps must not grow peak memory with the data (block-bounded)."""
    spec = importlib.util.spec_from_file_location("record_memory", ROOT / "benchmarks" / "record_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.argparse.Namespace(task="two_moons", optimizer=["rmsprop"], runs=4, params="all",
                                    every=1, block_records=10)
    rows = [None, None]

    def go(i, steps):
        rows[i] = bench.measure(args, steps)

    threads = [threading.Thread(target=go, args=(i, s)) for i, s in enumerate((100, 400))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = get_task("two_moons").num_params
    growth_mb = 300 * 4 * n * (2 + 2) * 4 / 2**20  # the extra per-parameter data, uncompressed
    small, big = rows
    assert big["store_mb"] > 3 * small["store_mb"]  # the bigger run did write 4x the data
    assert big["peak_rss_mb"] - small["peak_rss_mb"] < 0.35 * growth_mb, rows


@pytest.mark.parametrize("task_name, params, units", [("two_moons", None, 32), ("mnist", None, 256),
                                                      ("mnist", None, 32), ("linear_regression", 4, 16)])
def test_a_chunk_along_step_is_one_block(task_name, params, units):
    """Every block writes whole chunks: a chunk along step never spans two blocks (a read, recompress
    and rewrite of the chunk per block otherwise), and it has no length 1. At mnist --params all
    with 256 units one record is 84 MB, so blocks (and chunks) are 2 records."""
    from lopt_trace.optimizers import LearnedGRU
    from lopt_trace.record_plan import make_layout
    from lopt_trace.recorder import OptimizerEntry

    task = get_task(task_name, steps=50)
    opt = LearnedGRU(units=units)
    entry = OptimizerEntry("learned", opt, {}, "test", "fresh GRU")
    layout = make_layout(task, RecordConfig(runs=1, steps=50, params=params), [entry])
    b = layout.plan.block_records
    assert b >= 2
    chunks = layout.chunks(units)
    for name in ("state", "gradient", "update", "state_mean", "gradient_abs_mean"):
        assert chunks[name][1] == b, (name, chunks[name], b)
    if task_name == "mnist" and units == 256:
        assert b == 2 and chunks["state"][2] * 2 * units * 4 <= 4 * 2**20
