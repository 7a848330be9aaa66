"""Fault injection (issue #14): lost, truncated and garbled files of a store; --overwrite on
folders lopt-trace did not make; two writers on one --out; filesystem errors; bad lock files.

Every CLI failure must be exactly one line on stderr, no traceback, and a non-zero exit code.

Filesystem errors are simulated by monkeypatching (the tests run as root, which ignores permission
bits, and a full or read-only filesystem cannot be made without privileges): ``os.open`` raising
``OSError(EACCES)`` / ``OSError(EROFS)`` for paths under the test's folder, and the recorder's
manifest write raising ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import contextlib
from pathlib import Path

import numpy as np
import pytest

from lopt_trace.cli import main
from lopt_trace.errors import UserError
from lopt_trace.manifest import MANIFEST, StoreDamaged, check, read_manifest
from lopt_trace.optimizers import make_optimizer
from lopt_trace.store import StoreLock, lock_path, locked_output, open_store
from lopt_trace.tasks import get_task

STEPS = 8


RUNS = 5  # two run chunks (4 + 1): one can be finished while the other is not

_INTERRUPTED: dict = {}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A tiny finished store: linear regression, SGD and momentum, 5 runs of 8 steps, recorded
    in two goes (stopped after the first run chunk of SGD, then resumed)."""
    from lopt_trace.recorder import OptimizerEntry, RecordConfig, record

    path = tmp_path_factory.mktemp("hardening") / "lr.zarr"
    opts = {"sgd": (make_optimizer("sgd"), {"learning_rate": np.float32(0.1)}),
            "momentum": (make_optimizer("momentum"),
                         {"learning_rate": np.float32(0.05), "beta": np.float32(0.8)})}
    entries = [OptimizerEntry(name, opt, theta, "test", name) for name, (opt, theta) in opts.items()]
    task, cfg = get_task("linear_regression", steps=STEPS), RecordConfig(runs=RUNS, params=None)
    record(task, entries, cfg, str(path), progress=False, stop_after=1)
    _INTERRUPTED["manifest"] = read_manifest(path)
    _INTERRUPTED["check"] = check(path, full=True)
    record(task, entries, cfg, str(path), progress=False, resume=True)
    return path


@pytest.fixture
def store(recorded, tmp_path):
    """A private copy of the recorded store, free to damage."""
    path = tmp_path / "copy.zarr"
    shutil.copytree(recorded, path)
    return path


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str) -> str:
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tree_bytes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the manifest ----------------------------------------------------------------------------------
def test_interrupted_recording_lists_only_finished_run_chunks(recorded):
    man = _INTERRUPTED["manifest"]
    assert man["complete"] is False and _INTERRUPTED["check"].ok
    chunks = {k for k in man["files"] if "/c/" in k and k.split("/")[2] in ("loss", "state")}
    # SGD's runs 0-3 (run chunk 0) are finished; its run 4 and all of momentum are not
    assert chunks and all(k.startswith("runs/sgd/") and k.split("/c/")[1].startswith("0/")
                          for k in chunks)
    assert "runs/sgd/run_complete/c/0" not in man["files"]  # holds all 5 runs' flags: not final
    assert "runs/momentum/theta/learning_rate/c" in man["files"]  # θ is final from the start


def test_manifest_covers_every_recorded_file(recorded, capsys):
    man = read_manifest(recorded)
    assert man is not None and man["complete"] is True and man["checksum"] == "crc32"
    on_disk = {str(p.relative_to(recorded)) for p in recorded.rglob("*")
               if p.is_file() and p.parts[len(recorded.parts)] in ("runs", "meta_train")}
    assert set(man["files"]) == on_disk
    size, _ = man["files"]["runs/sgd/loss/c/0/0"]
    assert size == (recorded / "runs/sgd/loss/c/0/0").stat().st_size
    assert check(recorded, full=True).ok
    code, out, err = _cli(capsys, "verify", recorded)
    assert code == 0 and "intact" in out and err == ""
    code, out, _ = _cli(capsys, "info", recorded)
    assert code == 0 and "all present at their recorded sizes" in out


