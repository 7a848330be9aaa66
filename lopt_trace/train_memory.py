"""How much memory meta-training needs, estimated before anything is allocated.

``lopt-trace train --units 100000`` would otherwise allocate a 120 GB θ and die with
``RESOURCE_EXHAUSTED`` after the task's data has loaded. :func:`estimate` counts float32 words
from shapes alone (``jax.eval_shape``, nothing is allocated); :func:`check_fits` refuses, with
the estimate in the message, what the available memory cannot hold.

The count, per meta-iteration (4 bytes a word):

- θ-sized arrays: θ, its meta-gradient and the meta-optimizer's two moments, plus, for PES, one
  perturbation per antithetic pair and problem;
- the inner problems in flight: ``batch`` problems (PES: 2 × pairs copies each), each with the
  task's parameters, its gradient and the optimizer state per parameter;
- backpropagation also keeps about four state-sized residuals (the GRU's gates and candidate) per
  step of each truncation.

It is a lower bound of the right order (XLA's temporaries come on top), so a refusal is certain
to be right; what passes may still be tight.
"""

from __future__ import annotations

import math

import jax
import psutil

from lopt_trace.errors import UserError
from lopt_trace.store.sizes import human_bytes

#: state-sized residuals backpropagation keeps per inner step (z, r, h̃ and h of the GRU)
RESIDUALS_PER_STEP = 4


def theta_size(opt) -> int:
    """Entries of ``opt.init_theta()``, from shapes only."""
    shapes = jax.eval_shape(opt.init_theta)
    return int(sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)))


def estimate(task, opt, cfg) -> int:
    """Bytes meta-training ``opt`` on ``task`` with ``cfg`` (a MetaTrainConfig) needs at least."""
    theta = theta_size(opt)
    pes = cfg.estimator == "pes"
    copies = cfg.batch * (2 * cfg.pes_pairs if pes else 1)
    theta_words = theta * (4 + (copies if pes else 0))
    n, d = int(task.num_params), int(opt.state_size)
    steps = cfg.truncation or cfg.steps or task.default_steps
    per_copy = n * (d + 2) * (1 + (0 if pes else RESIDUALS_PER_STEP * steps))
    return 4 * (theta_words + copies * per_copy)


def check_fits(task, opt, cfg) -> None:
    """Refuse meta-training that cannot fit in the available memory, before it starts."""
    need = estimate(task, opt, cfg)
    avail = psutil.virtual_memory().available
    if need > avail:
        raise UserError(f"meta-training {task.name} with {getattr(opt, 'units', '?')} units needs at least "
                        f"{human_bytes(need)} of memory and {human_bytes(avail)} is available; use fewer "
                        "--units, a smaller --batch or --truncation, or --estimator pes")
