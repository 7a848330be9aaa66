"""``lopt-trace analyze``: run an analysis recipe (or all of them) on a store."""

from __future__ import annotations

import argparse
import ast
import contextlib
import inspect
import math
import numbers
import sys
import time

from lopt_trace import recipes_loader
from lopt_trace.errors import UserError

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


def _param(text: str):
    """argparse type for ``KEY=VALUE``; VALUE is a Python literal when it parses as one."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="analyse a store with a recipe (momentum, clipping, ...) or all of them",
        description="Run an analysis recipe on a recorded store, write its result into the store "
                    "under /analysis/<recipe> (replacing an earlier one) and print a one-line "
                    f"summary. Recipes: {', '.join(recipes_loader.ORDER)}, or 'all' (every recipe but "
                    f"{', '.join(recipes_loader.ON_DEMAND)}, which runs new problems: `lopt-trace distill`). See "
                    "docs/analysis.md.")
    p.add_argument("recipe", metavar="RECIPE", help="recipe name, or 'all'")
    p.add_argument("store", metavar="STORE", help="path or URL of a store from `lopt-trace record`")
    p.add_argument("--optimizer", default=None,
                   help="optimizer group to analyse (default: 'learned' if recorded, else the first); "
                        "ignored by 'performance', which compares all of them")
    p.add_argument("-p", "--param", dest="params", action="append", type=_param, default=[],
                   metavar="KEY=VALUE", help="a recipe option, e.g. -p n_starts=512 (repeatable)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the Dask computations on this dask.distributed scheduler "
                        "(e.g. tcp://host:8786); needs the [distributed] extra")
    p.add_argument("--no-write", action="store_true", help="print the summary without writing to the store")
    p.add_argument("--timing", action="store_true", help="also print each recipe's time and peak memory")
    return p


def _accepted(module) -> set[str]:
    sig = inspect.signature(module.compute)
    return {n for n, prm in list(sig.parameters.items())[1:]
            if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY)}


def _defaults(module) -> dict:
    return {n: prm.default for n, prm in list(inspect.signature(module.compute).parameters.items())[1:]
            if prm.default is not inspect.Parameter.empty}


def check_param(key: str, value, default) -> str | None:
    """Why ``-p key=value`` is unusable for an option whose default is ``default``, or None.

    The value must have the default's kind: a bool for a switch; an integer for a count, at
    least 1 for ``n_*`` options and at least 0 otherwise; a finite number for a float option, not
    negative where the default is not. Options without a default value are not checked here.
    """
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected True or False"
    if isinstance(default, numbers.Integral):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return "expected an integer"
        low = 1 if key.startswith("n_") else 0
        return None if value >= low else f"expected an integer >= {low}"
    if isinstance(default, numbers.Real):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return "expected a finite number"
        return "expected a number >= 0" if default >= 0 and value < 0 else None
    return None


def _client(address: str):
    try:
        from dask.distributed import Client
    except ImportError:
        raise UserError("--scheduler needs dask.distributed: pip install 'lopt-trace[distributed]'") from None
    try:
        return Client(address, timeout="10s", set_as_default=True)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"cannot connect to the Dask scheduler at {address} ({type(exc).__name__}: {exc})") from None


def _peak_rss_mb() -> float:
    import resource  # Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(args) -> int:
    from lopt_trace.analysis import open_for_analysis

    names = recipes_loader.for_all() if args.recipe == "all" else [args.recipe]
    modules = [recipes_loader.load(n) for n in names]
    params = dict(args.params)
    for key in params:
        if not any(key in _accepted(m) for m in modules):
            accepted = sorted(set().union(*(_accepted(m) for m in modules)) - {"optimizer"})
            raise UserError(f"unknown option {key!r} for {args.recipe}; options: {', '.join(accepted)}")
        for m in modules:
            default = _defaults(m).get(key)
            why = check_param(key, params[key], default) if key in _accepted(m) else None
            if why:
                raise UserError(f"-p {key}={params[key]!r}: {why} (default {default!r})")
    tree = open_for_analysis(args.store)  # opened (and validated) once for every recipe
    client = _client(args.scheduler) if args.scheduler else None
    with client if client is not None else contextlib.nullcontext():
        for name, module in zip(names, modules):
            accepted = _accepted(module)
            kw = {k: v for k, v in params.items() if k in accepted}
            if args.optimizer is not None and "optimizer" in accepted:
                kw["optimizer"] = args.optimizer
            skip = getattr(module, "not_applicable", None)  # e.g. emergence without a history
            reason = skip(tree, kw.get("optimizer")) if skip is not None and args.recipe == "all" else None
            if reason:
                print(f"{name}: skipped: {reason}", file=sys.stderr, flush=True)
                continue
            start = time.perf_counter()
            ds = module.compute(tree, **kw)
            if not args.no_write:
                from lopt_trace.analysis.results import write_result

                ds = write_result(args.store, name, ds, version=getattr(module, "VERSION", "1"), parameters=kw)
            print(module.summary(ds), flush=True)
            if args.timing:
                print(f"  ({name}: {time.perf_counter() - start:.1f} s, peak memory "
                      f"{_peak_rss_mb():.0f} MB)", flush=True)
    return 0
