"""Time one batch of a tuning search and project the whole search's run time.

    python scripts/time_tune_batch.py --task mnist --samples 256 --seeds 4        # one 200-step batch

Runs the first candidate batch of ``lopt-trace tune --task T --optimizer O --samples S --seeds N``
(the same candidates, problems and batch size, lopt_trace.tune.plan_search) ``--calls`` times:
the first call includes compilation, the others are what every later batch costs. Prints the wall
and CPU time of each call and the projection: (batches of all optimizers + validation) × the
last call's wall time. The machine's load matters: the script prints the load average too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from lopt_trace.tasks import get_task
from lopt_trace.tune import (SEARCH_SPACES, evaluate_batches, make_evaluator, plan_search,
                             sample_problems, tuning_setup)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--optimizer", default="adam", help="the optimizer whose batch is timed (default adam)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="inner steps (default: the task's)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--optimizers", type=int, default=len(SEARCH_SPACES),
                   help="optimizers in the projected search (default 4: --optimizer all)")
    p.add_argument("--validation-problems", type=int, default=16)
    p.add_argument("--calls", type=int, default=2, help="calls of the first batch (default 2)")
    args = p.parse_args(argv)

    task = get_task(args.task, **({"steps": args.steps} if args.steps else {}))
    opt, space, to_theta, _ = tuning_setup(args.optimizer)
    plan = plan_search(task, space, to_theta, args.samples, args.seeds, args.steps, args.batch)
    print(f"{args.task}: {task.num_params} parameters, {plan.steps} steps, batch {plan.batch} "
          f"candidates × {args.seeds} problems, {plan.n_batches} batches per optimizer; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    fn = make_evaluator(task, opt, plan.steps)
    problems = sample_problems(task, plan.seeds)
    wall = 0.0
    for call in range(args.calls):
        batches = evaluate_batches(fn, plan.thetas, problems, plan.batch)
        cpu = time.process_time()
        _, _, _, scores, wall = next(batches)
        cpu = time.process_time() - cpu
        kind = "with compilation" if call == 0 else "run only"
        print(f"call {call + 1}: wall {wall:.1f} s, CPU {cpu:.1f} s ({kind}); mean objectives "
              f"{np.round(scores.mean(axis=1, dtype=np.float64), 4).tolist()[:8]}", flush=True)
    # validation: the selected and the lowest-mean candidate on each validation problem
    validation = -(-2 * args.validation_problems // (plan.batch * args.seeds))
    total = args.optimizers * (plan.n_batches + validation)
    print(f"projection: {args.optimizers} × ({plan.n_batches} + ~{validation} validation) batches × "
          f"{wall:.0f} s = {total * wall / 3600:.1f} h at this load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
