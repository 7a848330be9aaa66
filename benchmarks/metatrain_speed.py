"""Seconds per meta-iteration on two_moons and mnist, against this machine's matmul rate.

The GRU's work per inner step is three (n, u) × (u, u) matmuls (the recurrent weights) for n
parameters and u units; forward plus backward (with rematerialisation) costs about 4× that. We
time a jitted (n, u) @ (u, u) matmul to get the machine's rate for exactly these shapes, and report
how much of a meta-iteration the GRU's matmuls would explain.

    python benchmarks/metatrain_speed.py [--units 16] [--steps 20] [--batch 2]
"""

import argparse
import time

import jax
import jax.numpy as jnp

from lopt_trace.metatrain import MetaTrainConfig, MetaTrainer
from lopt_trace.optimizers import LearnedGRU
from lopt_trace.tasks import get_task


def timeit(fn, *args, repeat=5):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeat):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / repeat


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--units", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tasks", nargs="+", default=["two_moons", "mnist"])
    a = p.parse_args()
    print(f"devices: {jax.devices()}")
    for name in a.tasks:
        task = get_task(name, steps=a.steps)
        n, u = task.num_params, a.units
        x = jnp.ones((n * a.batch, u), jnp.float32)
        w = jnp.ones((u, u), jnp.float32)
        mm = timeit(jax.jit(lambda x, w: x @ w), x, w)
        rate = 2 * n * a.batch * u * u / mm
        trainer = MetaTrainer(task, LearnedGRU(units=u), MetaTrainConfig(batch=a.batch, iterations=10))
        state = trainer.init()
        state, _ = trainer.step(state, 0)  # compile
        start = time.perf_counter()
        for it in range(1, 4):
            state, m = trainer.step(state, it)
            jax.block_until_ready(m["meta_loss"])
        per_it = (time.perf_counter() - start) / 3
        gru_flops = 4 * 3 * 2 * n * a.batch * u * u * a.steps  # 3 recurrent matmuls, fwd+remat+bwd
        print(f"{name}: n={n:,} units={u} steps={a.steps} batch={a.batch}: "
              f"{per_it:.2f} s/meta-iteration; matmul ({n * a.batch}x{u})@({u}x{u}) runs at "
              f"{rate / 1e9:.1f} GFLOP/s, so the GRU's recurrent matmuls alone need "
              f"{gru_flops / rate:.2f} s ({100 * gru_flops / rate / per_it:.0f}% of the iteration)")


if __name__ == "__main__":
    main()
