"""Locate the files that ship with lopt-trace (MNIST, trained optimizers, tuned baselines).

In a source checkout they live in the top-level ``data/`` folder; a wheel carries the same folder
as ``lopt_trace/_bundled``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir() -> Path:
    """The folder that holds the bundled data, wherever lopt-trace is installed."""
    for candidate in (_PACKAGE / "_bundled", _PACKAGE.parent / "data"):
        if (candidate / "README.md").is_file():
            return candidate
    raise FileNotFoundError(
        "lopt-trace's bundled data folder is missing; reinstall the package with `pip install .`"
    )


def data_file(*parts: str) -> Path:
    """Path of a bundled file (it may not exist; callers check)."""
    return data_dir().joinpath(*parts)


#: the bundled learned optimizers: spec -> file suffix. ``learned`` was meta-trained from random
#: weights on raw gradients; ``learned-warm`` (two_moons and mnist only) started from a hand-set,
#: tuned soft-sign-momentum GRU (see docs/bundled.md), so its mechanisms were put in by hand.
LEARNED = {"learned": "", "learned-warm": "-warm"}


def optimizer_path(task: str, variant: str = "learned") -> Path:
    """Where the bundled learned optimizer ``variant`` (a key of :data:`LEARNED`) for ``task`` lives."""
    return data_file("optimizers", f"{task}{LEARNED[variant]}.zarr")


def tuned_path(task: str) -> Path:
    """Where the bundled tuned baseline hyperparameters for ``task`` live."""
    return data_file("tuned", f"{task}.json")
