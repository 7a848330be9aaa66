"""Analyses of recorded optimizer dynamics (see docs/analysis.md).

Every function takes and returns xarray objects. Functions that read a store's per-parameter
arrays work on Dask-backed data and never load them whole; functions that evaluate the optimizer
rebuild F and readout from the θ stored with each group (:func:`rebuild`) and run in float64.

Modules:
  rebuild           optimizer and θ from a store group, group selection
  pca               streaming PCA of states, projections, variance across runs
  update_functions  Δx(g), effective learning rate, saturation
  fixed_points      batched Levenberg–Marquardt fixed-point solver, merging, outliers
  linearization     Jacobians, modes (β_i, α_i), one-step linearisation error
  dynamics          autonomous dynamics F(θ, h, 0): the built-in schedule
  adaptation        fixed points against g* (the S-curve), effective LR along its arms
  layers            per-tensor and per-kind state trajectories, gradient histograms
  sampling          small, bounded reads from a store group
  results           writing results to /analysis/<recipe> with provenance
"""

from lopt_trace.analysis.adaptation import gradient_range, s_curve
from lopt_trace.analysis.dynamics import autonomous
from lopt_trace.analysis.fixed_points import (
    find_fixed_points,
    fixed_points,
    make_solver,
    merge_fixed_points,
    sample_states,
    solve_one_fn,
)
from lopt_trace.analysis.layers import gradient_histograms, tensor_trajectories
from lopt_trace.analysis.linearization import jacobians, linearization_error, linearize, modes
from lopt_trace.analysis.pca import group_pca, moments, pca, pca_from_moments, project, total_variance
from lopt_trace.analysis.rebuild import (
    baseline_hyperparameters,
    open_for_analysis,
    optimizer_names,
    rebuild,
    run_group,
    select_optimizer,
)
from lopt_trace.analysis.results import read_result, run_recipe, write_result
from lopt_trace.analysis.update_functions import (
    displaced,
    effective_learning_rate,
    fraction_beyond,
    fraction_beyond_hist,
    saturation,
    update_function,
)

__all__ = [
    "autonomous", "baseline_hyperparameters", "displaced", "effective_learning_rate",
    "find_fixed_points", "fixed_points", "fraction_beyond", "fraction_beyond_hist",
    "gradient_histograms", "gradient_range", "group_pca", "jacobians", "linearization_error",
    "linearize", "make_solver", "merge_fixed_points", "modes", "moments", "open_for_analysis",
    "optimizer_names", "pca", "pca_from_moments", "project", "read_result", "rebuild",
    "run_group", "run_recipe", "s_curve", "sample_states", "saturation", "select_optimizer",
    "solve_one_fn", "tensor_trajectories", "total_variance", "update_function", "write_result",
]
