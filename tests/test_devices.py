"""Several JAX devices: the tuning search's candidate batch, meta-training's problems and the
recorder's runs are split across them (jax.sharding, lopt_trace/sharding.py), and the results
equal a single device's.

Each side runs in a fresh process, because the number of CPU devices is fixed when JAX starts:
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` makes two host devices of one CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, sys
import jax, numpy as np
from lopt_trace.optimizers import make_optimizer
from lopt_trace.tasks import get_task
from lopt_trace.tune import (SEARCH_SPACES, ShardedEvaluator, evaluate, make_evaluator,
                             sample_candidates, sample_problems, tuning_seeds)

out = sys.argv[1]
task = get_task("linear_regression", steps=20)
results = {"devices": jax.device_count()}
for name in ("adam", "learned"):
    if name == "learned":
        from lopt_trace.optimizers import LearnedGRU
        opt = LearnedGRU(units=8)
        base = opt.init_theta(jax.random.PRNGKey(0))
        rng = np.random.default_rng(0)
        # 7 random GRUs near the initial one (its readout is zero: the noise makes them move)
        thetas = {k: (np.asarray(v)[None] + 0.05 * rng.standard_normal((7, *np.shape(v)))).astype(np.float32)
                  for k, v in base.items()}
    else:
        opt = make_optimizer(name)
        cand = sample_candidates(SEARCH_SPACES[name], 7, seed=3)
        thetas = {k: cand.get(k, np.full(7, v, np.float32)) for k, v in opt.init_theta().items()}
    problems = sample_problems(task, tuning_seeds(3))
    fn = make_evaluator(task, opt, 20)
    results[name + "_sharded"] = isinstance(fn, ShardedEvaluator)
    # 7 candidates in batches of 3: the last batch is padded, and on 2 devices every batch is too
    scores, timing = evaluate(task, opt, thetas, problems, 20, batch=3, progress=False, evaluator=fn)
    results[name] = scores.tolist()
    one = {k: v[:1] for k, v in thetas.items()}  # a single candidate (the validation's call)
    results[name + "_one"] = np.asarray(fn(one, problems)).tolist()
    pair = fn({k: v[:2] for k, v in thetas.items()}, problems)
    results[name + "_placed_on"] = len(pair.sharding.device_set)  # one candidate per device
json.dump(results, open(out, "w"))
'''


def _run(devices: int, tmp_path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "LOPT_TRACE_COMPILE_CACHE": "off",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    out = tmp_path / f"scores-{devices}.json"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow  # two fresh processes, each compiling two evaluators
def test_tuning_scores_on_two_devices_equal_one_device(tmp_path):
    one, two = _run(1, tmp_path), _run(2, tmp_path)
    assert one["devices"] == 1 and two["devices"] == 2
    assert not one["adam_sharded"] and two["adam_sharded"] and two["learned_sharded"]
    assert one["adam_placed_on"] == 1 and two["adam_placed_on"] == two["learned_placed_on"] == 2
    for name in ("adam", "learned", "adam_one", "learned_one"):
        a, b = np.asarray(one[name]), np.asarray(two[name])
        assert a.shape == b.shape == ((7, 3) if not name.endswith("_one") else (1, 3))
        np.testing.assert_array_equal(a, b, err_msg=name)  # bit for bit
        assert np.all(np.isfinite(a)) and len(np.unique(a)) > 1, name


METATRAIN = r'''
import json, sys
import jax, numpy as np
from lopt_trace.metatrain import MetaTrainConfig, MetaTrainer
from lopt_trace.optimizers import LearnedGRU
from lopt_trace.tasks import get_task

out = sys.argv[1]
task = get_task("linear_regression", steps=10)
results = {"devices": jax.device_count()}
for estimator in ("bptt", "pes"):
    cfg = MetaTrainConfig(iterations=3, batch=4, steps=10, truncation=5, estimator=estimator)
    trainer = MetaTrainer(task, LearnedGRU(units=8), cfg)
    state = trainer.init()
    losses = []
    for it in range(3):  # iteration 2 starts a fresh meta-batch
        state, metrics = trainer.step(state, it)
        losses.append(float(metrics["meta_loss"]))
    results[estimator] = {"shards": trainer.shards, "losses": losses,
                          "theta": {k: np.asarray(v).tolist() for k, v in state.theta.items()},
                          "population_on": len(state.population.inner.x.sharding.device_set)}
json.dump(results, open(out, "w"))
'''


def _run_script(script: str, devices: int, tmp_path, name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "LOPT_TRACE_COMPILE_CACHE": "off",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    out = tmp_path / f"{name}-{devices}.json"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow  # two fresh processes, each compiling backpropagation's and PES's steps
def test_metatraining_on_two_devices_equals_one_device(tmp_path):
    one = _run_script(METATRAIN, 1, tmp_path, "metatrain")
    two = _run_script(METATRAIN, 2, tmp_path, "metatrain")
    assert one["devices"] == 1 and two["devices"] == 2
    for estimator in ("bptt", "pes"):
        a, b = one[estimator], two[estimator]
        assert a["shards"] == 1 and b["shards"] == 2
        assert a["population_on"] == 1 and b["population_on"] == 2  # 2 problems per device
        # the batch mean and the meta-gradient's sum over problems are reduced across devices,
        # so the results agree to float32 round-off rather than bit for bit
        np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5, err_msg=estimator)
        for k in a["theta"]:
            np.testing.assert_allclose(a["theta"][k], b["theta"][k], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{estimator} {k}")



RECORD = r'''
import sys
import jax, numpy as np, xarray as xr
from lopt_trace.recorder import Plan, RecordConfig, record, resolve_optimizers
from lopt_trace.tasks import get_task

out, npz = sys.argv[1], sys.argv[2]
task = get_task("two_moons", steps=6)
entries = resolve_optimizers(task.name, ["adam", "learned"])
# 3 runs; on 2 devices a vmap of 4 (2 per device, the last run padded). "pairs": vmaps of 2 runs,
# the width each of 2 devices computes
plan = Plan(run_batch=2, block_records=6) if sys.argv[3] == "pairs" else None
result = record(task, entries, RecordConfig(runs=3, params=5), out, progress=False, plan=plan)
tree = xr.open_datatree(out, engine="zarr", chunks=None)
arrays = {"devices": np.asarray(jax.device_count()), "shards": np.asarray(result.shards),
          "run_batch": np.asarray(tree.attrs["execution"]["run_batch"])}
for e in entries:
    for name in ("loss", "state", "gradient", "update", "state_mean", "gradient_abs_mean",
                 "gradient_hist", "run_complete"):
        arrays[f"{e.name}/{name}"] = tree[f"runs/{e.name}/{name}"].values
np.savez(npz, **arrays)
'''


def _record(devices: int, plan: str, tmp_path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "LOPT_TRACE_COMPILE_CACHE": "off",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    npz = tmp_path / f"record-{devices}-{plan}.npz"
    proc = subprocess.run([sys.executable, "-c", RECORD, str(tmp_path / f"r{devices}-{plan}.zarr"), str(npz), plan],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(npz))


@pytest.mark.slow  # three fresh processes, each compiling two optimizers' recording blocks
def test_recording_on_two_devices_equals_one_device(tmp_path):
    two = _record(2, "default", tmp_path)
    one = _record(1, "default", tmp_path)
    pairs = _record(1, "pairs", tmp_path)
    assert int(two["devices"]) == 2 and int(two["shards"]) == 2 and int(two["run_batch"]) == 4
    assert int(one["devices"]) == int(one["shards"]) == 1 and int(one["run_batch"]) == 3
    assert int(pairs["shards"]) == 1 and int(pairs["run_batch"]) == 2
    names = [k for k in one if "/" in k]
    assert len(names) == 16
    for k in names:
        a, b, c = one[k], two[k], pairs[k]
        assert a.shape == b.shape == c.shape, k
        assert a.dtype.kind != "f" or np.isfinite(a).all(), k
        # each device computes a vmap of 2 runs: bit for bit what one device computes in pairs
        np.testing.assert_array_equal(b, c, err_msg=k)
        # against one device's vmap of 3, XLA's code for another batch width rounds differently:
        # float32 round-off, grown over the 6 steps
        if a.dtype.kind == "f":
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(a))), err_msg=k)
        else:
            np.testing.assert_array_equal(b, a, err_msg=k)


def test_record_plan_gives_each_device_up_to_four_runs():
    from lopt_trace.record_plan import RecordConfig, make_plan
    from lopt_trace.tasks import get_task

    task = get_task("linear_regression")

    def rb(runs, shards):
        return make_plan(task, RecordConfig(runs=runs), 10, 8, 2, shards).run_batch
    assert [rb(r, 1) for r in (1, 3, 4, 9)] == [1, 3, 4, 4]  # one device: as before sharding
    assert [rb(r, 2) for r in (1, 3, 4, 9)] == [2, 4, 4, 8]  # a multiple of 2, at most 4 each
    assert [rb(r, 8) for r in (3, 16, 64)] == [8, 16, 32]
