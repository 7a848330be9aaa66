"""Distillation: do the mechanisms the analyses found explain the learned optimizer?

``lopt-trace distill STORE`` (or :func:`distill`) builds a small, readable optimizer from the
store's ``/analysis/{momentum,schedule,clipping,adaptation}`` results
(:class:`~lopt_trace.optimizers.distilled.Distilled`), runs it, the analysed optimizer and tuned
momentum on the same held-out problems, and reports the fraction of the learned optimizer's
advantage over tuned momentum that it recovers, with an ablation of each mechanism. The result is
``/analysis/distill``. See docs/analysis.md, "distill".

Modules:
  build     the distilled optimizer's θ from the analysis results
  evaluate  variants, loss curves on held-out problems, recovered fractions with a bootstrap
  result    the ``/analysis/distill`` Dataset, its one-line summary, the optimizer read back
"""

from __future__ import annotations

import functools
import os

import xarray as xr

from lopt_trace.analysis.results import run_recipe
from lopt_trace.distill.build import REQUIRED, Distillation, build
from lopt_trace.distill.result import DEFAULT_SEED_BASE, compute, distilled_from_result, summary

NAME = "distill"
VERSION = "1"


def distill(store, optimizer: str | None = None, problems: int = 64,
            seed_base: int = DEFAULT_SEED_BASE, bootstrap: int = 2000, seed: int = 0,
            write: bool = True, progress: bool = False) -> xr.Dataset:
    """Distil ``optimizer`` of ``store`` (a path, URL or opened tree), write ``/analysis/distill``
    (when ``store`` is a path and ``write``) and return the result."""
    label = "STORE" if isinstance(store, xr.DataTree) else os.fspath(store)
    params = {"optimizer": optimizer, "problems": problems, "seed_base": seed_base,
              "bootstrap": bootstrap, "seed": seed}
    fn = functools.partial(compute, progress=progress, store=label)
    return run_recipe(store, NAME, VERSION, fn, params, write=write)


__all__ = ["DEFAULT_SEED_BASE", "Distillation", "NAME", "REQUIRED", "VERSION", "build", "compute",
           "distill", "distilled_from_result", "summary"]
