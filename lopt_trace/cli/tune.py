"""``lopt-trace tune``: random search for the baselines' hyperparameters on a task."""

from __future__ import annotations

import argparse
import time

from lopt_trace import bundled
from lopt_trace.cli import (nonnegative_int, output_path, positive_float, positive_int, print_resume_command,
                            task_name)
from lopt_trace.cli.train import duration
from lopt_trace.errors import UserError

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


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
                    "from the training seed range; candidates run in vmapped batches. The choice "
                    "breaks near-ties (within one paired sem of the lowest mean) toward the "
                    "candidate that varies least across problems, and is scored on validation "
                    "problems. The result (dims sample, problem) is written to a Zarr store, one "
                    "group /tune/<optimizer> per optimizer. Long searches: --time-budget "
                    "checkpoints and exits when the time is spent, --resume continues.")
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
    p.add_argument("--validation-problems", type=nonnegative_int, default=16, metavar="N",
                   help="score the selected candidate on N validation problems from their own "
                        "training-range seeds (not the tuning problems, not the test seeds; "
                        "default 16, 0: none)")
    p.add_argument("--out", default=None, type=output_path, help="output Zarr store (default ./<task>-tune.zarr)")
    p.add_argument("--checkpoint-every", type=positive_int, default=10, metavar="N",
                   help="write the candidates evaluated so far to <out>.checkpoint every N batches "
                        "(default 10; also after each optimizer)")
    p.add_argument("--time-budget", type=duration, default=None, metavar="DURATION",
                   help="stop when this much time is spent (e.g. 90m, 2h, 3600s, 1h30m): write the "
                        "checkpoint, print how to resume, exit 0; continue with --resume (no "
                        "candidate is evaluated twice, and the result is the same as an "
                        "uninterrupted search)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted search from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its checkpoint)")
    p.add_argument("--bundle", nargs="?", const="", default=None, metavar="JSON",
                   help="also merge the selected configurations (with their validation score and "
                        "tuning-curve verdict) into JSON (default: the bundled "
                        "data/tuned/<task>.json) when the search finishes; other optimizers' "
                        "entries are kept")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    began = time.monotonic()
    from lopt_trace.tasks import get_task
    from lopt_trace.tune import (
        SEARCH_SPACES,
        TUNE_SEED_BASE,
        LogUniform,
        bundle_best,
        search_space,
        tune_to_store,
    )

    task = get_task(args.task, **({"steps": args.steps} if args.steps else {}))
    out = args.out or f"{args.task}-tune.zarr"
    names = list(SEARCH_SPACES) if args.optimizer == "all" else [args.optimizer]
    seed_base = TUNE_SEED_BASE if args.seed_base is None else args.seed_base
    spaces = {}
    for name in names:
        space = dict(search_space(name))
        if args.lr_range:
            low, high = args.lr_range
            if low > high:
                raise UserError(f"--lr-range: LOW ({low}) must not exceed HIGH ({high})")
            space["learning_rate"] = LogUniform(low, high)
        spaces[name] = space
    budget = None  # what is left of --time-budget, counted from the start of the command
    if args.time_budget is not None:
        budget = args.time_budget - (time.monotonic() - began)
    outcome = tune_to_store(task, names, out, samples=args.samples, problems=args.seeds,
                            batch=args.batch, seed=args.seed, seed_base=seed_base, spaces=spaces,
                            validation_problems=args.validation_problems,
                            checkpoint_every=args.checkpoint_every, resume=args.resume,
                            overwrite=args.overwrite, progress=not args.no_progress,
                            time_budget=budget)
    for name, ds in outcome.results.items():
        _print_result(name, ds)
    if outcome.stopped:
        _print_resume(outcome, out)
        return 0
    print(f"wrote {out}")
    if args.bundle is not None:
        target = args.bundle or bundled.tuned_path(args.task)
        bundle_best({n: ds for n, ds in outcome.results.items() if _finite(ds)}, target, store=out)
        print(f"bundled the selected configurations into {target}")
    return 0


def _finite(ds) -> bool:
    return int(ds.attrs.get("selected_sample", ds.attrs["best_sample"])) >= 0


def _print_result(name, ds) -> None:
    """One line per optimizer: the selected θ, its score, how it was chosen, its validation."""
    from lopt_trace.tune import selected_config

    failed, samples = int(ds.attrs["failed_total"]), int(ds.attrs["samples"])
    rate = ds.attrs["candidates_per_second"]
    if not _finite(ds):
        print(f"{name}: every candidate diverged ({failed}/{samples}); {rate:.2f} candidates/s")
        return
    best = selected_config(ds)
    theta = ", ".join(f"{k}={v:.4g}" for k, v in best["theta"].items())
    how = (f"{best['selected_by']}, {best['tied_count']} within 1 sem of the lowest mean "
           f"{float(ds['mean_objective'].values[best['lowest_mean_sample']]):.4g}")
    val = ""
    if "validation" in best:
        v = best["validation"]
        val = f"; validation {v['mean']:.4g} ± {v['sem']:.2g} ({v['problems']} problems)"
    print(f"{name}: best {theta}  objective {best['objective']:.4g} ± {best['sem']:.2g} (sem over "
          f"{ds.attrs['problems']} problems; {how}){val}; {failed}/{samples} diverged; "
          f"{rate:.2f} candidates/s (batch {ds.attrs['batch']}, first call "
          f"{ds.attrs['compile_seconds']:.1f} s)")


def _print_resume(outcome, out) -> None:
    """What a search stopped by --time-budget prints: where it stands and how to resume it."""
    from lopt_trace.metatrain import checkpoint_path

    where = ", ".join(f"{n} {d}/{t}" for n, (d, t) in outcome.batches.items())
    print(f"time budget spent: batches done {where}; checkpoint {checkpoint_path(out)}")
    print_resume_command("tune")
