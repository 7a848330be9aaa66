"""``lopt-trace train``: meta-train a learned optimizer on a task."""

from __future__ import annotations

from lopt_trace.cli import nonnegative_int, positive_float, positive_int, task_name

#: per-task defaults for the GRU's input and output scales (gradients and good step sizes differ)
SCALES = {
    "linear_regression": (1.0, 1.0),
    "rosenbrock": (0.01, 0.05),
    "two_moons": (1.0, 0.01),
    "mnist": (1.0, 0.01),
}


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="meta-train a learned (GRU) optimizer on a task",
        description="Meta-train a component-wise GRU optimizer by backpropagation through unrolled "
                    "optimization, and write it as an optimizer file (a Zarr folder with θ, its "
                    "configuration and the meta-training history).")
    p.add_argument("--task", required=True, type=task_name, help="task name (see `lopt-trace tasks`)")
    p.add_argument("--units", type=positive_int, default=32, help="GRU units (default 32; the paper uses 256)")
    p.add_argument("--iterations", type=positive_int, default=200, help="meta-iterations (default 200)")
    p.add_argument("--batch", type=positive_int, default=8, help="problems per meta-batch (default 8)")
    p.add_argument("--steps", type=positive_int, default=None, help="inner steps per problem (default: the task's)")
    p.add_argument("--truncation", type=positive_int, default=None,
                   help="inner steps per meta-gradient (truncated unrolls; default: all --steps)")
    p.add_argument("--first-order", action="store_true",
                   help="treat task gradients as constants in the meta-gradient (no second "
                        "derivatives; much cheaper on CNNs, approximate)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="meta learning rate (default 3e-3)")
    p.add_argument("--l2", type=float, default=0.0, help="L2 penalty on θ (default 0)")
    p.add_argument("--input-scale", type=positive_float, default=None, help="gradient input scale (default per task)")
    p.add_argument("--output-scale", type=positive_float, default=None, help="readout output scale (default per task)")
    p.add_argument("--checkpoint-every", type=positive_int, default=50, help="checkpoint period (default 50)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="meta-training seed (default 0)")
    p.add_argument("--out", default=None, help="output optimizer file (default ./<task>-learned.zarr)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def run(args) -> int:
    import time

    from lopt_trace.metatrain import MetaTrainConfig, train
    from lopt_trace.optimizers import LearnedGRU
    from lopt_trace.tasks import get_task

    task = get_task(args.task)
    in_scale, out_scale = SCALES.get(args.task, (1.0, 0.01))
    opt = LearnedGRU(units=args.units, input_scale=args.input_scale or in_scale,
                     output_scale=args.output_scale or out_scale)
    cfg = MetaTrainConfig(iterations=args.iterations, batch=args.batch, steps=args.steps,
                          truncation=args.truncation, learning_rate=args.lr, l2=args.l2,
                          seed=args.seed, checkpoint_every=args.checkpoint_every,
                          first_order=args.first_order)
    out = args.out or f"{args.task}-learned.zarr"
    start = time.perf_counter()
    history = train(task, opt, cfg, out, resume=args.resume, overwrite=args.overwrite)
    loss = history["meta_loss"].values
    k = max(1, len(loss) // 10)
    print(f"meta-loss {loss[:k].mean():.4f} (first {k}) -> {loss[-k:].mean():.4f} (last {k}); "
          f"skipped {int(history['skipped_total'])}; {time.perf_counter() - start:.1f} s")
    print(f"wrote {out}")
    return 0
