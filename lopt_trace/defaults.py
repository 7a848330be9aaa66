"""Names and defaults the command line needs before anything heavy loads.

``lopt-trace --help`` and every argument error answer from here, without importing JAX, xarray
or zarr (tests check that these agree with the registries they summarise).
"""

from __future__ import annotations

#: the registered tasks (``lopt_trace.tasks.TASKS``), in their order
TASK_NAMES = ("linear_regression", "rosenbrock", "two_moons", "mnist")
#: what ``--optimizer`` defaults to: the learned optimizer and every baseline
DEFAULT_OPTIMIZERS = ("learned", "sgd", "momentum", "rmsprop", "adam")
#: what ``compare`` shows by default: the optimizers of the paper's Fig. 1, in order
COMPARE_OPTIMIZERS = ("learned", "momentum", "rmsprop", "adam")
#: every named optimizer (``bundled.LEARNED`` and ``optimizers.BASELINES``); ``compare --optimizer all``
ALL_OPTIMIZERS = ("learned", "learned-warm", "sgd", "momentum", "rmsprop", "adam")
#: default number of parameters kept per tensor
DEFAULT_PARAMS = 64
#: default number of test runs
DEFAULT_RUNS = 4

#: ``lopt-trace train``'s meta-gradient estimator where it is not backpropagation, chosen by
#: measurement (docs/metatrain.md, "Which estimator by default")
DEFAULT_ESTIMATORS = {"two_moons": "pes"}


def default_estimator(task: str) -> str:
    """``train``'s default ``--estimator`` for ``task`` (``bptt`` unless measured otherwise)."""
    return DEFAULT_ESTIMATORS.get(task, "bptt")


__all__ = ["ALL_OPTIMIZERS", "COMPARE_OPTIMIZERS", "DEFAULT_ESTIMATORS", "DEFAULT_OPTIMIZERS", "DEFAULT_PARAMS", "DEFAULT_RUNS", "TASK_NAMES",
           "default_estimator"]
