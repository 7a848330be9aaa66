"""Validation meta-objective reached per CPU-second: backpropagation (bptt) against PES.

Meta-trains the same GRU from the same random θ on the same problems with each estimator, for
the same wall-clock budget, and scores θ every few iterations by the validation meta-objective
(mean_k f_k / f_0 over the whole horizon on held-back training-range problems, as ``train
--validation`` does). The CPU time counted is that of the meta-iterations only
(``time.process_time``, all threads; validation is left out), so estimators compare on the work
they need, even on a shared machine. Prints one table row per validation and a summary:
best validation reached and CPU-seconds to reach given levels.

    nice -n 10 python benchmarks/estimators.py --estimator bptt --budget 15m --log bptt.jsonl
    nice -n 10 python benchmarks/estimators.py --estimator pes  --budget 15m --log pes.jsonl
    python benchmarks/estimators.py --summary bptt.jsonl pes.jsonl

(Each estimator runs in its own process, so the two can run side by side; ``--summary`` reads
their logs and prints the comparison.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time


def run(a) -> None:
    import jax
    import numpy as np

    from lopt_trace.metatrain import MetaTrainConfig, MetaTrainer
    from lopt_trace.optimizers import LearnedGRU
    from lopt_trace.tasks import get_task

    task = get_task(a.task)
    opt = LearnedGRU(units=a.units, input_scale=a.input_scale, output_scale=a.output_scale)
    extra = {"estimator": "pes", "pes_std": a.pes_std, "pes_pairs": a.pes_pairs} if a.estimator == "pes" else {}
    cfg = MetaTrainConfig(iterations=a.max_iterations, batch=a.batch, truncation=a.truncation,
                          learning_rate=a.lr, validation=a.validation, seed=a.seed,
                          first_order=a.estimator == "bptt-first-order", **extra)
    trainer = MetaTrainer(task, opt, cfg)
    state = trainer.init()
    log = open(a.log, "w") if a.log else None
    head = {"date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}", "estimator": a.estimator,
            "settings": trainer.cfg.settings(), "optimizer": opt.config(),
            "load_average": os.getloadavg(), "cpus": os.cpu_count(), "jax": jax.__version__}
    print(json.dumps(head), flush=True)
    if log:
        log.write(json.dumps(head) + "\n")

    def record(it, cpu, wall, loss):
        score = trainer.validate(state.theta)
        row = {"iteration": it, "cpu_s": round(cpu, 2), "wall_s": round(wall, 1),
               "validation": score, "meta_loss": loss, "load_average": os.getloadavg()[0]}
        print(json.dumps(row), flush=True)
        if log:
            log.write(json.dumps(row) + "\n")
            log.flush()

    for it in range(min(2, trainer.segments)):  # compile the fresh and the continuing step first
        jax.block_until_ready(trainer.step(state, it)[1]["meta_loss"])
    cpu = 0.0
    began = time.monotonic()
    record(0, 0.0, 0.0, float("nan"))
    losses = []
    it = 0
    while it < a.max_iterations and time.monotonic() - began < a.budget:
        tick = time.process_time()
        state, metrics = trainer.step(state, it)
        cpu += time.process_time() - tick
        losses.append(float(metrics["meta_loss"]))
        it += 1
        if it % a.every == 0:
            record(it, cpu, time.monotonic() - began, float(np.nanmean(losses[-a.every:])))
    if it % a.every:
        record(it, cpu, time.monotonic() - began, float(np.nanmean(losses[-(it % a.every):])))


def summary(paths) -> None:
    runs = []
    for path in paths:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        runs.append((lines[0], lines[1:]))
    head = runs[0][0]
    s = head["settings"]
    print(f"{head['date']}: GRU {head['optimizer']['units']} units, horizon {s['steps']}, truncation "
          f"{s['truncation']}, batch {s['batch']}, lr {s['learning_rate']}, validation "
          f"{s['validation']} problems; load average at start {head['load_average'][0]:.2f} "
          f"on {head['cpus']} CPUs")
    best_all = min(min(r["validation"] for r in rows) for _, rows in runs)
    levels = [best_all * f for f in (1.5, 1.25, 1.1, 1.05)]  # near the best either reached
    print("| estimator | iterations | CPU s | wall s | start | best validation (CPU s) | last | "
          "CPU s to reach " + " | ".join(f"≤ {lv:.4f}" for lv in levels) + " |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in levels) + " |")
    for h, rows in runs:
        name = h["estimator"]
        if name == "pes":
            name += f" (σ {h['settings']['pes_std']}, {h['settings']['pes_pairs']} pairs)"
        best = min(rows, key=lambda r: r["validation"])
        reach = []
        for lv in levels:
            hit = [r["cpu_s"] for r in rows if r["validation"] <= lv]
            reach.append(f"{hit[0]:.0f}" if hit else "not reached")
        last = rows[-1]
        print(f"| {name} | {last['iteration']} | {last['cpu_s']:.0f} | {last['wall_s']:.0f} | "
              f"{rows[0]['validation']:.4f} | {best['validation']:.4f} ({best['cpu_s']:.0f}) | "
              f"{last['validation']:.4f} | " + " | ".join(reach) + " |")
    print("validation: mean_k f_k / f_0 over the whole horizon on the validation problems (lower is "
          "better); CPU s: meta-iterations only")
    for h, rows in runs:
        print(f"\n{h['estimator']}: iteration, CPU s, validation (at most 16 rows)")
        step = max(1, -(-len(rows) // 16))
        shown = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
        print("  " + "; ".join(f"{r['iteration']} {r['cpu_s']:.0f} {r['validation']:.4f}" for r in shown))


def seconds(text: str) -> float:
    from lopt_trace.cli.train import duration

    return duration(text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--estimator", choices=("bptt", "bptt-first-order", "pes"), default="bptt")
    p.add_argument("--summary", nargs="+", metavar="LOG", help="print the comparison of these logs")
    p.add_argument("--task", default="two_moons")
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--input-scale", type=float, default=100.0)
    p.add_argument("--output-scale", type=float, default=0.1)
    p.add_argument("--truncation", type=int, default=50)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--validation", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pes-std", type=float, default=0.01)
    p.add_argument("--pes-pairs", type=int, default=2)
    p.add_argument("--budget", type=seconds, default=seconds("15m"), help="wall-clock budget")
    p.add_argument("--every", type=int, default=10, help="validate every this many iterations")
    p.add_argument("--max-iterations", type=int, default=100000)
    p.add_argument("--log", default=None, help="write the rows as JSON lines here")
    a = p.parse_args()
    if a.summary:
        summary(a.summary)
    else:
        run(a)


if __name__ == "__main__":
    main()
