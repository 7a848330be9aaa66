"""Property-based sweep over every subcommand's arguments (issue #14): whatever bad input is given,
the command exits 1 or 2 with exactly one line on stderr, no traceback, and leaves every file and
folder as it was.

Two kinds of bad input: (1) an option value that the option's own argparse type rejects, drawn
from a pool of hostile texts and checked against the type, with the command's other required
arguments valid; (2) input that passes parsing and must be refused by the command itself (a
missing store, a folder that is not a store, an unknown recipe or optimizer, a foreign folder as
``--out --overwrite``). Also: meta-training that cannot fit in memory is refused before anything
is allocated.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lopt_trace.cli import build_parser, main

HOSTILE = ["0", "-1", "-7", "1.5", "x", "", " ", "nan", "inf", "-inf", "1e400", "-0.5", "2,3",
           "../../etc", "\u00e9\u00e8", "0x10", "10**9"]

#: required arguments that make each command's parse valid but for the option under test
REQUIRED = {
    "train": ["--task", "two_moons"],
    "record": ["--task", "two_moons"],
    "tune": ["--task", "two_moons"],
    "compare": ["--task", "two_moons"],
    "info": ["STORE"], "verify": ["STORE"], "dashboard": ["STORE"], "distill": ["STORE"],
    "report": ["STORE"], "analyze": ["momentum", "STORE"],
}


def _typed_options() -> list[tuple[str, str, object]]:
    """``(command, option, type)`` for every option with an argparse type."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and callable(action.type) and action.nargs in (None, "?"):
                out.append((name, action.option_strings[-1], action.type))
    return out


TYPED = _typed_options()


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A folder with things a bad command must not touch: a foreign folder and a file."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "foreign").mkdir()
    (root / "foreign" / "thesis.tex").write_text("years of work\n")
    (root / "notes.txt").write_text("keep me\n")
    return root


def _run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    return code, err


def _assert_refused(argv, code, err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (1, 2), (argv, code, err)
    assert len(lines) == 1, (argv, err)
    assert "Traceback" not in err and "error" in lines[0], (argv, err)


def test_the_sweep_covers_every_command():
    assert {c for c, _, _ in TYPED} >= {"train", "record", "tune", "compare", "analyze", "dashboard"}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(TYPED), text=st.sampled_from(HOSTILE))
def test_bad_option_values_are_one_line(case, text, sandbox, capsys, monkeypatch):
    command, option, kind = case
    try:
        kind(text)
        assume(False)  # this text is a valid value for this option
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        pass
    monkeypatch.chdir(sandbox)
    before = _snapshot(sandbox)
    store = str(sandbox / "foreign")
    argv = [command] + [store if a == "STORE" else a for a in REQUIRED.get(command, [])] + [option, text]
    code, err = _run(argv, capsys)
    _assert_refused(argv, code, err)
    assert _snapshot(sandbox) == before


SEMANTIC = [
    ["info", "{missing}"], ["verify", "{missing}"], ["report", "{missing}", "--out", "r.html"],
    ["analyze", "momentum", "{missing}"], ["distill", "{missing}"], ["dashboard", "{missing}"],
    ["info", "{foreign}"], ["verify", "{foreign}"], ["analyze", "all", "{foreign}"],
    ["distill", "{foreign}"], ["report", "{foreign}", "--out", "r.html"],
    ["analyze", "no-such-recipe", "{foreign}"],
    ["record", "--task", "two_moons", "--optimizer", "no-such-optimizer", "--out", "s.zarr"],
    ["record", "--task", "two_moons", "--out", "{foreign}", "--overwrite"],
    ["record", "--task", "no_such_task"], ["compare", "--task", "no_such_task"],
    ["compare", "--task", "two_moons", "--optimizer", "no-such-optimizer", "--no-plot"],
    ["train", "--task", "two_moons", "--out", "{foreign}", "--overwrite", "--iterations", "1"],
    ["tune", "--task", "two_moons", "--optimizer", "no-such-optimizer", "--out", "t.zarr"],
    ["tune", "--task", "two_moons", "--out", "{foreign}", "--overwrite", "--samples", "1"],
    ["train", "--task", "two_moons", "--resume", "--out", "{missing}"],
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(SEMANTIC), quiet=st.booleans())
def test_bad_input_that_parses_is_refused_by_the_command(case, quiet, sandbox, capsys, monkeypatch):
    monkeypatch.chdir(sandbox)
    before = _snapshot(sandbox)
    argv = [a.format(missing=str(sandbox / "nothing-here.zarr"), foreign=str(sandbox / "foreign"))
            for a in case]
    if quiet and argv[0] in ("distill", "compare", "tune"):
        argv.append("--no-progress")
    code, err = _run(argv, capsys)
    _assert_refused(argv, code, err)
    assert _snapshot(sandbox) == before
    assert not (sandbox / "s.zarr").exists() and not (sandbox / "t.zarr").exists()


def test_train_that_cannot_fit_in_memory_is_refused_before_it_allocates(tmp_path, capsys):
    out = tmp_path / "big.zarr"
    code, err = _run(["train", "--task", "linear_regression", "--units", "100000", "--iterations", "1",
                      "--out", str(out)], capsys)
    _assert_refused(["train"], code, err)
    assert "units needs at least" in err and "GB" in err
    assert not out.exists() and not os.path.exists(f"{out}.checkpoint")


def test_train_memory_estimate_grows_with_units_batch_and_truncation():
    from lopt_trace.metatrain import MetaTrainConfig
    from lopt_trace.optimizers import LearnedGRU
    from lopt_trace.tasks import get_task
    from lopt_trace.train_memory import estimate, theta_size

    task = get_task("two_moons")
    assert theta_size(LearnedGRU(units=8)) == 3 * (8 * 8 + 2 * 8) + 2 * 8  # U, W, b per gate; h0, readout
    base = estimate(task, LearnedGRU(units=8), MetaTrainConfig(batch=2, truncation=10))
    assert estimate(task, LearnedGRU(units=16), MetaTrainConfig(batch=2, truncation=10)) > base
    assert estimate(task, LearnedGRU(units=8), MetaTrainConfig(batch=4, truncation=10)) > base
    assert estimate(task, LearnedGRU(units=8), MetaTrainConfig(batch=2, truncation=20)) > base
    # at least the inner problems' optimizer state: batch x parameters x units x 4 bytes
    assert base >= 2 * task.num_params * 8 * 4
