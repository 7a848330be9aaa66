"""The reference both recorder benchmarks compare against: the recorder's own jitted blocks
(``make_block_fn``) for the same optimizers, problems and runs, outputs fetched to the host as the
recorder does and then discarded; nothing is written."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lopt_trace import seeds as seedlib
from lopt_trace.recorder import _init_fn, _sample_fn, make_block_fn, make_layout


def run_unrecorded(task, cfg, entries) -> None:
    """Compute every run of ``entries`` under ``cfg`` exactly as ``record`` would, writing nothing."""
    layout = make_layout(task, cfg, entries)
    K, rb = layout.steps, layout.plan.run_batch
    sample = _sample_fn(task)
    for e in entries:
        theta = jax.tree.map(jnp.asarray, e.theta)
        block_fn, init = make_block_fn(layout, e.optimizer), _init_fn(task, e.optimizer)
        for r0, r1 in layout.run_groups():
            seeds = np.concatenate([layout.seeds[r0:r1], np.repeat(layout.seeds[r1 - 1], rb - (r1 - r0))])
            problems = sample(seedlib.problem_keys(seeds))
            state = init(theta, problems)
            for _ in range(layout.n_blocks):
                state, counts, outs, losses = block_fn(theta, problems.data, state, jnp.asarray(K, jnp.int32))
                jax.device_get((counts, outs, losses))  # to the host, as the recorder does; discarded
