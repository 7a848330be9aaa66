"""Stores shared by many tests, built once per session under pytest's own temporary folder
(``tmp_path_factory``: a fresh numbered folder per run, so two runs of the suite at the same time
never share or remove each other's stores)."""

from __future__ import annotations

import _dashboard_stores
import _stores
import pytest


@pytest.fixture(scope="session")
def ground_truth_store(tmp_path_factory) -> str:
    """Linear regression, 3 runs of 40 steps, with the ground-truth optimizers (_stores.GT)."""
    return _stores.build_ground_truth_store(tmp_path_factory.mktemp("analysis") / "ground_truth.zarr")


@pytest.fixture(scope="session")
def two_moons_store(tmp_path_factory) -> str:
    """A small two-moons store with a random GRU as ``learned``."""
    return _stores.build_two_moons_store(tmp_path_factory.mktemp("analysis") / "two_moons.zarr")


@pytest.fixture(scope="session")
def dashboard_recording(tmp_path_factory) -> str:
    """The recording the dashboard stores are made from (learned GRU, SGD, momentum)."""
    return _dashboard_stores.record_base(tmp_path_factory.mktemp("dashboard") / "recorded.zarr")


@pytest.fixture(scope="session")
def full_store_and_failures(tmp_path_factory, dashboard_recording) -> tuple[str, dict]:
    """The full dashboard store and {recipe: error} of the recipes that failed on it."""
    return _dashboard_stores.build_full_store(dashboard_recording,
                                              tmp_path_factory.mktemp("dashboard") / "full.zarr")


@pytest.fixture(scope="session")
def full_store(full_store_and_failures) -> str:
    """learned + sgd + momentum with every recipe's result."""
    return full_store_and_failures[0]


@pytest.fixture(scope="session")
def baselines_store(tmp_path_factory, dashboard_recording) -> str:
    """sgd + momentum only, no /analysis."""
    return _dashboard_stores.build_baselines_store(dashboard_recording,
                                                   tmp_path_factory.mktemp("dashboard") / "baselines.zarr")
