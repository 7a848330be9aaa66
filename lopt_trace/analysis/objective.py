"""The meta-objective of a loss curve, as meta-training, tuning, comparisons and the analyses
score it: mean_{k=1..K} f_k / f_0, lower is better, a diverged run counts as inf.

This is the NumPy (float64) form for recorded curves; :func:`lopt_trace.unroll.meta_objective`
is the same formula in JAX, differentiable, for the inner loop.
"""

from __future__ import annotations

import numpy as np


def meta_objective(curves) -> np.ndarray:
    """mean_k f_k / f_0 (k = 1..K) of loss curves ``(..., K + 1)``, in float64; non-finite: inf."""
    curves = np.asarray(curves, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        value = curves[..., 1:].mean(axis=-1) / curves[..., 0]
    return np.where(np.isfinite(value), value, np.inf)


__all__ = ["meta_objective"]
