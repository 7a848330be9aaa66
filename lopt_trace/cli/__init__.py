"""The ``lopt-trace`` command. Each subcommand lives in its own module with ``add_parser`` and
``run``; user errors become one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import errno as errno_mod
import importlib
import shlex
import sys
from pathlib import Path

from lopt_trace import compile_cache
from lopt_trace._version import __version__
from lopt_trace.defaults import TASK_NAMES
from lopt_trace.errors import UserError

# The subcommands' modules import JAX, xarray, zarr and the modules that load them inside their
# functions, never at the top: ``--help`` and argument errors must answer without loading them
# (tests/test_cli_startup.py). Only the standard library and light lopt_trace modules (errors,
# defaults, compile_cache) are imported at module level.

#: subcommand name -> module under lopt_trace.cli
COMMANDS = {
    "tasks": "tasks",
    "train": "train",
    "record": "record", "info": "info", "verify": "verify",
    "dashboard": "dashboard",
    "report": "report",
    "tune": "tune",
    "compare": "compare",
    "analyze": "analyze",
    "distill": "distill",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too; keep it short)
        sys.stderr.write(f"lopt-trace: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
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
    compile_cache.enable()  # a second run in a new process does not compile again
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        return _fail(args, str(exc), 2)
    except KeyboardInterrupt:
        sys.stderr.write(f"lopt-trace {args.command}: interrupted\n")
        return 130
    except OSError as exc:  # the filesystem: full disk, read-only, permissions, ...
        return _fail(args, os_error_message(exc, _paths(args)), 1)
    except Exception as exc:
        message = _environment_message(exc, args)
        if message is None:
            raise  # a bug: keep the traceback
        return _fail(args, message, 1)


def _fail(args, message: str, code: int) -> int:
    text = " ".join(str(message).split())  # one line, whatever the message held
    sys.stderr.write(f"lopt-trace {args.command}: error: {text}\n")
    return code


def _paths(args) -> list[str]:
    """The paths a command was given (``store``, ``--out``, ...), to name in a message."""
    return [str(v) for k in ("store", "out", "save", "png") if (v := getattr(args, k, None))]


#: what an errno means for the user, and what to do about it
_ERRNO_HINTS = {
    "ENOSPC": "no space left on the device; free some space and run the command again (record "
              "and train continue with --resume; what was finished is kept)",
    "EDQUOT": "disk quota exceeded; free some space and run the command again (record and train "
              "continue with --resume)",
    "EROFS": "the filesystem is read-only; choose an --out on a writable filesystem",
    "EACCES": "permission denied; choose a path you may write, or change its permissions",
    "EPERM": "operation not permitted; choose a path you may write, or change its permissions",
    "ENOENT": "no such file or folder",
    "ENOTDIR": "a part of the path is not a folder",
    "EISDIR": "it is a folder, not a file",
}


def os_error_message(exc: OSError, paths=()) -> str:
    """One line for a filesystem error: the path and the cause (and what to do)."""
    name = errno_mod.errorcode.get(exc.errno or -1, "")
    where = exc.filename or (paths[0] if paths else None)
    cause = _ERRNO_HINTS.get(name) or exc.strerror or str(exc) or type(exc).__name__
    if name and name not in _ERRNO_HINTS:
        cause = f"{cause} ({name})"
    return f"{where}: {cause}" if where else cause


def _environment_message(exc: Exception, args) -> str | None:
    """One line for errors that come from the environment or from damaged files, else None."""
    paths = _paths(args)
    if isinstance(exc, ImportError) and "install" in str(exc).lower():
        return f"{paths[0] + ': ' if paths else ''}{exc} (a package this needs is not installed)"
    if isinstance(exc, ValueError) and "protocol not known" in str(exc).lower():
        return f"{paths[0] + ': ' if paths else ''}unknown URL protocol ({exc})"
    store = getattr(args, "store", None)
    if store is not None:
        from lopt_trace.manifest import is_decode_error, undecodable_message  # loads zarr: only here

        if is_decode_error(exc):  # a damaged file, if one is found; else a bug: the traceback
            return undecodable_message(store, exc)
    return None


def print_resume_command(command: str) -> None:
    """After a --time-budget stop: the command line that continues it (this one, without
    --overwrite, with --resume), or a sentence when not run as ``lopt-trace COMMAND``."""
    argv = sys.argv[1:]
    if argv[:1] == [command]:
        argv = [a for a in argv if a != "--overwrite"]
        if "--resume" not in argv:
            argv.append("--resume")
        print(f"continue with: lopt-trace {shlex.join(argv)}")
    else:
        print("continue with the same command and --resume")


def number_type(convert, accept, what: str):
    """An argparse type: ``convert(text)`` (``int`` or ``float``) that ``accept(value)`` allows
    (NaN never is); ``what`` names the expected values in the error."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def bounded_int(low: int, high: int | None = None, what: str = "an integer"):
    """An argparse type for an integer in [low, high] (no upper bound when ``high`` is None)."""
    return number_type(int, lambda v: v >= low and (high is None or v <= high), what)


#: argparse type for a positive integer
positive_int = bounded_int(1, what="a positive integer")
#: argparse type for a non-negative integer
nonnegative_int = bounded_int(0, what="a non-negative integer")


#: argparse type for a finite number > 0 (a learning rate, a scale)
positive_float = number_type(float, lambda v: 0.0 < v < float("inf"), "a positive number")
#: argparse type for a finite number >= 0 (a penalty)
nonnegative_float = number_type(float, lambda v: 0.0 <= v < float("inf"), "a finite number >= 0")
#: argparse type for a number in [0, 1] (a decay)
unit_interval = number_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def output_path(text: str) -> str:
    """argparse type for an output path or URL: not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def existing_file(text: str) -> str:
    """argparse type for an input file given explicitly: it must exist (a missing file is an error,
    not a silent fall-back to a default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file, got an empty string")
    if "://" not in text and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no file at {text}")
    return text


def task_name(text: str) -> str:
    """argparse type for a registered task name."""
    if text not in TASK_NAMES:
        raise argparse.ArgumentTypeError(f"unknown task {text!r}; choose one of: {', '.join(TASK_NAMES)}")
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
