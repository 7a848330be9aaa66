"""Streaming PCA of optimizer states: equal to scikit-learn, lazy, bounded memory."""

import tracemalloc

import dask.array as da
import numpy as np
import xarray as xr
from sklearn.decomposition import PCA

from lopt_trace.analysis import moments, pca, project, total_variance


def _states(seed=0, shape=(3, 20, 30, 5), chunks=(1, 7, 11, 5)):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(shape[-1], shape[-1])) * np.array([3.0, 1.0, 0.5, 0.2, 0.05])[:, None]
    x = rng.normal(size=shape) @ mix + rng.normal(size=shape[-1]) * 4.0  # correlated, offset
    arr = xr.DataArray(da.from_array(x.astype(np.float32), chunks=chunks),
                       dims=("run", "step", "param", "unit"),
                       coords={"unit": [f"u{i}" for i in range(shape[-1])]})
    return arr, x.reshape(-1, shape[-1])


def test_pca_matches_sklearn_on_chunked_dask_data():
    states, flat = _states()
    assert states.chunks is not None and len(states.data.chunks[1]) > 1
    ours = pca(states)
    ref = PCA().fit(flat.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(ours["pca_mean"], ref.mean_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours["explained_variance"], ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(ours["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-8)
    # same sign convention as scikit-learn (largest-magnitude entry of each component positive)
    np.testing.assert_allclose(ours["components"], ref.components_, atol=1e-7)
    proj = project(states, ours)
    assert proj.dims == ("run", "step", "param", "component")
    np.testing.assert_allclose(proj.values.reshape(-1, 5), ref.transform(flat.astype(np.float32)),
                               rtol=1e-5, atol=1e-5)
    assert ours.attrs["n_samples"] == flat.shape[0]


def test_pca_n_components_and_nonfinite_samples_skipped():
    states, _flat = _states(1)
    bad = states.copy(data=states.data.copy())
    vals = bad.values
    vals[0, 3, 4, 2] = np.nan
    vals[2, 0, 0, 0] = np.inf
    bad = bad.copy(data=da.from_array(vals, chunks=(1, 7, 11, 5)))
    keep = np.isfinite(vals.reshape(-1, 5)).all(axis=1)
    ours = pca(bad, n_components=2)
    ref = PCA(n_components=2).fit(vals.reshape(-1, 5)[keep].astype(np.float64))
    assert ours.sizes["component"] == 2 and ours.attrs["n_samples"] == keep.sum()
    np.testing.assert_allclose(ours["explained_variance"], ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(ours["components"], ref.components_, atol=1e-7)


def test_moments_are_lazy():
    states, _ = _states()
    m = moments(states)
    assert all(isinstance(m[k].data, da.Array) for k in ("n", "s1", "s2"))


def test_total_variance_across_runs():
    states, _ = _states(2)
    tv = total_variance(states)
    x = states.values.astype(np.float64)
    expected = x.var(axis=0).sum(-1).mean(-1)  # over runs; sum units; mean params
    assert tv.dims == ("step",)
    np.testing.assert_allclose(tv.values, expected, rtol=1e-10)


def test_pca_streams_in_bounded_memory():
    """80 MB of float32 states in 1 MB chunks: the pass never holds more than a few chunks."""
    shape, chunks = (4, 250, 2500, 8), (1, 25, 1250, 8)
    x = da.random.default_rng(0).standard_normal(shape, chunks=chunks, dtype=np.float32)
    states = xr.DataArray(x, dims=("run", "step", "param", "unit"))
    nbytes = np.prod(shape) * 4
    tracemalloc.start()
    try:
        out = pca(states)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.attrs["n_samples"] == np.prod(shape[:-1])
    np.testing.assert_allclose(out["explained_variance"], 1.0, atol=0.01)
    assert peak < nbytes / 4, f"peak {peak / 1e6:.0f} MB for {nbytes / 1e6:.0f} MB of data"


def test_pca_runs_blas_on_one_thread_and_restores_it():
    """The moments' products run with one BLAS thread per Dask thread (no oversubscription), and
    the caller's BLAS threads are as they were afterwards."""
    threadpoolctl = __import__("pytest").importorskip("threadpoolctl")
    import importlib

    pca_mod = importlib.import_module("lopt_trace.analysis.pca")

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    seen = []
    original = pca_mod._block_moments

    def spy(*args):
        seen.append(blas_threads())
        return original(*args)

    pca_mod._block_moments = spy
    try:
        pca(_states()[0])
    finally:
        pca_mod._block_moments = original
    assert seen and all(all(n == 1 for n in s) for s in seen)
    assert blas_threads() == before
