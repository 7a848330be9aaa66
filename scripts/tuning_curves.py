"""Tuning curves and the tuning table of docs/tuning.md, read from the tune stores themselves.

    python scripts/tuning_curves.py training/two_moons-tune.zarr            # table on stdout
    python scripts/tuning_curves.py training/two_moons-tune.zarr --docs     # update the docs

For every optimizer in every store: the best-so-far mean objective against the number of
candidates (median and 5–95 % band over 200 random candidate orders, lopt_trace.tune.tuning_curve),
whether it plateaued, the selected candidate (near-tie rule) with its tied-set size, and its score
on the validation problems. With ``--docs`` the figure of each task goes to
``docs/tuning-curves-<task>.png`` (next to ``--doc``) (bokeh's PNG export through headless Chromium,
``lopt_trace.report.chrome_webdriver``) and its table
replaces the block between ``<!-- tuning-curves:<task>:begin -->`` and
``<!-- tuning-curves:<task>:end -->`` in docs/tuning.md (a task without a block gets one before
``<!-- tuning-curves:insert -->``). Every number in that block comes from here, never by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from lopt_trace.compare import tuning_figure
from lopt_trace.tune import read_tune_store, selected_config, tuning_curve

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
INSERT = "<!-- tuning-curves:insert -->"


def _pm(mean: float, sem: float) -> str:
    return f"{mean:.4g} ± {sem:.2g}"


def search_seconds(ds) -> float:
    """Seconds the search's evaluator calls took, over all sessions (compilation included; the
    validation runs and the checkpoint writes are not)."""
    return float(ds.attrs["compile_seconds"]) + float(ds.attrs["eval_seconds"])


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def rows(store: str | Path) -> tuple[str, list[str], dict]:
    """``(task, markdown rows, {optimizer: tuning curve})`` of one tune store."""
    results = read_tune_store(store)
    task, out, curves = None, [], {}
    for name, ds in results.items():
        task = ds.attrs["task"]
        curve = tuning_curve(ds)
        curves[name] = curve
        best = selected_config(ds)
        theta = ", ".join(f"{k}={v:.4g}" for k, v in best["theta"].items() if k in ds.attrs["search_space"])
        low = int(best["lowest_mean_sample"])
        how = best["selected_by"]
        if best["sample"] != low:  # how close it is to the lowest mean, in the rule's own terms
            gap = best["objective"] - float(ds["mean_objective"].values[low])
            sem = float(ds["paired_sem"].values[best["sample"]])
            how += f" (+{gap:.2g} above the lowest mean, paired sem {sem:.2g})"
        val = best.get("validation")
        val_text = (f"{_pm(val['mean'], val['sem'])} ({val['problems']}); lowest mean: {val['lowest_mean']:.4g}"
                    if val else "—")
        verdict = "plateaued" if curve.attrs["plateaued"] else "**not plateaued**"
        out.append(
            f"| {name} | {ds.attrs['samples']} × {ds.attrs['problems']} | "
            f"{float(ds['mean_objective'].values[low]):.4g} (#{low}) | {theta} (#{best['sample']}) | "
            f"{_pm(best['objective'], best['sem'])} | {how} | "
            f"{best['tied_count']} | {val_text} | {int(ds.attrs['failed_total'])} | "
            f"{float(ds.attrs['candidates_per_second']):.3g} | {_duration(search_seconds(ds))} | "
            f"{100 * curve.attrs['improvement_last_half']:.2f} % | {verdict} |")
    if task is None:
        raise SystemExit(f"{store}: no tuning results")
    return task, out, curves


def table(task: str, store: str | Path, lines: list[str]) -> str:
    """The markdown block of one task."""
    head = (f"Task **{task}**, from `{Path(store).as_posix()}` (`python scripts/tuning_curves.py "
            f"{Path(store).as_posix()} --docs`).\n\n"
            f"![{task} tuning curves](tuning-curves-{task}.png)\n\n"
            "| optimizer | samples × problems | lowest mean (#sample) | selected θ (#sample) | "
            "selected: mean ± sem over problems | chosen by | tied set | validation mean ± sem "
            "(problems) | diverged | candidates/s | search time | last-half improvement | curve |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    return head + "\n".join(lines) + "\n"


def update_docs(task: str, block: str, doc: Path) -> None:
    """Replace (or insert) the task's block in ``doc``."""
    text = doc.read_text()
    begin, end = f"<!-- tuning-curves:{task}:begin -->", f"<!-- tuning-curves:{task}:end -->"
    new = f"{begin}\n{block}{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: new, text)
    elif INSERT in text:
        text = text.replace(INSERT, f"{new}\n\n{INSERT}")
    else:
        raise SystemExit(f"{doc} has neither a block for {task} nor the marker {INSERT}")
    doc.write_text(text)


def save_png(fig, path: Path) -> None:
    """``fig`` as a PNG, through bokeh's export and the report's headless Chromium."""
    from lopt_trace.report import export_pngs

    export_pngs([(fig, path)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stores", nargs="+", help="tune stores (lopt-trace tune --out)")
    p.add_argument("--docs", action="store_true",
                   help="write docs/tuning-curves-<task>.png and update docs/tuning.md")
    p.add_argument("--doc", default=str(DOCS / "tuning.md"), help="markdown file to update (default docs/tuning.md)")
    args = p.parse_args(argv)
    for store in args.stores:
        task, lines, curves = rows(store)
        shown = Path(store).resolve()
        shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else Path(store)
        block = table(task, shown, lines)
        print(block)
        if args.docs:
            png = Path(args.doc).parent / f"tuning-curves-{task}.png"
            save_png(tuning_figure(curves), png)
            update_docs(task, block, Path(args.doc))
            print(f"wrote {png} and the {task} block of {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
