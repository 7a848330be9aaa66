"""Tuning curves: best-so-far objective against candidates, a band over candidate orders, a plateau verdict."""

from __future__ import annotations

import numpy as np
import xarray as xr

# -- the tuning curve ------------------------------------------------------------------------------
#: a search has plateaued when its mean best-so-far improved by less than this (relative to
#: its final value) over the last half of the candidates
PLATEAU_TOLERANCE = 0.01


PLATEAU_RULE = ("plateaued when the mean best-so-far over random candidate orders improves by less "
                "than 1 % over the last half of the candidates: (e(ceil(S/2)) - e(S)) / e(S) < 0.01, "
                "e(n) the mean over orders of the best of the first n of the S candidates")


def best_so_far(scores: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Running minimum of ``scores (samples,)`` taken in each order of ``orders (n, samples)``
    (candidate indices): ``(n, samples)``, element ``[j, k]`` the best of the first k + 1
    candidates of order j."""
    return np.minimum.accumulate(np.asarray(scores, np.float64)[orders], axis=1)


def plateau_improvement(curve: np.ndarray) -> float:
    """(e(⌈S/2⌉) − e(S)) / e(S) of a best-so-far curve ``(S,)``: how much the last half of the
    candidates improved it, relative to the final value (``inf`` when the curve is not finite at
    half the candidates, ``nan`` for fewer than two candidates or no finite candidate)."""
    e = np.asarray(curve, np.float64)
    if len(e) < 2 or not np.isfinite(e[-1]):
        return float("nan")
    half, end = e[-(-len(e) // 2) - 1], e[-1]
    if not np.isfinite(half):
        return float("inf")
    if end == 0:
        return 0.0 if half == 0 else float("inf")
    return float((half - end) / abs(end))


def tuning_curve(ds: xr.Dataset, permutations: int = 200, seed: int = 0,
                 band: tuple[float, float] = (0.05, 0.95),
                 tolerance: float = PLATEAU_TOLERANCE) -> xr.Dataset:
    """Best-so-far selection score (``mean_objective``; ``inf`` for a failed candidate) against
    the number of candidates, from a tuning dataset.

    Returns a Dataset over ``candidates`` (1..S) with ``in_order`` (the search's own order), and
    over ``permutations`` random orders of the same candidates (drawn with ``seed``): ``median``,
    ``low`` and ``high`` (the ``band`` quantiles; nearest-rank, so ``inf`` stays ``inf``) and
    ``mean``. At S candidates every order has seen them all, so the band closes.

    The plateau is judged on the mean (:func:`plateau_improvement`, :data:`PLATEAU_RULE`), not
    the median: at exactly half the candidates a random order holds the overall best with
    probability ½, so the median there flips between the best and the second best and says
    nothing; the mean weighs the next-best candidates by how often the first half holds them
    (the 2nd best ¼, the 3rd ⅛, ...), so it is below 1 % only when the few best candidates are all
    within about 1 % of the best. Attributes: ``plateaued``, ``improvement_last_half``,
    ``plateau_rule``, ``permutations``, ``band`` and the optimizer, task, samples and problems.
    """
    scores = np.asarray(ds["mean_objective"].values, np.float64)
    n = len(scores)
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(n) for _ in range(int(permutations))])
    curves = best_so_far(scores, orders)
    low, median, high = np.quantile(curves, [band[0], 0.5, band[1]], axis=0, method="nearest")
    with np.errstate(invalid="ignore"):
        mean = curves.mean(axis=0)
    improvement = plateau_improvement(mean)
    dims = "candidates"
    attrs = {"long_name": "best mean objective so far", "units": "1"}
    out = xr.Dataset(
        {"in_order": (dims, best_so_far(scores, np.arange(n)[None])[0], attrs),
         "median": (dims, median, {**attrs, "long_name": "median best-so-far over random orders"}),
         "low": (dims, low, {**attrs, "long_name": f"{band[0]:.0%} quantile over random orders"}),
         "high": (dims, high, {**attrs, "long_name": f"{band[1]:.0%} quantile over random orders"}),
         "mean": (dims, mean, {**attrs, "long_name": "mean best-so-far over random orders"})},
        coords={dims: (dims, np.arange(1, n + 1, dtype=np.int64),
                       {"long_name": "candidates evaluated", "units": "1"})})
    out.attrs.update({
        "plateaued": bool(improvement < tolerance), "improvement_last_half": improvement,
        "plateau_rule": PLATEAU_RULE, "permutations": int(permutations), "band": list(band),
        "optimizer": (ds.attrs.get("optimizer") or {}).get("name"), "task": ds.attrs.get("task"),
        "samples": int(n), "problems": int(ds.sizes.get("problem", 0))})
    return out

