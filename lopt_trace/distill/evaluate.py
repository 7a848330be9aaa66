"""Running the distilled optimizer, its ablations, the learned optimizer and tuned momentum on the
same held-out problems, and how much of the learned optimizer's advantage each recovers.

Per problem the score is the meta-objective L = mean_k f_k / f_0 (k = 1..K; lower is better;
a diverged run is inf), as in :mod:`lopt_trace.compare`. Over the problems, with means L̄:

    recovered(variant) = (L̄_momentum − L̄_variant) / (L̄_momentum − L̄_learned)

1 for the learned optimizer, 0 for tuned momentum; the fraction a mechanism *carries* is
recovered(distilled) − recovered(distilled without it). Uncertainty: a paired bootstrap over
problems (every variant ran on the same problems, so each resample takes the same problems for
all of them): the standard deviation of the resampled values and their 2.5–97.5% interval.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt_trace import seeds as seedlib
from lopt_trace.analysis.objective import meta_objective  # noqa: F401 - the formula, used by distill.result
from lopt_trace.optimizers.base import ComponentwiseOptimizer
from lopt_trace.optimizers.distilled import Distilled, neutral
from lopt_trace.tasks.base import Task
from lopt_trace.unroll import loss_curve

#: labels of the two references
LEARNED, MOMENTUM = "learned", "tuned_momentum"
#: label of the distilled optimizer with every mechanism, and with none (SGD at Σα)
DISTILLED, NONE = "distilled", "no_mechanisms"


class Variant(NamedTuple):
    """One column of the comparison: its label, the mechanism it lacks ('' none, 'all' every one,
    'reference' for the learned optimizer and tuned momentum) and a description."""

    label: str
    removed: str
    description: str


def variants(opt: Distilled) -> list[Variant]:
    """The distilled optimizer, one ablation per mechanism it has, and all of them removed."""
    out = [Variant(DISTILLED, "", "every mechanism")]
    out += [Variant(f"no_{m}", m, f"without {m}") for m in opt.mechanisms]
    out.append(Variant(NONE, "all", "no mechanism: SGD at the learned optimizer's Σα"))
    return out


def variant_thetas(opt: Distilled, theta: dict, which: list[Variant]) -> dict:
    """θ of every variant stacked along a leading axis (V, ...): the distilled θ with the removed
    mechanisms at their neutral values (:func:`~lopt_trace.optimizers.distilled.neutral`)."""
    rows = []
    for v in which:
        th = {k: jnp.asarray(x) for k, x in theta.items()}
        for m in (opt.mechanisms if v.removed == "all" else [v.removed] if v.removed else []):
            th = neutral(th, m)
        rows.append(th)
    return {k: jnp.stack([r[k] for r in rows]) for k in theta}


def sample_problems(task: Task, seeds):
    """Problems for ``seeds``, stacked (sampled eagerly: tasks may cache data on first use)."""
    return jax.vmap(task.sample)(seedlib.problem_keys(seeds))


def loss_curves(task: Task, opt: ComponentwiseOptimizer, thetas: dict, seeds, steps: int,
                batch: int | None = None, bar=None) -> np.ndarray:
    """f_0..f_K for a stack of V θ (leading axis) on every problem: (V, problems, steps + 1).

    One compiled function for all V θ (``vmap`` over θ and problems); problems go in equal chunks
    of at most ``batch`` (default: about 4M parameter-copies per call), the last one padded."""
    seeds = np.asarray(seeds, np.int64)
    n = len(seeds)
    nv = len(next(iter(thetas.values())))
    batch = int(batch or max(1, min(n, 2**22 // max(1, task.num_params * nv))))
    chunks = math.ceil(n / batch)
    batch = math.ceil(n / chunks)
    padded = np.concatenate([seeds, np.repeat(seeds[:1], chunks * batch - n)])
    problems = sample_problems(task, padded)
    one = lambda th, p: loss_curve(task, opt, th, p, steps)  # noqa: E731
    fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
    out = np.empty((nv, chunks * batch, steps + 1), np.float64)
    for c in range(chunks):
        lo, hi = c * batch, (c + 1) * batch
        chunk = jax.tree.map(lambda a: a[lo:hi], problems)
        out[:, lo:hi] = np.asarray(jax.block_until_ready(fn(thetas, chunk)), np.float64)
        if bar is not None:
            bar.update(nv * (min(hi, n) - lo))
    return out[:, :n]


def curve_gap(curves: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """mean over problems and k = 1..K of |f_k − f_k(reference)| / f_0 (in the meta-objective's
    units): curves (V, problems, K + 1), reference (1, problems, K + 1) -> (V,); a diverged run
    makes it inf."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        gap = np.abs(curves[..., 1:] - reference[..., 1:]) / reference[..., :1]
        return np.where(np.isfinite(gap), gap, np.inf).mean(axis=(-2, -1))


class Recovered(NamedTuple):
    """Recovered fractions per variant (V,): the estimate, the bootstrap's standard deviation and
    2.5/97.5 percentiles, and the resampled values (V, B)."""

    value: np.ndarray
    sem: np.ndarray
    low: np.ndarray
    high: np.ndarray
    samples: np.ndarray


def _ratio(meta_means: np.ndarray, learned: int, reference: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ref = meta_means[reference]
        return (ref - meta_means) / (ref - meta_means[learned])


def spread(samples: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(std, 2.5th, 97.5th percentile) over ``axis``, ignoring non-finite resamples for the std."""
    finite = np.where(np.isfinite(samples), samples, np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN, as intended
        sem = np.nanstd(finite, axis=axis, ddof=1)
        low, high = np.nanpercentile(samples, [2.5, 97.5], axis=axis)
    return sem, low, high


def recovered(meta: np.ndarray, learned: int, reference: int, n_boot: int = 2000,
              seed: int = 0) -> Recovered:
    """Recovered fractions of every row of ``meta`` (variants, problems), with a paired bootstrap
    over problems (``n_boot`` resamples, NumPy generator seeded with ``seed``)."""
    meta = np.asarray(meta, np.float64)
    value = _ratio(meta.mean(axis=1), learned, reference)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, meta.shape[1], (int(n_boot), meta.shape[1]))
    samples = _ratio(meta[:, idx].mean(axis=-1), learned, reference)  # (V, B)
    sem, low, high = spread(samples)
    return Recovered(value, sem, low, high, samples)


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a − b) and its sem over problems (paired): (nan, nan) when a run diverged."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if not np.all(np.isfinite(d)) or len(d) < 2:
        return float(np.mean(d)) if np.all(np.isfinite(d)) else float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


__all__ = ["curve_gap", "DISTILLED", "LEARNED", "MOMENTUM", "NONE", "Recovered", "Variant", "loss_curves",
           "meta_objective", "paired_difference", "recovered", "sample_problems", "spread",
           "variant_thetas", "variants"]
