"""Regenerate the numbers that `lopt-trace record --help` and the README quote about the main job.

    python scripts/doc_numbers.py            # recompute the estimates, keep the last measurement
    python scripts/doc_numbers.py --measure  # also run `lopt-trace record --task mnist` and measure it

Writes ``lopt_trace/doc_numbers.json`` (package data, read by ``--help`` without importing JAX) and
the README's Quickstart sentence between ``<!-- doc-numbers:begin -->`` and
``<!-- doc-numbers:end -->``. ``tests/test_doc_numbers.py`` checks that both say what the JSON
says, so no number there is typed by hand.

- *Estimates* (always recomputed, from ``lopt_trace.recorder.estimate``, the same estimate
  ``record`` prints in its first line): parameters kept by default, uncompressed store bytes per
  baseline and per GRU size, and ``--params all`` bytes per step.
- *Measurement* (``--measure``): wall time, store size on disk and peak memory (RSS of the process
  tree, sampled with psutil) of ``lopt-trace record --task mnist`` in a new process, with the load
  average and the CPU count, since on a shared machine they say what the time means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JSON = ROOT / "lopt_trace" / "doc_numbers.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- doc-numbers:begin -->", "<!-- doc-numbers:end -->"


def estimates() -> dict:
    """Store-size estimates of the default MNIST recording, per optimizer kind."""
    import jax

    from lopt_trace.defaults import DEFAULT_PARAMS, DEFAULT_RUNS
    from lopt_trace.optimizers import LearnedGRU, make_optimizer
    from lopt_trace.recorder import OptimizerEntry, RecordConfig, estimate, make_layout
    from lopt_trace.tasks import get_task

    task = get_task("mnist")

    def entry(name, opt):
        return OptimizerEntry(name, opt, jax.tree.map(lambda x: x, opt.init_theta()), "estimate", name)

    def size(entries, params=DEFAULT_PARAMS):
        layout = make_layout(task, RecordConfig(params=params), entries)
        return estimate(layout, entries).store, layout

    baselines = {n: size([entry(n, make_optimizer(n))])[0] for n in ("sgd", "momentum", "rmsprop", "adam")}
    learned = {u: size([entry("learned", LearnedGRU(units=u))])[0] for u in (32, 256)}
    _, layout = size([entry("sgd", make_optimizer("sgd"))])
    return {
        "task": "mnist", "runs": DEFAULT_RUNS, "steps": task.default_steps, "params_per_tensor": DEFAULT_PARAMS,
        "kept": int(layout.n_params), "total": int(task.num_params),
        "store_bytes": {"baseline_min": min(baselines.values()), "baseline_max": max(baselines.values()),
                        "learned_32": learned[32], "learned_256": learned[256]},
        "params_all_bytes_per_step_256": int(task.num_params) * (2 + 256) * 4,
    }


def measure() -> dict:
    """Run the main job in a new process and measure it."""
    import psutil

    from lopt_trace.store.sizes import size_on_disk

    work = Path(tempfile.mkdtemp(prefix="doc-numbers-"))
    out = work / "mnist.zarr"
    cmd = [shutil.which("lopt-trace") or "lopt-trace", "record", "--task", "mnist", "--out", str(out)]
    load = os.getloadavg()[0]
    began = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.5)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    result = {"command": "lopt-trace record --task mnist", "wall_s": round(wall, 1),
              "store_bytes_on_disk": size_on_disk(out), "peak_rss_bytes": peak,
              "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2),
              "cpus": os.cpu_count(), "date": datetime.date.today().isoformat()}
    shutil.rmtree(work, ignore_errors=True)
    return result


def update_readme(numbers: dict) -> None:
    from lopt_trace.doc_numbers import readme_sentence

    text = README.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{README}: no {BEGIN} ... {END} block to update")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + BEGIN + readme_sentence(numbers) + END + tail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measure", action="store_true", help="run the main job and measure it")
    a = p.parse_args(argv)
    old = json.loads(JSON.read_text()) if JSON.exists() else {}
    numbers = {"generated_by": "python scripts/doc_numbers.py", "estimates": estimates(),
               "main_job": measure() if a.measure else old.get("main_job")}
    if numbers["main_job"] is None:
        sys.exit("no measurement yet: run with --measure")
    JSON.write_text(json.dumps(numbers, indent=1) + "\n")
    update_readme(numbers)
    print(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