@pytest.mark.parametrize("variable,chunk", [("loss", "c/0/0"), ("state", "c/0/0/0/0")])
def test_deleted_chunk_is_reported_and_refused(store, variable, chunk, capsys, tmp_path):
    # a result computed while the store was intact
    code, _, _ = _cli(capsys, "analyze", "performance", store)
    assert code == 0
    result_before = _tree_bytes(store / "analysis" / "performance")

    (store / "runs" / "momentum" / variable / chunk).unlink()

    code, out, _ = _cli(capsys, "verify", store)
    assert code == 1 and "DAMAGED" in out
    lines = [line.strip() for line in out.splitlines()[1:]]
    assert len(lines) == 1 and lines[0].startswith(f"/runs/momentum/{variable}")
    assert "missing" in lines[0] and "runs 0-3" in lines[0] and "steps 0-" in lines[0]

    with pytest.raises(StoreDamaged, match=f"/runs/momentum/{variable}"):
        open_store(store)

    # analyses refuse with one line and leave the stored result as it was
    code, out, err = _cli(capsys, "analyze", "performance", store)
    line = _one_line_error(code, err)
    assert "is damaged" in line and f"runs/momentum/{variable}/{chunk}" in line
    assert _tree_bytes(store / "analysis" / "performance") == result_before

    from lopt_trace.analysis.results import run_recipe

    with pytest.raises(StoreDamaged):
        run_recipe(store, "probe", "1", lambda tree: tree["runs/sgd"].to_dataset()[["loss"]], {})
    assert not (store / "analysis" / "probe").exists()

    code, out, _ = _cli(capsys, "info", store)
    assert code == 1 and "integrity DAMAGED" in out


def test_report_does_not_mark_a_damaged_store_ok(store, tmp_path):
    from lopt_trace.report import write_report

    (store / "runs" / "sgd" / "loss" / "c" / "0" / "0").unlink()
    out = tmp_path / "report.html"
    with pytest.raises(UserError, match="is damaged"):
        write_report(store, out, compute=False)
    assert not out.exists()


def test_truncated_chunk_names_the_file(store, capsys):
    _truncate(store / "runs" / "sgd" / "state" / "c" / "0" / "0" / "0" / "0")
    code, out, err = _cli(capsys, "analyze", "performance", store)
    line = _one_line_error(code, err)
    assert "runs/sgd/state/c/0/0/0/0" in line and "truncated" in line
    code, out, _ = _cli(capsys, "verify", store)
    assert code == 1 and "/runs/sgd/state  truncated: runs 0-3, steps 0-" in out
    assert not (store / "analysis" / "performance").exists()


def test_changed_in_place_is_caught_by_verify_and_before_a_result_is_written(store, capsys):
    path = store / "runs" / "sgd" / "loss" / "c" / "0" / "0"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(data))
    assert check(store).ok                      # the cheap check sees the size only
    assert not check(store, full=True).ok       # the checksum differs
    code, out, _ = _cli(capsys, "verify", store)
    assert code == 1 and "/runs/sgd/loss  changed" in out
    code, _, err = _cli(capsys, "analyze", "performance", store)
    _one_line_error(code, err)
    assert not (store / "analysis" / "performance").exists()


def test_store_without_manifest_still_opens_and_truncation_names_the_file(store, capsys):
    (store / MANIFEST).unlink()
    open_store(store)  # no manifest: nothing to compare with, still opens
    code, out, _ = _cli(capsys, "info", store)
    assert code == 0 and "no manifest" in out
    code, out, _ = _cli(capsys, "verify", store)
    assert code == 0 and "manifest is missing" in out

    _truncate(store / "runs" / "momentum" / "loss" / "c" / "0" / "0")
    code, _, err = _cli(capsys, "analyze", "performance", store)
    line = _one_line_error(code, err)
    assert "runs/momentum/loss/c/0/0" in line and "cannot be decoded" in line
    code, out, _ = _cli(capsys, "verify", store)
    assert code == 1 and "/runs/momentum/loss  undecodable" in out


def test_one_changed_byte_without_manifest_fails_to_decode(store, capsys):
    """Every chunk carries a CRC32C (lopt_trace.store.zarr_io.COMPRESSORS): a flipped byte in the
    middle of a chunk is refused on read even when no manifest is there to compare with."""
    (store / MANIFEST).unlink()
    chunk = store / "runs" / "momentum" / "loss" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    code, _, err = _cli(capsys, "analyze", "performance", store)
    line = _one_line_error(code, err)
    assert "runs/momentum/loss/c/0/0" in line and "cannot be decoded" in line and "checksum" in line.lower()
    assert not (store / "analysis" / "performance").exists()


