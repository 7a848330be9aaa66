"""scripts/tuning_curves.py: the docs table is read from the tune store, one well-formed row per
optimizer, and re-running it replaces the task's block instead of adding another."""

import importlib.util
from pathlib import Path

from lopt_trace.tasks import get_task
from lopt_trace.tune import read_tune_store, tune_to_store

SPEC = importlib.util.spec_from_file_location(
    "tuning_curves", Path(__file__).resolve().parents[1] / "scripts" / "tuning_curves.py")
tuning_curves = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tuning_curves)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_table_rows_come_from_the_store_and_the_block_is_replaced(tmp_path):
    store = tmp_path / "lr-tune.zarr"
    tune_to_store(get_task("linear_regression", steps=5), ["sgd", "momentum"], store, samples=6,
                  problems=2, validation_problems=2, progress=False)
    task, lines, curves = tuning_curves.rows(store)
    assert task == "linear_regression" and set(curves) == {"sgd", "momentum"}
    block = tuning_curves.table(task, store, lines)
    header = next(line for line in block.splitlines() if line.startswith("| optimizer"))
    columns = _cells(header)
    results = read_tune_store(store)
    for line in lines:
        cells = dict(zip(columns, _cells(line)))
        assert len(_cells(line)) == len(columns)
        ds = results[cells["optimizer"]]
        assert cells["samples × problems"] == "6 × 2"
        seconds = tuning_curves.search_seconds(ds)
        assert seconds == ds.attrs["compile_seconds"] + ds.attrs["eval_seconds"] > 0
        assert cells["search time"] == tuning_curves._duration(seconds)

    doc = tmp_path / "tuning.md"
    doc.write_text(f"intro\n\n{tuning_curves.INSERT}\n\nrest\n")
    tuning_curves.update_docs(task, block, doc)
    tuning_curves.update_docs(task, block.replace("6 × 2", "6 × 2 (again)"), doc)
    text = doc.read_text()
    assert text.count("<!-- tuning-curves:linear_regression:begin -->") == 1
    assert "(again)" in text and text.index("intro") < text.index("(again)") < text.index("rest")


def test_durations_read_as_a_person_would_say_them():
    assert tuning_curves._duration(42.4) == "42 s"
    assert tuning_curves._duration(1800) == "30 min"
    assert tuning_curves._duration(5 * 3600) == "5.0 h"
