"""``lopt-trace tune``: random search for the baselines' hyperparameters on a task."""

from __future__ import annotations

import argparse

from lopt_trace.cli import nonnegative_int, output_path, positive_float, positive_int, task_name

CHOICES = ("sgd", "momentum", "rmsprop", "adam", "all")


def optimizer_name(text: str) -> str:
    if text not in CHOICES and not text.startswith("optax:"):
        raise argparse.ArgumentTypeError(f"unknown optimizer {text!r}; choose one of: {', '.join(CHOICES)}")
    return text


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="tune a baseline's hyperparameters by random search",
        description="Random search over log-uniform ranges (see docs/tuning.md). Each candidate is "
                    "scored by the meta-objective (mean_k f_k / f_0) averaged over --seeds problems "
                    "from the training seed range; candidates run in vmapped batches. The result "
                    "(dims sample, problem) is written to a Zarr store, one group /tune/<optimizer> "
                    "per optimizer.")
    p.add_argument("--task", required=True, type=task_name, help="task name (see `lopt-trace tasks`)")
    p.add_argument("--optimizer", required=True, type=optimizer_name,
                   help="sgd, momentum, rmsprop, adam, or all; or an optax transform, e.g. "
                        "optax:lion (its float hyperparameters are searched: see docs/optimizers.md)")
    p.add_argument("--samples", type=positive_int, default=2500, help="random candidates per optimizer (default 2500)")
    p.add_argument("--seeds", type=positive_int, default=8, help="problems each candidate is scored on (default 8)")
    p.add_argument("--steps", type=positive_int, default=None, help="inner steps (default: the task's)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="candidates per vmapped call (default: by task size, at most 256)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the candidate sampler (default 0)")
    p.add_argument("--seed-base", type=nonnegative_int, default=None,
                   help="base of the training-range problem seeds (default 12345)")
    p.add_argument("--lr-range", nargs=2, type=positive_float, default=None, metavar=("LOW", "HIGH"),
                   help="narrow the learning-rate range (log-uniform) for small searches on "
                        "expensive tasks; other ranges stay as documented")
    p.add_argument("--out", default=None, type=output_path, help="output Zarr store (default ./<task>-tune.zarr)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--bundle", nargs="?", const="", default=None, metavar="JSON",
                   help="also merge the best configurations into JSON (default: the bundled "
                        "data/tuned/<task>.json); other optimizers' entries are kept")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from lopt_trace import bundled
    from lopt_trace.errors import UserError
    from lopt_trace.tasks import get_task
    from lopt_trace.tune import (
        SEARCH_SPACES,
        TUNE_SEED_BASE,
        LogUniform,
        best_config,
        bundle_best,
        search_space,
        tune,
        tune_tree,
    )
    from lopt_trace.zarr_io import check_writable, write_tree

    task = get_task(args.task, **({"steps": args.steps} if args.steps else {}))
    out = args.out or f"{args.task}-tune.zarr"
    check_writable(out, args.overwrite)  # fail before the search, not after it
    names = list(SEARCH_SPACES) if args.optimizer == "all" else [args.optimizer]
    seed_base = TUNE_SEED_BASE if args.seed_base is None else args.seed_base
    results = {}
    for name in names:
        space = dict(search_space(name))
        if args.lr_range:
            low, high = args.lr_range
            if low > high:
                raise UserError(f"--lr-range: LOW ({low}) must not exceed HIGH ({high})")
            space["learning_rate"] = LogUniform(low, high)
        ds = tune(task, name, samples=args.samples, problems=args.seeds, batch=args.batch,
                  seed=args.seed, seed_base=seed_base, progress=not args.no_progress, space=space)
        results[name] = ds
        failed = int(ds.attrs["failed_total"])
        rate = ds.attrs["candidates_per_second"]
        try:
            best = best_config(ds)
        except UserError:
            print(f"{name}: every candidate diverged ({failed}/{args.samples}); {rate:.2f} candidates/s")
            continue
        theta = ", ".join(f"{k}={v:.4g}" for k, v in best["theta"].items())
        print(f"{name}: best {theta}  objective {best['objective']:.4g} ± {best['sem']:.2g} (sem over "
              f"{args.seeds} problems); {failed}/{args.samples} diverged; {rate:.2f} candidates/s "
              f"(batch {ds.attrs['batch']}, first call {ds.attrs['compile_seconds']:.1f} s)")
    write_tree(tune_tree(results, task), out, overwrite=args.overwrite)
    print(f"wrote {out}")
    if args.bundle is not None:
        target = args.bundle or bundled.tuned_path(args.task)
        bundle_best(results, target)
        print(f"bundled the best configurations into {target}")
    return 0
