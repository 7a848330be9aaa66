"""The ``lopt-trace`` command. Each subcommand lives in its own module with ``add_parser`` and
``run``; user errors become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from lopt_trace.errors import UserError

#: subcommand name -> module under lopt_trace.cli
COMMANDS = {
    "tasks": "tasks",
    "train": "train",
    "record": "record", "info": "info",
    "dashboard": "dashboard",
    "report": "report",
    "tune": "tune",
    "compare": "compare",
    "analyze": "analyze",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too; keep it short)
        sys.stderr.write(f"lopt-trace: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from lopt_trace import __version__

    parser = _Parser(prog="lopt-trace", description="Meta-train learned optimizers, record their "
                     "dynamics into labeled Zarr stores, and take them apart.")
    parser.add_argument("--version", action="version", version=f"lopt-trace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"lopt_trace.cli.{module}")
        p = mod.add_parser(sub, name)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        sys.stderr.write(f"lopt-trace {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"lopt-trace {args.command}: interrupted\n")
        return 130


def bounded_int(low: int, high: int | None = None, what: str = "an integer"):
    """An argparse type for an integer in [low, high] (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


#: argparse type for a positive integer
positive_int = bounded_int(1, what="a positive integer")
#: argparse type for a non-negative integer
nonnegative_int = bounded_int(0, what="a non-negative integer")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """argparse type for a number in [0, 1] (a decay)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def task_name(text: str) -> str:
    """argparse type for a registered task name."""
    from lopt_trace.tasks import TASKS

    if text not in TASKS:
        raise argparse.ArgumentTypeError(f"unknown task {text!r}; choose one of: {', '.join(TASKS)}")
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