@pytest.mark.parametrize("where", ["zarr.json", "runs/sgd/zarr.json"])
def test_garbage_metadata_names_the_file(store, where, capsys):
    (store / where).write_text("{ this is not json")
    code, out, _ = _cli(capsys, "verify", store)
    assert code == 1 and ("unreadable" in out or "changed" in out)
    if where == "zarr.json":  # the root: nothing opens
        code, _, err = _cli(capsys, "info", store)
        line = _one_line_error(code, err)
        assert f"{store}/zarr.json is damaged" in line
    else:  # covered by the manifest
        with pytest.raises(StoreDamaged, match="runs/sgd"):
            open_store(store)


def test_garbage_manifest_is_one_line(store, capsys):
    (store / MANIFEST).write_text("garbage")
    code, _, err = _cli(capsys, "analyze", "performance", store)
    line = _one_line_error(code, err)
    assert MANIFEST in line and "damaged" in line


# -- --overwrite -----------------------------------------------------------------------------------
@pytest.fixture
def foreign(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("years of work")
    (folder / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                  "attributes": {"title": "someone else's"}}))
    return folder


def test_overwrite_refuses_a_foreign_folder(foreign, capsys):
    before = _tree_bytes(foreign)
    code, _, err = _cli(capsys, "record", "--task", "linear_regression", "--optimizer", "sgd",
                        "--steps", "4", "--runs", "1", "--out", foreign, "--overwrite")
    line = _one_line_error(code, err)
    assert "refusing to overwrite" in line and "chapter1.tex" in line
    assert _tree_bytes(foreign) == before

    import xarray as xr

    from lopt_trace.metatrain import check_output
    from lopt_trace.zarr_io import write_tree

    with pytest.raises(UserError, match="refusing to overwrite"):
        write_tree(xr.DataTree(), foreign, overwrite=True)      # tune --out, compare --save
    with pytest.raises(UserError, match="refusing to overwrite"):
        check_output(foreign, resume=False, overwrite=True)    # train --out, before training
    plain = foreign / "chapter1.tex"
    with pytest.raises(UserError, match="a file of"):
        write_tree(xr.DataTree(), plain, overwrite=True)
    assert _tree_bytes(foreign) == before


def test_overwrite_replaces_what_lopt_trace_made(tmp_path, recorded):
    from lopt_trace.optimizers.io import load_optimizer, save_optimizer
    from lopt_trace.zarr_io import check_replaceable, made_by_lopt_trace

    opt = make_optimizer("sgd")
    path = tmp_path / "opt.zarr"
    save_optimizer(path, opt, {"learning_rate": np.float32(0.1)})
    save_optimizer(path, opt, {"learning_rate": np.float32(0.2)}, overwrite=True)
    assert float(load_optimizer(path).theta["learning_rate"]) == pytest.approx(0.2)
    assert made_by_lopt_trace(path) == "optimizer file"
    assert made_by_lopt_trace(recorded) == "store"
    check_replaceable(recorded)  # does not raise
    empty = tmp_path / "empty"
    empty.mkdir()
    check_replaceable(empty)  # nothing to lose


def test_report_overwrite_refuses_a_foreign_file(tmp_path, capsys, recorded):
    notes = tmp_path / "notes.html"
    notes.write_text("<html>my notes</html>")
    code, _, err = _cli(capsys, "report", recorded, "--out", notes, "--overwrite", "--no-compute")
    line = _one_line_error(code, err)
    assert "refusing to overwrite" in line
    assert notes.read_text() == "<html>my notes</html>"


