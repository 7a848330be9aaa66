"""Random search for the hyperparameters of the hand-designed baselines.

Each candidate θ is scored by the meta-objective of :mod:`lopt_trace.unroll`, mean_k f_k / f_0
over the task's horizon (k = 1..K), on the same ``problems`` problems for every candidate
(common random numbers), drawn from the *training* seed range with base :data:`TUNE_SEED_BASE`
(disjoint from the held-out test seeds, and from the seeds meta-training uses by default).

Candidates are evaluated in batches: one jitted call runs ``batch`` candidates × all problems
with ``vmap`` over θ and over problems. A candidate whose loss becomes NaN or Inf on any problem
scores ``inf`` on that problem and is flagged ``failed``; the search carries on.

Search spaces (:data:`SEARCH_SPACES`) are log-uniform; for a decay rate β the search samples
1 − β log-uniform, which spreads candidates evenly over 0.9, 0.99, 0.999, ...

The result of :func:`tune` is an ``xarray.Dataset`` with dims ``sample`` and ``problem``:
one variable per hyperparameter (``sample``), ``objective (sample, problem)``,
``mean_objective (sample)`` and ``failed (sample)``. :func:`tune_tree` puts one per optimizer
under ``/tune/<optimizer>`` for :func:`lopt_trace.zarr_io.write_tree`, and :func:`bundle_best`
merges the selected configurations into a ``data/tuned/<task>.json`` file.

Choosing (:func:`select`): the lowest mean over the tuning problems, except that near-ties (within
one sem of the paired per-problem difference) go to the candidate whose objective varies least
across problems; the choice is then scored on validation problems from their own training-range
seeds (:data:`TUNE_VALIDATION_SEED_BASE`, :func:`with_validation`). :func:`tune_to_store` runs
the searches of several optimizers into a store with checkpoints, a time budget and ``resume``;
:func:`tuning_curve` gives the best-so-far objective against the number of candidates, with a
band over random candidate orders and a plateau verdict. See docs/tuning.md.

Modules: :mod:`.space` (search spaces), :mod:`.scoring` (scoring candidates), :mod:`.selection`
(choosing and validating), :mod:`.search` (one search), :mod:`.curves` (tuning curves),
:mod:`.bundle` (``data/tuned`` files), :mod:`.store` (checkpointed multi-optimizer searches).
"""

from lopt_trace.tune.bundle import bundle_best, load_tuned, tune_tree, tuned_theta
from lopt_trace.tune.curves import (
    PLATEAU_RULE,
    PLATEAU_TOLERANCE,
    best_so_far,
    plateau_improvement,
    tuning_curve,
)
from lopt_trace.tune.scoring import (
    TUNE_SEED_BASE,
    SearchProgress,
    ShardedEvaluator,
    default_batch,
    equal_batches,
    evaluate,
    evaluate_batches,
    make_evaluator,
    sample_problems,
    tuning_seeds,
)
from lopt_trace.tune.search import (
    SearchPlan,
    finish_search,
    plan_search,
    random_search,
    run_search,
    search_dataset,
    tune,
)
from lopt_trace.tune.selection import (
    DEFAULT_VALIDATION_PROBLEMS,
    SELECTION_RULE,
    TUNE_VALIDATION_SEED_BASE,
    best_config,
    mean_sem,
    select,
    selected_config,
    validation_seeds,
    with_selection,
    with_validation,
)
from lopt_trace.tune.space import (
    OBJECTIVES,
    SEARCH_SPACES,
    LogUniform,
    sample_candidates,
    search_space,
    tuning_setup,
    with_fixed,
)
from lopt_trace.tune.store import TuneOutcome, read_tune_store, tune_to_store

__all__ = [
    "LogUniform",
    "SEARCH_SPACES",
    "OBJECTIVES",
    "search_space",
    "sample_candidates",
    "tuning_setup",
    "with_fixed",
    "TUNE_SEED_BASE",
    "tuning_seeds",
    "sample_problems",
    "make_evaluator",
    "default_batch",
    "equal_batches",
    "evaluate_batches",
    "ShardedEvaluator",
    "evaluate",
    "SearchProgress",
    "TUNE_VALIDATION_SEED_BASE",
    "DEFAULT_VALIDATION_PROBLEMS",
    "SELECTION_RULE",
    "select",
    "with_selection",
    "validation_seeds",
    "with_validation",
    "mean_sem",
    "best_config",
    "selected_config",
    "SearchPlan",
    "plan_search",
    "run_search",
    "search_dataset",
    "random_search",
    "tune",
    "finish_search",
    "PLATEAU_TOLERANCE",
    "PLATEAU_RULE",
    "best_so_far",
    "plateau_improvement",
    "tuning_curve",
    "tune_tree",
    "load_tuned",
    "bundle_best",
    "tuned_theta",
    "TuneOutcome",
    "read_tune_store",
    "tune_to_store",
]
