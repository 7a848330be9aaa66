"""``lopt-trace record`` and ``lopt-trace info`` from the command line: the happy path with an
optimizer file (its meta-training history lands in /meta_train), bad inputs (one line, exit 2, an
existing store untouched), and an MNIST smoke test."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from lopt_trace import bundled, open_store
from lopt_trace.cli import main
from lopt_trace.errors import UserError
from lopt_trace.metatrain import history_dataset
from lopt_trace.optimizers import LearnedGRU
from lopt_trace.optimizers.io import save_optimizer
from lopt_trace.tasks import get_task

TASK = "linear_regression"


def cli(argv) -> int:
    """Run ``lopt-trace ARGV`` in-process; argparse errors exit, others return, with code 2."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def checksum(folder) -> str:
    """Hash of every file's path and content under ``folder``."""
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            p = Path(root) / name
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def opt_file(tmp_path_factory):
    """A small learned-optimizer file with a (made-up) meta-training history."""
    path = tmp_path_factory.mktemp("opt") / "tiny-gru.zarr"
    opt = LearnedGRU(units=3, output_scale=0.1)
    theta = opt.init_theta(jax.random.PRNGKey(3))
    theta["readout"] = np.full(3, -0.5, np.float32)
    history = history_dataset({"meta_loss": [0.9, 0.7, 0.6], "meta_grad_norm": [1.0, 0.5, 0.4],
                               "learning_rate": [1e-3] * 3, "skipped": [False] * 3},
                              [theta, theta], [2, 3])
    save_optimizer(path, opt, theta, task=get_task(TASK).config(), metatrain={"iterations": 3},
                   meta_train=history)
    return str(path)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, opt_file):
    out = str(tmp_path_factory.mktemp("rec") / "lr.zarr")
    code = main(["record", "--task", TASK, "--optimizer", opt_file, "--optimizer", "momentum",
                 "--runs", "3", "--steps", "10", "--params", "2", "--every", "3", "--out", out])
    assert code == 0
    return out


def test_record_cli_writes_a_store_and_summary(recorded, opt_file, capsys):
    tree = open_store(recorded)
    assert tree.attrs["optimizers"] == ["tiny-gru", "momentum"]
    assert tree.attrs["steps"] == 10 and tree.attrs["every"] == 3 and tree.attrs["params_per_tensor"] == 2
    assert tree.attrs["command"].startswith("lopt-trace")
    gru = tree["runs/tiny-gru"]
    assert gru.attrs["source"] == opt_file and gru.attrs["optimizer"]["units"] == 3
    assert list(gru["step"].values) == [0, 3, 6, 9]
    assert gru.sizes["param"] == 2 and gru.sizes["unit"] == 3 and gru.sizes["loss_step"] == 11
    # the learned optimizer's meta-training history is copied into /meta_train
    meta = tree["meta_train"].to_dataset()
    np.testing.assert_allclose(meta["meta_loss"].values, [0.9, 0.7, 0.6])
    assert list(meta["checkpoint"].values) == [2, 3] and "theta_readout" in meta
    assert meta.attrs["optimizer"] == "tiny-gru"


def test_info_cli(recorded, capsys):
    assert main(["info", recorded]) == 0
    text = capsys.readouterr().out
    for piece in ("/runs/tiny-gru", "/runs/momentum", "/meta_train", "run 3", "step 4", "loss_step 11",
                  "final loss", "± ", "linear_regression"):
        assert piece in text, piece


