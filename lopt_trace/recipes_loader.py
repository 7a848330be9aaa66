"""Find and load the analysis recipes, wherever lopt-trace is installed.

Recipes are plain modules meant to be read and copied. In a source checkout they live in the
top-level ``recipes/`` folder; a wheel carries the same files as ``lopt_trace/recipes`` (hatch's
force-include), so nothing named ``recipes`` is ever installed at the top level of
site-packages. Either way a recipe is loaded from its file under the module name
``lopt_trace.recipes.<name>``, which cannot clash with another package.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from pathlib import Path

from lopt_trace.errors import UserError

try:
    import cloudpickle
except ImportError:  # pragma: no cover - dask depends on it
    cloudpickle = None

_PACKAGE = Path(__file__).resolve().parent
PREFIX = "lopt_trace.recipes"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One recipe of the registry: its module name, the report figure it draws, what it adds, and
    whether it analyses one optimizer group (``performance`` compares all of them) or runs on
    demand only (``distill`` runs new optimization problems: ``lopt-trace distill STORE``)."""

    name: str
    figure: str
    role: str
    per_optimizer: bool = True
    on_demand: bool = False

    @property
    def describe(self) -> str:
        """``role (figure)``, as the dashboard and report list it."""
        return f"{self.role} ({self.figure})"


#: the one list of recipes, in the paper's order, then the ones beyond the paper
REGISTRY = (
    Recipe("performance", "Fig. 1", "meta-objectives and loss curves of every optimizer", per_optimizer=False),
    Recipe("momentum", "Fig. 3", "fixed points at g* = 0, Jacobian eigenvalues, per-mode α and β"),
    Recipe("clipping", "Fig. 4", "update-function saturation threshold"),
    Recipe("schedule", "Fig. 5", "effective learning rate without gradients"),
    Recipe("adaptation", "Fig. 6", "fixed points along the g* sweep: the S-curve"),
    Recipe("layers", "Fig. 7", "per-tensor trajectories and gradient histograms"),
    Recipe("emergence", "Fig. 8", "every mechanism at every θ checkpoint of the meta-training history"),
    Recipe("distill", "Fig. 9", "an optimizer built from the mechanisms found, against the learned one "
           "and tuned momentum", on_demand=True),
)
#: the recipes in the registry's order (``analyze all`` runs them in this order, leaving out
#: :data:`ON_DEMAND`)
ORDER = tuple(r.name for r in REGISTRY)
#: recipes that ``analyze all`` leaves out: they run new optimization problems instead of analysing
#: the recording, and read the other recipes' results (``lopt-trace distill STORE``)
ON_DEMAND = tuple(r.name for r in REGISTRY if r.on_demand)
#: what each recipe adds, with its figure (the dashboard's and report's list)
ROLES = {r.name: r.describe for r in REGISTRY}
#: recipes ``analyze all`` runs whose result is about one optimizer group (its ``optimizer``
#: attribute), in order: the dashboard's default group is the one they analysed
PER_OPTIMIZER = tuple(r.name for r in REGISTRY if r.per_optimizer and not r.on_demand)


def recipes_dir() -> Path:
    """The folder that holds the recipe modules (installed copy first, then the checkout's)."""
    for candidate in (_PACKAGE / "recipes", _PACKAGE.parent / "recipes"):
        if candidate.is_dir() and any(candidate.glob("*.py")):
            return candidate
    raise UserError("lopt-trace's recipes folder is missing; reinstall the package with `pip install .`")


def available() -> list[str]:
    """Names of the recipes, paper order first, then any others alphabetically."""
    names = {p.stem for p in recipes_dir().glob("*.py") if not p.stem.startswith("_")}
    return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def for_all() -> list[str]:
    """The recipes ``lopt-trace analyze all`` runs: :func:`available` without :data:`ON_DEMAND`."""
    return [n for n in available() if n not in ON_DEMAND]


def _parent() -> types.ModuleType:
    """A ``lopt_trace.recipes`` package module whose path is the recipes folder."""
    parent = sys.modules.get(PREFIX)
    if parent is None:
        parent = types.ModuleType(PREFIX, "lopt-trace analysis recipes (see docs/analysis.md)")
        parent.__path__ = [str(recipes_dir())]
        parent.__package__ = PREFIX
        sys.modules[PREFIX] = parent
    return parent


def load(name: str) -> types.ModuleType:
    """The recipe module ``name`` (``lopt_trace.recipes.<name>``), loaded from its file."""
    full = f"{PREFIX}.{name}"
    if full in sys.modules:
        return sys.modules[full]
    names = available()
    if name not in names:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(names)} (or 'all')")
    path = recipes_dir() / f"{name}.py"
    parent = _parent()
    spec = importlib.util.spec_from_file_location(full, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(full, None)
        raise
    setattr(parent, name, module)
    if cloudpickle is not None:  # ship recipe code to dask.distributed workers by value: they may
        try:                      # not have the folder
            cloudpickle.register_pickle_by_value(module)
        except ValueError:
            pass
    for attr in ("compute", "summary", "plot", "run"):
        if not callable(getattr(module, attr, None)):
            raise UserError(f"recipe {path} has no {attr}() function")
    return module


__all__ = ["ON_DEMAND", "ORDER", "PER_OPTIMIZER", "REGISTRY", "ROLES", "Recipe", "available", "for_all", "load",
           "recipes_dir"]
