"""``lopt-trace compare``: the learned optimizer against the tuned baselines (Fig. 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lopt_trace.cli import existing_file, nonnegative_int, output_path, positive_int, task_name
from lopt_trace.defaults import ALL_OPTIMIZERS
from lopt_trace.errors import UserError
from lopt_trace.provenance import command_line, utc_now, versions

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


def optimizer_name(text: str) -> str:
    if text != "all" and text not in ALL_OPTIMIZERS and not text.startswith("optax:"):
        raise argparse.ArgumentTypeError(
            f"unknown optimizer {text!r}; choose from: {', '.join(ALL_OPTIMIZERS)}, all, optax:NAME")
    return text


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="compare the learned optimizer with the tuned baselines on held-out problems",
        description="Run the bundled learned optimizer and the tuned baselines (data/tuned) on "
                    "held-out problems, print meta-objective and final loss (mean ± sem) per "
                    "optimizer (and whether each tuned baseline's tuning curve reached a plateau), "
                    "and write the Fig. 1 plot (loss curves, mean ± sem, log y), with the baselines' "
                    "tuning curves when their tune stores are available, as HTML.")
    p.add_argument("--task", required=True, type=task_name, help="task name (see `lopt-trace tasks`)")
    p.add_argument("--seeds", type=positive_int, default=64, help="held-out problems (default 64)")
    p.add_argument("--seed-base", type=nonnegative_int, default=0,
                   help="first held-out seed is 1e9 + this (default 0)")
    p.add_argument("--optimizer", type=optimizer_name, nargs="+", default=None, metavar="NAME",
                   help="optimizers to run (learned, sgd, momentum, rmsprop, adam, or all; default: "
                        "learned momentum rmsprop adam, skipping any that is not bundled), or an optax "
                        "transform: optax:lion, \"optax:adabelief(learning_rate=1e-3,b1=0.9)\" "
                        "(docs/optimizers.md)")
    p.add_argument("--learned", default=None, metavar="PATH",
                   help="learned optimizer file to use instead of the bundled one")
    p.add_argument("--tuned", default=None, metavar="JSON", type=existing_file,
                   help="tuned-hyperparameter file to use instead of data/tuned/<task>.json")
    p.add_argument("--untuned", action="store_true",
                   help="use default hyperparameters for baselines that have no tuned entry")
    p.add_argument("--steps", type=positive_int, default=None, help="inner steps (default: the task's)")
    p.add_argument("--out", default=None, metavar="PLOT", type=output_path,
                   help="plot file: .html (default ./<task>-compare.html), or .png for a PNG "
                        "next to the HTML (needs Chromium, chromedriver and selenium)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.add_argument("--tune-store", nargs="+", default=None, metavar="ZARR",
                   help="tune stores (lopt-trace tune) whose tuning curves the plot shows under Fig. 1 "
                        "(default: the store each tuned entry was bundled from, where it exists)")
    p.add_argument("--save", default=None, metavar="ZARR", type=output_path,
                   help="also write the curves and the table to this Zarr store")
    p.add_argument("--reuse", default=None, metavar="ZARR", type=output_path,
                   help="a --save store of an earlier comparison: optimizers it holds with the same "
                        "task, steps, seeds, configuration and θ are not run again (it may also be "
                        "the --save store, with --overwrite, to extend it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plot or --save store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    import xarray as xr

    from lopt_trace.compare import (
        ALL_OPTIMIZERS,
        compare,
        figure,
        format_table,
        margin_lines,
        open_saved,
        resolve,
        reusable_curves,
        save_figure,
        theta_digest,
        tune_stores,
        tuning_figure,
        tuning_status,
    )
    from lopt_trace.tune import tuning_curve
    from lopt_trace.tasks import get_task
    from lopt_trace.zarr_io import check_writable, write_tree

    names, strict = args.optimizer, None
    if names and "all" in names:  # everything that is bundled; skip (with a note) what is not
        names, strict = list(ALL_OPTIMIZERS), False
    elif names:
        names = list(dict.fromkeys(names))
    plot, png = None, False
    if not args.no_plot:
        plot = Path(args.out or f"{args.task}-compare.html")
        if plot.suffix not in (".html", ".png"):
            raise UserError(f"--out must end in .html (or .png), got {plot}")
        png = plot.suffix == ".png"
        plot = plot.with_suffix(".html")
        for target in (plot, plot.with_suffix(".png")) if png else (plot,):
            if target.exists() and not args.overwrite:
                raise UserError(f"{target} already exists; pass --overwrite to replace it, or choose another --out")
        if png:  # before the runs, not after them
            from lopt_trace.report import check_png_export

            check_png_export()
    if args.save:
        check_writable(args.save, args.overwrite)

    task = get_task(args.task, **({"steps": args.steps} if args.steps else {}))
    entries, notes = resolve(args.task, names, learned=args.learned, tuned_file=args.tuned,
                             untuned=args.untuned, strict=strict)
    for note in notes:
        print(f"note: {note}")
    reused = {}
    if args.reuse:
        from lopt_trace.seeds import test_seeds

        reused, reuse_notes = reusable_curves(open_saved(args.reuse), task, entries,
                                              test_seeds(args.seed_base, args.seeds))
        for note in reuse_notes:
            print(f"note: {note}")
        if reused:
            print(f"note: reused the curves of {', '.join(reused)} from {args.reuse} (same task, steps, "
                  "seeds, configuration and θ); not run again")
    curves, summary = compare(task, entries, args.seeds, args.seed_base, progress=not args.no_progress,
                              reused=reused)
    print(f"{args.task}: {task.default_steps} steps, held-out seeds {int(curves.run[0])}..{int(curves.run[-1])}")
    tuning = tuning_status(args.task, entries, args.tuned)
    print(format_table(summary, tuning=tuning))
    for line in margin_lines(summary, curves["loss"]):
        print(line)
    if plot is not None:
        fig = figure(curves)
        searches, tune_notes = tune_stores(args.task, entries, args.tuned, args.tune_store)
        for note in tune_notes:
            print(f"note: {note}")
        if searches:
            import holoviews as hv

            fig = hv.Layout([fig, tuning_figure({k: tuning_curve(ds) for k, ds in searches.items()})]).cols(1)
        written, note = save_figure(fig, plot, title=f"lopt-trace compare {args.task}", png=png)
        print("wrote " + ", ".join(str(p) for p in written))
        if note:
            print(f"note: {note}")
    if args.save:
        attrs = {"task": args.task, "task_config": task.config(), "created": utc_now(),
                 "command": command_line(), "versions": versions(),
                 "seeds": [int(s) for s in curves.run.values],
                 "optimizers": [e.label for e in entries],
                 "optimizer_configs": {e.label: e.optimizer.config() for e in entries},
                 "theta_sha256": {e.label: theta_digest(e.theta) for e in entries},
                 "tuning": tuning}
        tree = xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), "/curves": curves,
                                      "/summary": summary})
        write_tree(tree, args.save, overwrite=args.overwrite)
        print(f"wrote {args.save}")
    return 0
