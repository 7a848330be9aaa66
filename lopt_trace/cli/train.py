"""``lopt-trace train``: meta-train a learned optimizer on a task."""

from __future__ import annotations

import argparse
import re
import time

from lopt_trace.cli import (nonnegative_float, nonnegative_int, output_path, positive_float, positive_int,
                            print_resume_command, task_name, unit_interval)
from lopt_trace.defaults import TASK_NAMES, default_estimator
from lopt_trace.errors import UserError

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


#: per-task defaults for the GRU's input and output scales (gradients and good step sizes differ)
SCALES = {
    "linear_regression": (1.0, 1.0),
    "rosenbrock": (0.01, 0.05),
    "two_moons": (1.0, 0.01),
    "mnist": (1.0, 0.01),
}


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def duration(text: str) -> float:
    """argparse type for a duration: ``90m``, ``2h``, ``3600s``, ``1h30m``, ``1.5h`` -> seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90m, 2h, 3600s or 1h30m, got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if not total > 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return total


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="meta-train a learned (GRU) optimizer on a task",
        description="Meta-train a component-wise GRU optimizer on truncated unrolls, by "
                    "backpropagation or persistent evolution strategies (--estimator), and write it as an optimizer file (a Zarr folder with θ, its "
                    "configuration and the meta-training history). Long runs: --time-budget "
                    "checkpoints and exits when the time is spent, --resume continues.")
    p.add_argument("--task", required=True, type=task_name, help="task name (see `lopt-trace tasks`)")
    p.add_argument("--units", type=positive_int, default=32, help="GRU units (default 32; the paper uses 256)")
    p.add_argument("--iterations", type=positive_int, default=200, help="meta-iterations (default 200)")
    p.add_argument("--batch", type=positive_int, default=8, help="problems per meta-batch (default 8)")
    p.add_argument("--steps", type=positive_int, default=None, help="inner steps per problem (default: the task's)")
    p.add_argument("--truncation", type=positive_int, default=None,
                   help="inner steps per meta-gradient (truncated unrolls; default: all --steps)")
    p.add_argument("--first-order", action="store_true",
                   help="treat task gradients as constants in the meta-gradient (no second "
                        "derivatives; much cheaper on CNNs, approximate; bptt only)")
    p.add_argument("--estimator", choices=("bptt", "pes"), default=None,
                   help="meta-gradient: bptt, backpropagation through each truncation, or pes, "
                        "persistent evolution strategies (antithetic pairs, forward unrolls only, "
                        "unbiased across truncations). Default per task, chosen by measurement "
                        "(docs/metatrain.md): " + ", ".join(
                            f"{t} {default_estimator(t)}" for t in TASK_NAMES))
    p.add_argument("--pes-std", type=positive_float, default=None, metavar="SIGMA",
                   help="PES: standard deviation of the perturbations of θ (default 0.01)")
    p.add_argument("--pes-pairs", type=positive_int, default=None, metavar="K",
                   help="PES: antithetic pairs per problem of the meta-batch (default 2)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="meta learning rate (default 3e-3)")
    p.add_argument("--l2", type=nonnegative_float, default=0.0, help="L2 penalty on θ (default 0)")
    p.add_argument("--input-scale", type=positive_float, default=None, help="gradient input scale (default per task)")
    p.add_argument("--output-scale", type=positive_float, default=None, help="readout output scale (default per task)")
    p.add_argument("--input-norm", type=unit_interval, default=None, metavar="DECAY",
                   help="normalise the GRU's input by the running max of |g| (AdaMax's u, decayed "
                        "by DECAY per step, e.g. 0.9999); default: raw gradients")
    w = p.add_argument_group("warm start", "start from a GRU set to tuned soft-sign momentum "
                             "(see docs/metatrain.md) instead of random weights")
    w.add_argument("--warm-start", choices=("sign-momentum",), default=None,
                   help="search (β, α, s) of v' = βv + tanh(s·g), Δx = −αv' (g / gmax with "
                        "--input-norm) and start from the best; sets the GRU's input and output "
                        "scales to s and α")
    w.add_argument("--warm-start-samples", type=positive_int, default=64,
                   help="random candidates of the warm-start search (default 64)")
    w.add_argument("--warm-start-seeds", type=positive_int, default=4,
                   help="training-range problems each candidate is scored on (default 4)")
    w.add_argument("--warm-start-lr-range", type=positive_float, nargs=2, metavar=("LOW", "HIGH"),
                   default=None, help="narrow the search's α range (default 1e-5 to 1; "
                                      "1e-4 to 0.1 with --input-norm)")
    p.add_argument("--validation", type=nonnegative_int, default=0,
                   help="score θ on this many held-back training-range problems over the whole "
                        "horizon at the start and at every checkpoint, and keep the best θ "
                        "(default 0: off, keep the last)")
    p.add_argument("--checkpoint-every", type=positive_int, default=50, help="checkpoint period (default 50)")
    p.add_argument("--time-budget", type=duration, default=None, metavar="DURATION",
                   help="stop when this much time is spent (e.g. 90m, 2h, 3600s, 1h30m): write the "
                        "checkpoint, print how to resume, exit 0; continue with --resume (the "
                        "result is the same, bit for bit, as an uninterrupted run)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="meta-training seed (default 0)")
    p.add_argument("--out", default=None, type=output_path, help="output optimizer file (default ./<task>-learned.zarr)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def run(args) -> int:
    began = time.monotonic()
    from lopt_trace.metatrain import MetaTrainConfig, train
    from lopt_trace.optimizers import LearnedGRU
    from lopt_trace.tasks import get_task

    if args.estimator is None:
        args.estimator = "bptt" if args.first_order else default_estimator(args.task)
    pes = {}
    if args.pes_std is not None:
        pes["pes_std"] = args.pes_std
    if args.pes_pairs is not None:
        pes["pes_pairs"] = args.pes_pairs
    if pes and args.estimator != "pes":
        raise UserError("--pes-std and --pes-pairs apply to --estimator pes")
    if args.warm_start_lr_range and args.warm_start_lr_range[0] > args.warm_start_lr_range[1]:
        low, high = args.warm_start_lr_range
        raise UserError(f"--warm-start-lr-range: LOW ({low:g}) must not exceed HIGH ({high:g})")
    cfg = MetaTrainConfig(iterations=args.iterations, batch=args.batch, steps=args.steps,
                          truncation=args.truncation, learning_rate=args.lr, l2=args.l2,
                          seed=args.seed, checkpoint_every=args.checkpoint_every,
                          first_order=args.first_order, validation=args.validation,
                          estimator=args.estimator, **pes)
    cfg.validate()  # before the task's data or a warm-start search
    task = get_task(args.task)
    out = args.out or f"{args.task}-learned.zarr"
    from lopt_trace import train_memory

    train_memory.check_fits(task, LearnedGRU(units=args.units, input_norm=args.input_norm), cfg)
    theta0 = warm = None
    if args.warm_start:
        opt, theta0, warm = _warm_start(args, task, out)
    else:
        in_scale, out_scale = SCALES.get(args.task, (1.0, 0.01))
        if args.input_norm is not None:
            in_scale = 1.0  # the normalised input is in [-1, 1]
        opt = LearnedGRU(units=args.units, input_scale=args.input_scale or in_scale,
                         output_scale=args.output_scale or out_scale, input_norm=args.input_norm)
    start = time.perf_counter()
    budget = None  # what is left of --time-budget, counted from the start of the command
    if args.time_budget is not None:
        budget = args.time_budget - (time.monotonic() - began)
    history = train(task, opt, cfg, out, resume=args.resume, overwrite=args.overwrite,
                    theta0=theta0, warm_start=warm, time_budget=budget)
    if history.attrs.get("stopped"):
        _print_resume(args, history, out)
        return 0
    loss = history["meta_loss"].values
    k = max(1, len(loss) // 10)
    print(f"meta-loss {loss[:k].mean():.4f} (first {k}) -> {loss[-k:].mean():.4f} (last {k}); "
          f"skipped {int(history['skipped_total'])}; {time.perf_counter() - start:.1f} s")
    if "selected_checkpoint" in history:
        scores = dict(zip(history["checkpoint"].values.tolist(), history["validation"].values.tolist()))
        it = int(history["selected_checkpoint"])
        print(f"validation meta-objective {scores[0] if 0 in scores else float('nan'):.4f} (start) -> "
              f"{scores[max(scores)]:.4f} (end); kept θ of iteration {it} ({scores[it]:.4f})")
    print(f"wrote {out}")
    return 0


def _print_resume(args, history, out) -> None:
    """What a run stopped by --time-budget prints: where it stands and the command that resumes it."""
    from lopt_trace.metatrain import checkpoint_path

    done = history.sizes["iteration"]
    print(f"time budget spent: {done} of {args.iterations} iterations done; checkpoint "
          f"{checkpoint_path(out)}")
    print_resume_command("train")


def _warm_start(args, task, out):
    """The warm-started GRU, θ and search; on --resume, the checkpoint's (no new search)."""
    import jax

    from lopt_trace.metatrain import best_of_search, check_output, read_checkpoint_warm_start
    from lopt_trace.optimizers import make_optimizer
    from lopt_trace.warm_start import warm_start

    if args.input_scale or args.output_scale:
        raise UserError("--warm-start sets the input and output scales; drop --input-scale/--output-scale")
    check_output(out, args.resume, args.overwrite)  # before a search that may take minutes
    if args.resume:
        saved = read_checkpoint_warm_start(out)
        if saved is None:
            raise UserError(f"no warm-started checkpoint to resume for {out}; run without --resume")
        config, ds = saved
        return make_optimizer(config), None, ds
    opt, theta, ds = warm_start(task, args.units, key=jax.random.PRNGKey(args.seed),
                                samples=args.warm_start_samples, problems=args.warm_start_seeds,
                                steps=args.steps, lr_range=args.warm_start_lr_range,
                                input_norm=args.input_norm)
    best = best_of_search(ds)
    p = best["theta"]
    kind = "normalised sign-momentum" if args.input_norm is not None else "sign-momentum"
    print(f"warm start: {kind} β={p['beta']:.4f} α={p['learning_rate']:.3g} "
          f"s={p['sharpness']:.3g}, meta-objective {best['objective']:.4f} on "
          f"{best['problems']} training problems")
    return opt, theta, ds
