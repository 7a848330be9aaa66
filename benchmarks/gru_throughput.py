"""The learned GRU optimizer's step rate against a plain matmul of the same shapes, in the same run.

For each task size n (its number of parameters) and each GRU width u, this times

- ``gru``: ``steps`` steps of the learned optimizer on all n parameters, a jitted ``lax.scan`` over
  steps of ``LearnedGRU.step`` (the recorder's and the analyses' path: h' = F(θ, h, g) and the
  readout) on given gradients; and ``gru fast_step``, the same with ``LearnedGRU.fast_step`` (the
  meta-training path, forward only);
- ``matmul``: one jitted (n × u) @ (u × u) matmul, the reference: its FLOP rate is 2·n·u² / t.

A GRU step does three such matmuls (h U_z, h U_r, (r ⊙ h) U_h), so its matmul FLOP rate is
6·n·u²·steps / t; the ratio printed is that rate as % of the plain matmul's (issue #13's target:
≥ 50%). The step rate itself is parameters × steps per second. Every call is timed ``--repeat``
times and the minimum wall time is kept; absolute times on a shared machine are noise, the ratio
is what is measured.

    nice -n 5 python benchmarks/gru_throughput.py [--tasks two_moons mnist] [--units 32 256]
        [--steps 20] [--repeat 5]
    python benchmarks/gru_throughput.py --variants --tasks mnist --units 32   # formulations tried
    python benchmarks/gru_throughput.py --quick        # a small check that it runs
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

import jax
import jax.numpy as jnp

from _timing import best_time  # benchmarks/ is the script's folder
from lopt_trace.optimizers import LearnedGRU
from lopt_trace.tasks import get_task


def gru_scan(step):
    """``steps`` steps of ``step(theta, h, g) -> (h', Δx)`` over given gradients ``(steps, n)``, as
    one jitted ``lax.scan``."""
    def unroll(theta, h, grads):
        def body(h, g):
            h, dx = step(theta, h, g)
            return h, jnp.sum(dx)  # keep the readout live without storing (steps, n)

        return jax.lax.scan(body, h, grads)

    return jax.jit(unroll)


def measure(n: int, units: int, steps: int, repeat: int) -> dict:
    opt = LearnedGRU(units=units)
    key = jax.random.PRNGKey(0)
    theta = dict(opt.init_theta(key))
    theta["readout"] = 0.1 * jax.random.normal(key, (units,))
    h = opt.init_state(theta, n)
    grads = 1e-2 * jax.random.normal(jax.random.PRNGKey(1), (steps, n), jnp.float32)
    a = jax.random.normal(jax.random.PRNGKey(2), (n, units), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(3), (units, units), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    t_mm = best_time(matmul, (a, b), repeat)
    out = {"matmul": t_mm}
    for name, step in (("gru", opt.step), ("gru fast_step", opt.fast_step)):
        out[name] = best_time(gru_scan(step), (theta, h, grads), repeat)
    return out


# -- other formulations of the same step (``--variants``): what was tried to speed up small u ------
def _reference_step(th, h, g):
    """``LearnedGRU._F`` and its readout written out (no input normalisation, no clip)."""
    x = g[:, None]
    z = jax.nn.sigmoid(x * th["W_z"] + h @ th["U_z"] + th["b_z"])
    r = jax.nn.sigmoid(x * th["W_r"] + h @ th["U_r"] + th["b_r"])
    h_tilde = jnp.tanh(x * th["W_h"] + (r * h) @ th["U_h"] + th["b_h"])
    h_next = (1.0 - z) * h + z * h_tilde
    return h_next, h_next @ th["readout"]


def _fused_gates_step(th, h, g):
    """z and r from one (n × u) @ (u × 2u) matmul instead of two (n × u) @ (u × u)."""
    u = h.shape[-1]
    x = g[:, None]
    w = jnp.concatenate([th["W_z"], th["W_r"]])
    big_u = jnp.concatenate([th["U_z"], th["U_r"]], axis=1)
    b = jnp.concatenate([th["b_z"], th["b_r"]])
    zr = jax.nn.sigmoid(x * w + h @ big_u + b)
    z, r = zr[:, :u], zr[:, u:]
    h_tilde = jnp.tanh(x * th["W_h"] + (r * h) @ th["U_h"] + th["b_h"])
    h_next = h + z * (h_tilde - h)
    return h_next, h_next @ th["readout"]


def _tanh_sigmoid_step(th, h, g):
    """sigmoid(v) as 0.5·tanh(v/2) + 0.5: one transcendental kind for all three gates."""
    x = g[:, None]
    sig = lambda v: 0.5 * jnp.tanh(0.5 * v) + 0.5  # noqa: E731
    z = sig(x * th["W_z"] + h @ th["U_z"] + th["b_z"])
    r = sig(x * th["W_r"] + h @ th["U_r"] + th["b_r"])
    h_tilde = jnp.tanh(x * th["W_h"] + (r * h) @ th["U_h"] + th["b_h"])
    h_next = h + z * (h_tilde - h)
    return h_next, h_next @ th["readout"]


def _row_tiles(tile: int):
    """The reference step over row tiles of ``tile`` parameters (``lax.map``), so that a tile's
    intermediate (tile × u) arrays stay in cache between the matmuls and the gates."""
    def step(th, h, g):
        n, u = h.shape
        pad = (-n) % tile
        hp = jnp.pad(h, ((0, pad), (0, 0))).reshape(-1, tile, u)
        gp = jnp.pad(g, (0, pad)).reshape(-1, tile)
        h_next, dx = jax.lax.map(lambda a: _reference_step(th, a[0], a[1]), (hp, gp))
        return h_next.reshape(-1, u)[:n], dx.reshape(-1)[:n]
    return step


VARIANTS = {"as LearnedGRU.step (reference)": _reference_step, "z and r gates in one matmul": _fused_gates_step,
            "sigmoid as tanh": _tanh_sigmoid_step, "row tiles of 4,096 (lax.map)": _row_tiles(4096),
            "row tiles of 16,384 (lax.map)": _row_tiles(16384)}


def variants(n: int, units: int, steps: int, repeat: int) -> None:
    """Time each of :data:`VARIANTS` against the plain matmul, in the same run."""
    keys = jax.random.split(jax.random.PRNGKey(0), 12)
    names = ("W_z", "W_r", "W_h", "U_z", "U_r", "U_h", "b_z", "b_r", "b_h", "readout")
    th = {k: 0.1 * jax.random.normal(kk, (units, units) if k.startswith("U") else (units,))
          for k, kk in zip(names, keys)}
    h = jnp.zeros((n, units), jnp.float32)
    grads = 1e-2 * jax.random.normal(keys[10], (steps, n), jnp.float32)
    a = jax.random.normal(keys[11], (n, units), jnp.float32)
    t_mm = best_time(jax.jit(jnp.matmul), (a, th["U_z"]), repeat)
    # memory traffic of one fused element-wise pass over an (n × u) array (read one, write one)
    t_copy = best_time(jax.jit(lambda v: 2.0 * v + 1.0), (a,), repeat)
    print(f"n = {n:,}, u = {units}; plain matmul {2 * n * units * units / t_mm / 1e9:.1f} GFLOP/s; "
          f"one element-wise pass over (n × u) float32 {2 * a.nbytes / t_copy / 1e9:.1f} GB/s")
    print("| formulation | ms per step | % of matmul |")
    print("| --- | ---: | ---: |")
    for label, step in VARIANTS.items():
        t = best_time(gru_scan(step), (th, h, grads), repeat)
        pct = 100 * (6 * n * units * units * steps / t) / (2 * n * units * units / t_mm)
        print(f"| {label} | {1e3 * t / steps:.2f} | {pct:.0f}% |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["two_moons", "mnist"],
                   help="tasks whose parameter counts set n (default two_moons mnist)")
    p.add_argument("--units", nargs="+", type=int, default=[32, 256], help="GRU widths (default 32 256)")
    p.add_argument("--steps", type=int, default=20, help="steps per scan (default 20)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per measurement; the minimum is kept")
    p.add_argument("--quick", action="store_true", help="a check that it runs: 3 steps, 2 repeats")
    p.add_argument("--variants", action="store_true",
                   help="instead, time other formulations of the step at each task size and width "
                        "(fused gates, sigmoid as tanh, row tiles) against the same matmul")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.repeat = 3, 2
    if a.variants:
        print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.node()}; jax {jax.__version__}; "
              f"{os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"{a.steps} steps per scan, min of {a.repeat} timed calls")
        for name in a.tasks:
            for u in a.units:
                variants(get_task(name).num_params, u, a.steps, a.repeat)
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.node()}; devices {jax.devices()}; "
          f"jax {jax.__version__}; {os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{a.steps} steps per scan; min of {a.repeat} timed calls; matmul = one (n × u) @ (u × u); "
          "% of matmul = (6·n·u²·steps / t_gru) / (2·n·u² / t_matmul)")
    print("| task | n | units | path | params × steps / s | matmul GFLOP/s | GRU matmul GFLOP/s | % of matmul | target ≥ 50% |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for name in a.tasks:
        n = get_task(name).num_params
        for u in a.units:
            t = measure(n, u, a.steps, a.repeat)
            mm_rate = 2 * n * u * u / t["matmul"]
            for path in ("gru", "gru fast_step"):
                rate = n * a.steps / t[path]
                gru_flops = 6 * n * u * u * a.steps / t[path]
                pct = 100 * gru_flops / mm_rate
                print(f"| {name} | {n:,} | {u} | {path} | {rate:.3g} | {mm_rate / 1e9:.2f} | "
                      f"{gru_flops / 1e9:.2f} | {pct:.0f}% | {'meets' if pct >= 50 else 'misses'} |",
                      flush=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