def test_summary_printed(tmp_path, capsys):
    out = str(tmp_path / "s.zarr")
    assert main(["record", "--task", TASK, "--optimizer", "sgd", "--runs", "2", "--steps", "5",
                 "--out", out]) == 0
    text = capsys.readouterr().out
    assert out in text and "on disk" in text and "2 test problems" in text
    assert "sgd" in text and "±" in text and "time" in text


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope"], "unknown task"),
    (["--task", TASK, "--runs", "0"], "positive integer"),
    (["--task", TASK, "--steps", "-3"], "positive integer"),
    (["--task", TASK, "--params", "some"], "'all'"),
    (["--task", TASK, "--every", "1.5"], "positive integer"),
    (["--task", TASK, "--dtype", "float64"], "invalid choice"),
    (["--task", TASK, "--keep-bits", "24"], "--keep-bits must be an integer from 1 to 23 for float32"),
    (["--task", TASK, "--keep-bits", "0"], "from 1 to 23"),
    (["--task", TASK, "--dtype", "float16", "--keep-bits", "11"], "from 1 to 10 for float16"),
    (["--task", TASK, "--keep-bits", "many"], "1 to 23 for float32, 1 to 10 for float16"),
    (["--task", TASK, "--optimizer", "adamw"], "unknown optimizer 'adamw'"),
    (["--task", TASK, "--optimizer", "missing/opt.zarr"], "nothing at missing/opt.zarr"),
    (["--task", TASK, "--optimizer", "sgd", "--optimizer", "sgd"], "given twice"),
    (["--task", TASK, "--optimizer", "sgd", "--resume"], "nothing to resume"),
    (["--task", TASK, "--overwrite", "--resume"], "not allowed with"),
])
def test_bad_inputs_one_line_exit_2(argv, message, tmp_path, capsys):
    out = str(tmp_path / "x.zarr")
    assert cli(["record", *argv, "--out", out]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not os.path.exists(out)


def test_optimizer_file_of_another_task_is_refused(opt_file, tmp_path, capsys):
    """record and compare resolve optimizers alike (lopt_trace.optimizers.sources): a file
    meta-trained on another task is refused in one line that says what to pass instead."""
    from lopt_trace.compare import resolve

    out = str(tmp_path / "r.zarr")
    assert cli(["record", "--task", "rosenbrock", "--optimizer", opt_file, "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"was meta-trained on {TASK!r}, not 'rosenbrock'" in err and "--task rosenbrock" in err
    assert len(err.strip().splitlines()) == 1 and not os.path.exists(out)
    with pytest.raises(UserError, match="meta-trained on"):
        resolve("rosenbrock", ["learned"], learned=opt_file)


def test_learned_without_bundled_optimizer_says_how_to_train(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bundled, "optimizer_path", lambda task, variant="learned": tmp_path / "none.zarr")
    for spec in ("learned", "learned-warm"):
        assert main(["record", "--task", TASK, "--optimizer", spec, "--out", str(tmp_path / "o.zarr")]) == 2
        err = capsys.readouterr().err
        assert f"no {spec} optimizer is bundled" in err
        assert f"lopt-trace train --task {TASK} --out FILE" in err and "--optimizer FILE" in err
        assert len(err.strip().splitlines()) == 1


def test_existing_store_left_untouched(recorded, opt_file, capsys):
    before = checksum(recorded)
    base = ["record", "--task", TASK, "--out", recorded]
    cases = [
        (base + ["--optimizer", "sgd"], "already exists"),
        (base + ["--optimizer", "adamw", "--overwrite"], "unknown optimizer"),
        (base + ["--optimizer", "sgd", "--overwrite", "--runs", "0"], "positive integer"),
        # resume with other settings than the store was recorded with
        (base + ["--optimizer", opt_file, "--optimizer", "momentum", "--runs", "3", "--steps", "11",
                 "--params", "2", "--every", "3", "--resume"], "other settings (steps"),
    ]
    for argv, message in cases:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert checksum(recorded) == before
    # the same options resume a finished store without changing it
    same = base + ["--optimizer", opt_file, "--optimizer", "momentum", "--runs", "3", "--steps", "10",
                   "--params", "2", "--every", "3", "--resume"]
    assert main(same) == 0
    assert checksum(recorded) == before


@pytest.mark.slow
def test_mnist_smoke(tmp_path, capsys):
    out = str(tmp_path / "m.zarr")
    assert main(["record", "--task", "mnist", "--optimizer", "adam", "--runs", "2", "--steps", "8",
                 "--params", "4", "--out", out]) == 0
    ds = open_store(out)["runs/adam"].to_dataset()
    assert ds.sizes["param"] == 4 * 4 + 4 * 4 and ds.sizes["tensor"] == 8
    assert ds["run_complete"].values.all() and np.isfinite(ds["loss"].values).all()
    assert ds["gradient_hist"].values.sum() == 2 * 8 * get_task("mnist").num_params
