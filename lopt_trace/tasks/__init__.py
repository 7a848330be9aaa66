"""The paper's four tasks, registered by name.

>>> task = get_task("linear_regression")
>>> problem = task.sample(jax.random.PRNGKey(0))
>>> task.loss(problem.data, problem.params, 0)
"""

from __future__ import annotations

from lopt_trace.errors import UserError
from lopt_trace.tasks.base import Params, Problem, Task, TensorInfo
from lopt_trace.tasks.linear_regression import LinearRegression
from lopt_trace.tasks.mnist import Mnist, load_mnist
from lopt_trace.tasks.rosenbrock import Rosenbrock
from lopt_trace.tasks.two_moons import TwoMoons

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (LinearRegression, Rosenbrock, TwoMoons, Mnist)
}


def get_task(name: str, **config) -> Task:
    """Build a registered task by name; extra keywords override its defaults (e.g. ``steps``)."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
    try:
        return cls(**config)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad configuration for task {name!r}: {exc}") from None


def task_from_config(config: dict) -> Task:
    """Rebuild a task from :meth:`Task.config` output."""
    config = dict(config)
    return get_task(config.pop("name"), **config)


__all__ = ["TASKS", "Params", "Problem", "Task", "TensorInfo", "LinearRegression", "Rosenbrock",
           "TwoMoons", "Mnist", "get_task", "task_from_config", "load_mnist"]
