"""Small schema-v1 stores for the dashboard and report tests (built once per test session by the
fixtures ``full_store`` and ``baselines_store`` of ``conftest.py``).

- ``build_full_store``: two moons (an MLP: weights and biases in four layers), a small GRU as
  ``learned`` (with a made-up three-checkpoint meta-training history) plus SGD and momentum, every
  recipe's ``/analysis/*`` group computed with cheap parameters.
- ``build_baselines_store``: the same recording without the learned optimizer, and no analysis.

The recording is made by the real recorder (:func:`lopt_trace.recorder.record`); the analyses are
the real recipes, loaded through :mod:`lopt_trace.recipes_loader`.
"""

from __future__ import annotations

import shutil
import warnings

import jax
import numpy as np
import xarray as xr

from lopt_trace.zarr_io import COMPRESSORS, ZARR_FORMAT, quiet_zarr_writes, remove

#: cheap parameters for each recipe (the tests check the dashboard, not the analyses)
CHEAP = {
    "performance": {},
    "momentum": {"n_starts": 16, "max_iter": 40, "n_error": 64},
    "clipping": {"n_states": 3, "num": 401, "curve_points": 81},
    "schedule": {},
    "adaptation": {"num": 11, "max_iter": 60},
    "layers": {},
    "emergence": {"n_starts": 8, "num": 5, "clip_num": 201},
    "distill": {"problems": 4, "bootstrap": 100},
}

def _task():
    from lopt_trace.tasks import get_task

    return get_task("two_moons", steps=16, n_samples=128)


def _learned():
    from lopt_trace.optimizers import LearnedGRU

    gru = LearnedGRU(units=6, output_scale=0.05)
    theta = gru.init_theta(jax.random.PRNGKey(3))
    theta = {**theta, "readout": -jax.random.uniform(jax.random.PRNGKey(4), (6,)) * theta["W_h"],
             "b_h": 0.3 * jax.random.normal(jax.random.PRNGKey(5), (6,))}
    return gru, theta


def run_recipes(path: str, names=None) -> dict:
    """Run the recipes (cheap parameters) into the store; returns {recipe: error text} for the
    ones that failed (the dashboard must cope with a missing group either way)."""
    from lopt_trace import recipes_loader

    failed = {}
    for name in names or recipes_loader.available():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                recipes_loader.load(name).run(path, **CHEAP.get(name, {}))
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed


def record_base(path) -> str:
    """Two moons, 3 runs of 16 steps (every 2nd kept, 6 parameters per tensor) with the learned
    GRU, SGD and momentum (tuned θ where bundled), recorded by the recorder into ``path``."""
    from lopt_trace.recorder import OptimizerEntry, RecordConfig, record, resolve_optimizer

    from lopt_trace.metatrain import history_dataset

    gru, theta = _learned()
    theta = {k: np.asarray(v, np.float32) for k, v in theta.items()}
    # a made-up meta-training history: the readout grows over three checkpoints, the last is θ
    checkpoints = [{**theta, "readout": theta["readout"] * f} for f in (0.3, 0.7, 1.0)]
    history = history_dataset({"meta_loss": list(np.linspace(1.0, 0.5, 10)), "meta_grad_norm": [1.0] * 10,
                               "learning_rate": [1e-3] * 10, "skipped": [False] * 10}, checkpoints, [0, 5, 10])
    entries = [OptimizerEntry("learned", gru, theta, "test", "a random GRU (tests/_dashboard_stores.py)",
                              meta_train=history)]
    entries += [resolve_optimizer(name, "two_moons") for name in ("sgd", "momentum")]
    record(_task(), entries, RecordConfig(runs=3, steps=16, params=6, every=2), str(path), progress=False)
    return str(path)


def _tree(recorded: str) -> xr.DataTree:
    """The recorded store, loaded (it is small), without /analysis."""
    from lopt_trace.store import open_store

    tree = open_store(recorded).load()
    nodes = {node.path: node.to_dataset(inherit=False).drop_encoding() for node in tree.subtree
             if not node.path.startswith("/analysis")}
    return xr.DataTree.from_dict(nodes)


def write(tree: xr.DataTree, path) -> str:
    """Write ``tree`` as a store (compressed, consolidated metadata), as the recorder does."""
    nodes = {node.path: node.to_dataset(inherit=False) for node in tree.subtree}
    remove(path)
    enc = {key: {name: {"compressors": COMPRESSORS} for name in ds.variables} for key, ds in nodes.items()}
    with quiet_zarr_writes():
        xr.DataTree.from_dict(nodes).to_zarr(str(path), mode="w-", zarr_format=ZARR_FORMAT,
                                             consolidated=True, encoding=enc)
    return str(path)


def without(tree: xr.DataTree, drop: list[str]) -> xr.DataTree:
    """The same store without the optimizer groups ``drop`` (as if they had not been recorded)."""
    nodes = {node.path: node.to_dataset(inherit=False) for node in tree.subtree
             if not any(node.path == f"/runs/{d}" or node.path.startswith(f"/runs/{d}/") for d in drop)}
    if "/meta_train" in nodes and nodes["/meta_train"].attrs.get("optimizer") in drop:
        del nodes["/meta_train"]  # the history of a group that was not recorded
    root = nodes["/"]
    root.attrs = {**root.attrs, "optimizers": [n for n in root.attrs["optimizers"] if n not in drop]}
    return xr.DataTree.from_dict(nodes)


def build_full_store(recorded: str, path) -> tuple[str, dict]:
    """learned + sgd + momentum, with every recipe's result (cheap parameters): a copy of
    ``recorded`` at ``path``; returns the path and {recipe: error} of the recipes that failed."""
    path = str(path)
    remove(path)
    shutil.copytree(recorded, path)
    return path, run_recipes(path)


def build_baselines_store(recorded: str, path) -> str:
    """sgd + momentum only (no learned optimizer), and no /analysis."""
    return write(without(_tree(recorded), ["learned"]), path)
