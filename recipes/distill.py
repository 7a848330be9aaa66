"""Distillation (not in the paper): do the mechanisms found explain the learned optimizer?

A small optimizer is built from the store's momentum, schedule, clipping and adaptation results
(:class:`lopt_trace.optimizers.distilled.Distilled`: heavy-ball momentum with an instantaneous
term, the autonomous schedule, a soft clip of the gradient, the adaptation curve over a slow
mean gradient). It, the analysed optimizer and tuned momentum run on the same held-out problems
(seeds from 1e9 + ``seed_base``, none of them the store's own runs); the result is the fraction of
the analysed optimizer's advantage over tuned momentum (meta-objective mean_k f_k/f_0) that the
distilled optimizer recovers, with a paired bootstrap over problems, and the same for the
distilled optimizer with each mechanism removed in turn, so each mechanism's share can be read
off. See :mod:`lopt_trace.distill` and docs/analysis.md, "distill".

Unlike the other recipes it runs new optimization problems (``problems`` × about ten
variants), so ``lopt-trace analyze all`` leaves it out; run it after the analyses it reads:

    lopt-trace distill STORE [--optimizer NAME] [--problems 64]
    lopt-trace analyze distill STORE -p problems=64
"""

from __future__ import annotations

import xarray as xr

from lopt_trace.analysis.rebuild import select_optimizer
from lopt_trace.analysis.results import run_recipe
from lopt_trace.distill import DEFAULT_SEED_BASE, NAME, VERSION
from lopt_trace.distill import compute as _compute
from lopt_trace.distill import summary as _summary
from lopt_trace.distill.build import analyses
from lopt_trace.distill.result import tuned_momentum
from lopt_trace.errors import UserError


def compute(tree: xr.DataTree, optimizer: str | None = None, problems: int = 64,
            seed_base: int = DEFAULT_SEED_BASE, bootstrap: int = 2000, seed: int = 0) -> xr.Dataset:
    """The distilled optimizer, its ablations and the references on ``problems`` held-out problems."""
    return _compute(tree, optimizer, problems, seed_base, bootstrap, seed)


def summary(ds: xr.Dataset) -> str:
    """One line: the fraction recovered (95% interval) and what each mechanism carries."""
    return _summary(ds)


def plot(ds: xr.Dataset):
    """Recovered fraction per variant, what each mechanism carries, the mean loss curves of the
    references and the distilled optimizer, and the distilled optimizer's parts: drawn as the
    dashboard's Distillation tab and the report's Fig. 9 draw them."""
    from lopt_trace.analysis.plotting import holoviews  # drawing only: computing loads no HoloViews or dashboard
    from lopt_trace.dashboard.distill import carried_plot, fraction_plot, loss_plot, parts_plots

    return holoviews().Layout([fraction_plot(ds), carried_plot(ds), loss_plot(ds), *parts_plots(ds)]).cols(2).opts(
        shared_axes=False)


def not_applicable(tree: xr.DataTree, optimizer: str | None = None) -> str | None:
    """Why distill cannot run here (a missing analysis or tuned momentum), or None."""
    try:
        analyses(tree, select_optimizer(tree, optimizer))
        tuned_momentum(tree)
    except UserError as exc:
        return str(exc)
    return None


def run(store, **params) -> xr.Dataset:
    """Compute, write to ``/analysis/distill`` of ``store``, return the result."""
    return run_recipe(store, NAME, VERSION, compute, params)

