"""The measured and estimated numbers that ``record --help`` and the README quote, read from
``doc_numbers.json`` (written by ``scripts/doc_numbers.py``, never by hand). Light: no JAX."""

from __future__ import annotations

import json
from pathlib import Path

PATH = Path(__file__).with_name("doc_numbers.json")


def load() -> dict | None:
    """The numbers, or None when the file is missing or unreadable (help then omits them)."""
    try:
        return json.loads(PATH.read_text())
    except (OSError, ValueError):
        return None


def _mb(n: float) -> str:
    mb = n / 1e6
    return f"{mb:.2g} MB" if mb < 10 else f"{mb:,.0f} MB"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} minutes"


def record_cost_text(numbers: dict | None = None) -> str:
    """The "what the defaults cost" paragraph of ``record --help``."""
    numbers = numbers if numbers is not None else load()
    if not numbers:
        return "What the defaults cost: see docs/store.md."
    e, m = numbers["estimates"], numbers["main_job"]
    s = e["store_bytes"]
    return (f"What the defaults cost: {e['runs']} runs x the task's steps ({e['steps']} for mnist), "
            f"{e['params_per_tensor']} parameters kept per tensor ({e['kept']:,} of MNIST's {e['total']:,}), "
            f"every step kept, float32. On MNIST that is {_mb(s['baseline_min'])}-{_mb(s['baseline_max'])} "
            f"per baseline, about {_mb(s['learned_32'])} for a 32-unit learned optimizer and about "
            f"{_mb(s['learned_256'])} at 256 units (uncompressed estimates). `{m['command']}` (bundled "
            f"learned optimizer + 4 baselines) took {_minutes(m['wall_s'])} on {m['cpus']} CPU cores "
            f"(load average {m['load_average_before']:g} when it started), wrote "
            f"{_mb(m['store_bytes_on_disk'])} and peaked at {m['peak_rss_bytes'] / 1e9:.2g} GB of memory "
            f"({m['date']}). Per-tensor means and |g| histograms are always exact over all parameters. "
            f"--params all on MNIST costs {e['total']:,} x (2 + units) x 4 bytes per step and run (about "
            f"{_mb(e['params_all_bytes_per_step_256'])} per step at 256 units); --every E and "
            "--dtype float16 shrink that. (Numbers from scripts/doc_numbers.py.)")


def readme_sentence(numbers: dict | None = None) -> str:
    """The Quickstart's sentence about the first command."""
    numbers = numbers if numbers is not None else load()
    m = numbers["main_job"]
    return (f"{_minutes(m['wall_s'])} on {m['cpus']} CPU cores at load average "
            f"{m['load_average_before']:g}, {_mb(m['store_bytes_on_disk'])} written, "
            f"{m['peak_rss_bytes'] / 1e9:.2g} GB peak memory; `python scripts/doc_numbers.py --measure` "
            "measures it again")
