"""``lopt-trace report STORE --out report.html [--png DIR]``: the paper's figures for a store, as one
self-contained HTML page (and PNGs)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lopt_trace.cli import output_path
from lopt_trace.errors import UserError

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="write an HTML report with the paper's figures for a store",
        description="Write a self-contained HTML page (Bokeh inlined, opens offline) with analogues "
                    "of Figs. 1 and 3-7 of the paper for STORE, each with its caption and key "
                    "numbers. Missing /analysis/* results are computed and written into the store "
                    "first, unless --no-compute is given.")
    p.add_argument("store", help="path or URL of a store written by `lopt-trace record`")
    p.add_argument("--out", default="report.html", type=output_path, help="HTML file to write (default report.html)")
    p.add_argument("--png", metavar="DIR", default=None, type=output_path,
                   help="also write each figure as DIR/figN.png (needs chromium and chromedriver: "
                        "`apt-get install chromium chromium-driver`)")
    p.add_argument("--no-compute", action="store_true",
                   help="do not run missing recipes; their figures say which command to run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def run(args) -> int:
    _check_replaceable(args.out, args.overwrite)  # before the heavy imports
    from lopt_trace.report import write_report

    started = time.perf_counter()
    result = write_report(args.store, args.out, png_dir=args.png, compute=not args.no_compute,
                          overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(f"lopt-trace report: wrote {result.path} ({len(result.figures)} figures, "
          f"{result.size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    for fig in result.figures:
        state = "ok" if fig.ok else f"missing: {fig.problem}"
        print(f"  {fig.key}: {fig.title} [{state}]")
    for png in result.pngs:
        print(f"  png: {png}")
    return 0


def _check_replaceable(out, overwrite: bool) -> None:
    """--overwrite replaces only a report lopt-trace wrote (issue #14), never another file."""
    path = Path(out)
    if path.is_dir():
        raise UserError(f"{out} is a folder; --out must be an HTML file")
    if not (overwrite and path.exists()):
        return
    with open(path, "rb") as f:
        head = f.read(65536)
    if not (head.startswith(b"<!DOCTYPE html>") and b"section.figure" in head):
        raise UserError(f"refusing to overwrite {out}: it is a file of {path.stat().st_size} bytes "
                        "that is not a report written by lopt-trace; move it away or choose another --out")
