"""How lopt-trace draws, for the dashboard and the HTML report alike: HoloViews with Bokeh, plot
sizes, colours and axis ranges."""

from __future__ import annotations

import numpy as np
from bokeh.palettes import Category10_10, Category20_20

from lopt_trace.analysis.plotting import holoviews

#: plot sizes (pixels)
WIDTH, HEIGHT = 520, 360
SMALL = dict(width=360, height=280)
#: above this many points, clouds are rasterized (datashader) instead of drawn point by point
RASTERIZE_ABOVE = 50_000


def hv():
    """``holoviews`` with the Bokeh backend loaded."""
    return holoviews()


def palette(n: int) -> list[str]:
    """``n`` distinct colours (category10, then category20)."""
    base = list(Category10_10) if n <= 10 else list(Category20_20)
    return [base[i % len(base)] for i in range(n)]


def strings(values) -> list[str]:
    return [str(v) for v in np.asarray(values, dtype=object).ravel()]


def finite_range(*arrays, pad: float = 0.05, log: bool = False) -> tuple[float, float] | None:
    """(lo, hi) of the finite values of ``arrays`` (positive ones when ``log``), padded."""
    vals = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.array([])
    vals = vals[np.isfinite(vals)]
    if log:
        vals = vals[vals > 0]
    if vals.size == 0:
        return None
    lo, hi = float(vals.min()), float(vals.max())
    if log:
        return lo / (1 + pad * 4), hi * (1 + pad * 4)
    span = hi - lo or max(abs(hi), 1.0) * 0.1
    return lo - pad * span, hi + pad * span
