"""Analyses of recorded optimizer dynamics (see docs/analysis.md).

Every function takes and returns xarray objects. Functions that read a store's per-parameter
arrays work on Dask-backed data and never load them whole; functions that evaluate the optimizer
rebuild F and readout from the θ stored with each group (:func:`rebuild`) and run in float64.

Modules:
  rebuild           optimizer and θ from a store group, group selection
  pca               streaming PCA of states, projections, variance across runs
  update_functions  Δx(g), effective learning rate, saturation
  fixed_points      batched Levenberg–Marquardt fixed-point solver (compiled once), merging,
                    the state's range, stability checked by forward iteration
  linearization     Jacobians, modes (β_i, α_i), one-step linearisation error
  dynamics          autonomous dynamics F(θ, h, 0): the built-in schedule
  adaptation        fixed points against g* (the S-curve), effective LR along its arms
  layers            per-tensor and per-kind state trajectories, gradient histograms
  sampling          small, bounded reads from a store group
  results           writing results to /analysis/<recipe> with provenance
  objective         the meta-objective mean_k f_k / f_0 of recorded loss curves
  checkpoints       θ along the /meta_train history: stacked checkpoints, their meta-objective,
                    replayed gradients (the functions above that take ``theta_dim`` batch them)
"""

from lopt_trace.analysis.adaptation import gradient_range, s_curve
from lopt_trace.analysis.checkpoints import (
    checkpoint_objective,
    halfway,
    meta_train_history,
    replay,
    stack_thetas,
)
from lopt_trace.analysis.dynamics import autonomous
from lopt_trace.analysis.fixed_points import (
    check_attractors,
    find_fixed_points,
    fixed_points,
    forward_check,
    make_solver,
    merge_fixed_points,
    sample_states,
    solve_one_fn,
    state_bounds,
)
from lopt_trace.analysis.layers import gradient_histograms, tensor_trajectories
from lopt_trace.analysis.linearization import (held_modes, jacobians, linearization_error, linearize, modes,
                                               momentum_mode)
from lopt_trace.analysis.objective import meta_objective
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
    "autonomous", "baseline_hyperparameters", "checkpoint_objective", "displaced",
    "effective_learning_rate", "find_fixed_points", "fixed_points", "fraction_beyond",
    "fraction_beyond_hist", "gradient_histograms", "gradient_range", "group_pca", "halfway",
    "jacobians", "linearization_error", "linearize", "make_solver", "merge_fixed_points",
    "held_modes", "meta_objective", "meta_train_history", "modes", "moments", "momentum_mode", "open_for_analysis",
    "optimizer_names", "pca", "pca_from_moments", "project", "read_result", "rebuild", "replay",
    "run_group", "run_recipe", "s_curve", "sample_states", "saturation", "select_optimizer",
    "solve_one_fn", "stack_thetas", "tensor_trajectories", "total_variance", "update_function",
    "write_result",
]
