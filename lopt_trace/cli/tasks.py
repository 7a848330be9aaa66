"""``lopt-trace tasks``: list the registered tasks."""

from __future__ import annotations

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


def add_parser(sub, name):
    return sub.add_parser(name, help="list the tasks with their parameter counts and default steps",
                          description="List the registered tasks with their parameter counts, "
                                      "tensors and default number of inner steps.")


def run(args) -> int:
    from lopt_trace.tasks import TASKS

    print(f"{'task':<20}{'parameters':>12}{'tensors':>9}{'steps':>7}  description")
    for name, cls in TASKS.items():
        task = cls()
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name:<20}{task.num_params:>12,}{len(task.tensors):>9}{task.default_steps:>7}  {doc}")
    return 0
