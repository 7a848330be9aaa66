"""The numbers `record --help` and the README quote come from scripts/doc_numbers.py (issue #14 §8):
the JSON it writes is current, and both texts say exactly what it says."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from lopt_trace import doc_numbers

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("doc_numbers_script", ROOT / "scripts" / "doc_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_json_exists_with_a_measurement():
    numbers = doc_numbers.load()
    assert numbers is not None, "run python scripts/doc_numbers.py --measure"
    m = numbers["main_job"]
    assert m["wall_s"] > 0 and m["store_bytes_on_disk"] > 0 and m["peak_rss_bytes"] > 0


def test_estimates_are_current():
    """The stored estimates equal what the recorder's estimate gives today."""
    assert doc_numbers.load()["estimates"] == _script().estimates()


def test_readme_quotes_the_json():
    text = (ROOT / "README.md").read_text()
    script = _script()
    block = text.split(script.BEGIN, 1)[1].split(script.END, 1)[0]
    assert block == doc_numbers.readme_sentence()


def test_record_help_quotes_the_json():
    out = subprocess.run([sys.executable, "-m", "lopt_trace.cli", "record", "--help"], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    assert _words(doc_numbers.record_cost_text()) in _words(out)
    e = doc_numbers.load()["estimates"]
    assert f"{e['kept']:,} of MNIST's {e['total']:,}" in _words(out)
