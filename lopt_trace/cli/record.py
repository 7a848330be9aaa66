"""``lopt-trace record``: run test optimizations and stream their dynamics into a Zarr store."""

from __future__ import annotations

import argparse
import sys
import textwrap

from lopt_trace.cli import nonnegative_int, output_path, positive_int, task_name
from lopt_trace.defaults import DEFAULT_OPTIMIZERS, DEFAULT_PARAMS, DEFAULT_RUNS
from lopt_trace.doc_numbers import record_cost_text
from lopt_trace.provenance import command_line

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


def params_arg(text: str):
    """argparse type for ``--params``: a positive integer or ``all``."""
    if text == "all":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None


def keep_bits_arg(text: str) -> int:
    """argparse type for ``--keep-bits``: an integer (its range, which depends on --dtype, is
    checked with the other settings, in one line naming it)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer (1 to 23 for float32, 1 to 10 for "
                                         f"float16), got {text!r}") from None


def _wrap(text: str) -> str:
    return "\n\n".join(textwrap.fill(par, 90) for par in text.split("\n\n"))


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="record optimizer dynamics on held-out test problems into a Zarr store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrap(
            "Run held-out test problems with one or more optimizers and stream each optimizer's "
            "state, gradient, update and loss, per parameter, tensor and step, into one Zarr store "
            "(an xarray DataTree; schema in docs/store.md).\n\n"
            + record_cost_text()),
        epilog="Examples:\n"
               "  lopt-trace record --task mnist\n"
               "  lopt-trace record --task two_moons --optimizer adam --optimizer my-opt.zarr --runs 8\n"
               "  lopt-trace record --task linear_regression --params all --out memory://lr.zarr")
    p.add_argument("--task", required=True, type=task_name, help="task name (see `lopt-trace tasks`)")
    p.add_argument("--optimizer", action="append", default=None, metavar="SPEC",
                   help="learned (the bundled optimizer meta-trained from random weights), learned-warm "
                        "(the bundled warm-started one, two_moons and mnist), an optimizer file, or sgd, momentum, "
                        "rmsprop, adam (tuned hyperparameters when bundled, else defaults), or an optax "
                        "transform: optax:lion, \"optax:adabelief(learning_rate=1e-3,b1=0.9)\" "
                        "(docs/optimizers.md); repeat to "
                        f"record several (default: {' '.join(DEFAULT_OPTIMIZERS)})")
    p.add_argument("--runs", type=positive_int, default=DEFAULT_RUNS,
                   help=f"held-out test problems per optimizer (default {DEFAULT_RUNS})")
    p.add_argument("--steps", type=positive_int, default=None, help="inner steps K (default: the task's)")
    p.add_argument("--params", type=params_arg, default=DEFAULT_PARAMS, metavar="N|all",
                   help=f"parameters kept per tensor, evenly spaced (default {DEFAULT_PARAMS}); all keeps every one")
    p.add_argument("--every", type=positive_int, default=1,
                   help="keep every E-th step for the per-parameter arrays (default 1; losses are kept every step)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the per-parameter arrays (default float32; float16 halves the size)")
    p.add_argument("--keep-bits", type=keep_bits_arg, default=None, metavar="N",
                   help="lossy: round state, gradient and update to N mantissa bits when written (1-23 for "
                        "float32, 1-10 for float16; zarr's numcodecs.bitround codec, so compression shrinks the store "
                        "more; relative error at most 2^-(N+1)); losses, means and histograms stay exact "
                        "(default: every bit kept)")
    p.add_argument("--out", default=None, type=output_path, help="store path or fsspec URL (default ./<task>.zarr)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace an existing store")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted store (same options): finished runs are kept")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="base of the held-out test seeds (default 0: seeds 1000000000, ...)")
    return p


def run(args) -> int:
    from lopt_trace.recorder import RecordConfig, record, resolve_optimizers
    from lopt_trace.tasks import get_task

    cfg = RecordConfig(runs=args.runs, steps=args.steps, params=args.params, every=args.every,
                       dtype=args.dtype, seed=args.seed, keep_bits=args.keep_bits)
    cfg.validate()
    task = get_task(args.task, **({"steps": args.steps} if args.steps else {}))
    entries = resolve_optimizers(args.task, args.optimizer)
    out = args.out or f"{args.task}.zarr"
    try:
        result = record(task, entries, cfg, out, overwrite=args.overwrite, resume=args.resume,
                        progress=True, command=command_line())
    except KeyboardInterrupt:
        sys.stderr.write(f"finished runs are kept in {out}; continue with the same command and --resume\n")
        raise
    print(result.summary())
    return 0