# -- one writer per output ---------------------------------------------------------------------------
_HOLD = """
import sys, time
from lopt_trace.store import StoreLock
lock = StoreLock(sys.argv[1], writer="training run").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_second_train_on_one_out_is_refused(tmp_path, capsys):
    out = tmp_path / "opt.zarr"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = _cli(capsys, "train", "--task", "linear_regression", "--iterations", "1",
                            "--out", out)
        line = _one_line_error(code, err)
        assert "being written by another training run" in line and f"pid {holder.pid}" in line
        # the first is unaffected: its lock is still its own
        assert json.loads(Path(lock_path(out)).read_text())["pid"] == holder.pid
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_train_lock_takes_over_stale_and_allows_no_lock(tmp_path, capsys):
    calls = []

    @locked_output("training run")
    def fake_train(task, out, resume=False):
        calls.append(json.loads(Path(lock_path(out)).read_text())["pid"])
        return "done"

    out = tmp_path / "resumed.zarr"
    # a checkpoint written before the lock existed: no lock file at all
    assert fake_train(None, out, resume=True) == "done"
    assert calls == [os.getpid()] and not os.path.exists(lock_path(out))
    # a lock left by a dead process is taken over with a note
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    Path(lock_path(out)).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                "process_created": time.time() - 5}))
    assert fake_train(None, out) == "done"
    assert f"took over the stale lock of pid {dead.pid}" in capsys.readouterr().out
    assert not os.path.exists(lock_path(out))


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage"])
def test_empty_or_garbage_lock_is_explained(tmp_path, content):
    out = tmp_path / "s.zarr"
    Path(lock_path(out)).write_bytes(content)
    with pytest.raises(UserError, match="empty or unreadable.*delete .*s.zarr.lock"):
        StoreLock(out).acquire()
    assert Path(lock_path(out)).read_bytes() == content  # left for the user to judge


# -- filesystem errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("err,text", [(errno.EACCES, "permission denied"),
                                      (errno.EROFS, "read-only")])
def test_train_checks_it_can_write_before_training(tmp_path, monkeypatch, capsys, err, text):
    folder = tmp_path / "out"
    folder.mkdir()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & os.O_CREAT:
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    import lopt_trace.metatrain as mt

    started = []
    monkeypatch.setattr(mt.MetaTrainer, "step", lambda *a, **k: started.append(1))
    code, _, err_text = _cli(capsys, "train", "--task", "linear_regression", "--iterations", "1",
                             "--out", folder / "opt.zarr")
    line = _one_line_error(code, err_text)
    assert code == 1 and str(folder) in line and text in line
    assert not started


def test_full_disk_while_recording_is_one_line(tmp_path, monkeypatch, capsys):
    import lopt_trace.recorder as rec

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "lr.zarr" / MANIFEST))

    monkeypatch.setattr(rec, "update_manifest", full)
    code, _, err = _cli(capsys, "record", "--task", "linear_regression", "--optimizer", "sgd",
                        "--steps", "4", "--runs", "1", "--out", tmp_path / "lr.zarr")
    line = _one_line_error(code, err)
    assert code == 1 and "no space left" in line and "--resume" in line and MANIFEST in line
    assert not os.path.exists(lock_path(tmp_path / "lr.zarr"))  # the lock was released


@pytest.mark.parametrize("url,text", [("s3://bucket/x.zarr", "s3fs"),
                                      ("nosuchproto://x.zarr", "unknown URL protocol")])
def test_url_errors_are_one_line(url, text, capsys, monkeypatch):
    import importlib
    import sys

    if text == "s3fs":  # s3fs is a test extra (the remote-store test); hide it as a user without it
        monkeypatch.setitem(sys.modules, "s3fs", None)
        monkeypatch.delitem(importlib.import_module("fsspec.registry")._registry, "s3", raising=False)
    for argv in (["info", url], ["verify", url], ["analyze", "performance", url]):
        code, _, err = _cli(capsys, *argv)
        line = _one_line_error(code, err)
        assert text in line and url in line


def test_os_error_message_names_path_and_cause():
    from lopt_trace.cli import os_error_message

    assert os_error_message(OSError(errno.ENOSPC, "No space left on device", "/x/y")).startswith(
        "/x/y: no space left")
    assert "read-only" in os_error_message(OSError(errno.EROFS, "Read-only file system"), ["/z"])


# -- explicit inputs ---------------------------------------------------------------------------------
def test_empty_out_and_missing_explicit_file_are_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["record", "--task", "linear_regression", "--out", ""])
    assert exc.value.code == 2
    assert "empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--task", "linear_regression", "--tuned", str(tmp_path / "nope.json")])
    assert "no file at" in capsys.readouterr().err

    from lopt_trace.recorder import RecordConfig, record, resolve_optimizers
    from lopt_trace.tune import tuned_theta

    task = get_task("linear_regression", steps=4)
    with pytest.raises(UserError, match="empty"):
        record(task, resolve_optimizers(task.name, ["sgd"]), RecordConfig(runs=1), "  ")
    with pytest.raises(UserError, match="no tuned-hyperparameter file"):
        tuned_theta("linear_regression", "adam", tmp_path / "nope.json")


@pytest.mark.parametrize("option,text", [("n_starts=-5", "expected an integer >= 1"),
                                         ("n_starts=2.5", "expected an integer"),
                                         ("tol=nan", "expected a finite number"),
                                         ("tol=-1e-9", "expected a number >= 0"),
                                         ("forward_steps=True", "expected an integer")])
def test_analysis_options_are_checked_before_anything_runs(recorded, option, text, capsys):
    before = sorted(p.relative_to(recorded) for p in Path(recorded).rglob("*"))
    assert main(["analyze", "momentum", str(recorded), "-p", option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err and option.split("=")[0] in err
    assert sorted(p.relative_to(recorded) for p in Path(recorded).rglob("*")) == before  # nothing written


@pytest.mark.parametrize("argv,text", [
    (["train", "--task", "two_moons", "--l2", "nan"], "--l2: expected a finite number >= 0"),
    (["train", "--task", "two_moons", "--l2", "-1"], "--l2: expected a finite number >= 0"),
    (["train", "--task", "two_moons", "--lr", "inf"], "--lr: expected a positive number"),
    (["train", "--task", "two_moons", "--warm-start", "sign-momentum", "--warm-start-lr-range", "1", "0.1"],
     "LOW (1) must not exceed HIGH (0.1)"),
    (["tune", "--task", "two_moons", "--optimizer", "sgd", "--lr-range", "1", "0.1"],
     "LOW (1.0) must not exceed HIGH (0.1)"),
])
def test_floats_are_finite_and_ranges_ordered(tmp_path, monkeypatch, capsys, argv, text):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if "--l2" in argv or "--lr" in argv else _no_raise():
        assert main(argv) == 2
    assert text in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("parse,good,bad", [
    ("positive_float", ["1e-3", "2"], ["0", "-1", "nan", "inf", "x"]),
    ("nonnegative_float", ["0", "2"], ["-0.1", "nan", "inf", "-inf"]),
    ("unit_interval", ["0", "0.5", "1"], ["1.01", "-0.1", "nan", "x"]),
])
def test_float_argument_types_accept_their_range_only(parse, good, bad):
    import argparse

    from lopt_trace import cli

    fn = getattr(cli, parse)
    assert [fn(t) for t in good] == [float(t) for t in good]
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got {text!r}"):
            fn(text)


def _no_raise():
    return contextlib.nullcontext()


def test_wrong_schema_version_is_refused_alike_by_every_command(recorded, tmp_path, capsys):
    """Issue #14 §4: one validation for every command; report and dashboard used to accept it."""
    store = tmp_path / "v999.zarr"
    shutil.copytree(recorded, store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 999
    (store / "zarr.json").write_text(json.dumps(meta))
    for argv in (["info", str(store)], ["analyze", "performance", str(store), "--no-write"],
                 ["report", str(store), "--out", str(tmp_path / "r.html")], ["verify", str(store)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "schema version 999" in err, (argv, err)
    assert not (tmp_path / "r.html").exists()
    from lopt_trace.dashboard.data import StoreView

    with pytest.raises(UserError, match="schema version 999"):
        StoreView(str(store)).tree


def test_record_estimates_its_size_and_refuses_what_cannot_fit(tmp_path, monkeypatch, capsys):
    """Issue #14 §6: the store size and memory are estimated before any work, shown in record's
    first line, and a recording that cannot fit is refused with the estimate in the message."""
    from collections import namedtuple

    import psutil

    from lopt_trace.recorder import estimate, make_layout, resolve_optimizers
    from lopt_trace.recorder import RecordConfig as Cfg
    from lopt_trace.store import size_on_disk

    out = tmp_path / "tm.zarr"
    assert main(["record", "--task", "two_moons", "--optimizer", "sgd", "--optimizer", "momentum", "--runs", "2",
                 "--steps", "30", "--params", "all", "--out", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("record two_moons: 2 optimizer(s) × 2 runs × 30 steps") and "store about" in first
    task = get_task("two_moons", steps=30)
    entries = resolve_optimizers("two_moons", ["sgd", "momentum"])
    est = estimate(make_layout(task, Cfg(runs=2, steps=30, params=None), entries), entries)
    assert 0.5 < est.store / size_on_disk(out) < 2  # the right size, before anything was written

    huge = tmp_path / "huge.zarr"
    assert main(["record", "--task", "mnist", "--runs", "100000", "--params", "all", "--out", str(huge)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the store needs about" in err and "TB" in err and not huge.exists()
    mem = namedtuple("mem", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: mem(1000))
    assert main(["record", "--task", "linear_regression", "--out", str(tmp_path / "m.zarr")]) == 2
    err = capsys.readouterr().err
    assert "of memory and 1.0 kB is available" in err and not (tmp_path / "m.zarr").exists()
