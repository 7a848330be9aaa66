"""scripts/distill_table.py's robustness note: the recovered fraction on per-problem medians
appears exactly when tuned momentum's worst problem is far above its median."""

import importlib.util
from pathlib import Path

import numpy as np
import xarray as xr

SPEC = importlib.util.spec_from_file_location(
    "distill_table", Path(__file__).resolve().parents[1] / "scripts" / "distill_table.py")
distill_table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(distill_table)


def _ds(momentum):
    values = np.array([[0.10, 0.11, 0.12, 0.10], [0.12, 0.13, 0.14, 0.12], momentum])
    return xr.Dataset({"meta_objective": (("variant", "problem"), values)},
                      coords={"variant": ["learned", "distilled", "tuned_momentum"]})


def test_steady_momentum_gets_no_note():
    assert distill_table.median_check(_ds([0.20, 0.21, 0.22, 0.20])) == ""


def test_unstable_momentum_gets_the_median_fraction():
    note = distill_table.median_check(_ds([0.20, 0.21, 0.22, 2.0]))
    # medians: learned 0.105, distilled 0.125, momentum 0.215 -> (0.215 - 0.125) / (0.215 - 0.105)
    expected = (0.215 - 0.125) / (0.215 - 0.105)
    assert "unstable" in note and f"{100 * expected:.0f}%" in note
    assert "9.3× its median" in note
