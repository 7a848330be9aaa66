"""Exporting an unfinished meta-training run's best validated θ as an optimizer file."""

import numpy as np
import pytest

from lopt_trace.errors import UserError
from lopt_trace.export import best_checkpoint, export_checkpoint
from lopt_trace.metatrain import MetaTrainConfig, checkpoint_path, train
from lopt_trace.optimizers import LearnedGRU
from lopt_trace.optimizers.io import load_optimizer
from lopt_trace.tasks import get_task


@pytest.mark.slow
def test_export_writes_the_best_validated_theta_and_leaves_the_run_resumable(tmp_path):
    task = get_task("linear_regression", steps=10)
    opt = LearnedGRU(units=4, output_scale=0.1)
    cfg = MetaTrainConfig(iterations=8, batch=2, learning_rate=3e-2, checkpoint_every=2, validation=2)
    out = tmp_path / "lr.zarr"
    history = train(task, opt, cfg, out, progress=False, stop_after=6)
    ckpt = checkpoint_path(out)
    scores = history["validation"].values
    assert list(history["checkpoint"].values) == [0, 2, 4, 6] and len(scores) == 4

    info = export_checkpoint(ckpt, tmp_path / "best.zarr")
    best = int(np.argmin(scores))
    assert info["finished"] is False and info["iterations_done"] == 6
    assert info["selected_checkpoint"] == int(history["checkpoint"].values[best])
    assert info["selected_validation"] == pytest.approx(scores[best])
    loaded = load_optimizer(tmp_path / "best.zarr")
    for k, v in loaded.theta.items():
        np.testing.assert_array_equal(v, history[f"theta_{k}"].values[best])
    assert loaded.optimizer.config() == opt.config()
    assert int(loaded.meta_train["selected_checkpoint"]) == info["selected_checkpoint"]

    with pytest.raises(UserError):  # never replaces a file unasked
        export_checkpoint(ckpt, tmp_path / "best.zarr")

    # the run goes on from its checkpoint as if nothing happened, and then there is nothing to export
    final = train(task, opt, cfg, out, progress=False, resume=True)
    assert list(final["checkpoint"].values) == [0, 2, 4, 6, 8]
    with pytest.raises(UserError, match="no meta-training checkpoint"):
        export_checkpoint(ckpt, tmp_path / "again.zarr")


def test_best_checkpoint_without_validation_is_the_last_and_needs_one():
    import xarray as xr

    ds = xr.Dataset(coords={"checkpoint": [5, 10, 15]})
    assert best_checkpoint(ds) == 2
    ds["validation"] = ("checkpoint", [0.5, np.nan, 0.3])
    assert best_checkpoint(ds) == 2
    ds["validation"] = ("checkpoint", [0.2, np.nan, 0.3])
    assert best_checkpoint(ds) == 0
    with pytest.raises(UserError, match="first checkpoint"):
        best_checkpoint(xr.Dataset(coords={"checkpoint": np.zeros(0, int)}))
