"""Fast refusals: ``--help`` and argument errors answer without loading JAX or the data stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lopt_trace import defaults, recorder
from lopt_trace.tasks import TASKS

_PROBE = """
import sys
from lopt_trace.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("jax", "xarray", "zarr", "dask", "holoviews", "panel") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def test_light_registries_agree_with_the_real_ones():
    assert defaults.TASK_NAMES == tuple(TASKS)
    assert recorder.DEFAULT_OPTIMIZERS == defaults.DEFAULT_OPTIMIZERS
    from lopt_trace import bundled
    from lopt_trace.optimizers import BASELINES

    assert defaults.ALL_OPTIMIZERS == (*bundled.LEARNED, *BASELINES)


def test_one_recipe_registry():
    from lopt_trace import recipes_loader, report
    from lopt_trace.dashboard.data import RECIPE_ROLES

    assert report.RECIPES == recipes_loader.ORDER and list(RECIPE_ROLES) == list(recipes_loader.ORDER)
    # one report figure per recipe, numbered as the registry says
    assert [f.__name__.removeprefix("figure_") for f in report.FIGURES] == [
        r.figure.removeprefix("Fig. ") for r in recipes_loader.REGISTRY]
    assert set(recipes_loader.ORDER) <= set(recipes_loader.available())


@pytest.mark.parametrize("argv", [["--help"], ["record", "--help"], ["record", "--task", "nope"],
                                  ["train", "--task", "mnist", "--lr", "-1"], ["analyze"]])
def test_help_and_argument_errors_load_nothing_heavy(argv):
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True)
    heavy = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], (argv, heavy, out.stderr[-500:])
    if argv[-1] != "--help":
        assert out.stderr.count("\n") == 1 and "error" in out.stderr  # one line


def test_train_picks_the_measured_estimator_per_task(tmp_path):
    from lopt_trace.cli import main
    from lopt_trace.defaults import default_estimator
    from lopt_trace.optimizers.io import load_optimizer

    assert [default_estimator(t) for t in defaults.TASK_NAMES] == ["bptt", "bptt", "pes", "bptt"]
    out = tmp_path / "tm.zarr"
    assert main(["train", "--task", "two_moons", "--units", "2", "--iterations", "1", "--batch", "1",
                 "--steps", "4", "--out", str(out)]) == 0
    assert load_optimizer(out).attrs["metatrain"]["estimator"] == "pes"
