"""Comparing optimizers on held-out problems: loss curves, the mean ± sem table, and Fig. 1.

The pieces are separate so that other commands reuse them: :func:`summarize` takes any loss
DataArray with dims ``run`` and ``loss_step`` (a recorded store's ``/runs/<optimizer>/loss``
works as well as the output of :func:`loss_curves`), and works lazily on Dask-backed data.

Per run (problem): the meta-objective is mean_k f_k / f_0 over k = 1..K (non-finite: inf), the
same number as :func:`lopt_trace.unroll.meta_objective`; the final loss is f_K. The table gives
their mean and standard error of the mean (sem = sample std / √n) over runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import jax
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from lopt_trace import bundled
from lopt_trace import seeds as seedlib
from lopt_trace.defaults import ALL_OPTIMIZERS, COMPARE_OPTIMIZERS
from lopt_trace.errors import UserError
from lopt_trace.optimizers import ComponentwiseOptimizer, sources
from lopt_trace.optimizers.optax_wrap import is_optax_spec
from lopt_trace.store.template import to_json_types
from lopt_trace.store.zarr_io import exists, open_tree
from lopt_trace.tasks.base import Task
from lopt_trace.tune import read_tune_store, sample_problems
from lopt_trace.unroll import loss_curve

#: the optimizers Fig. 1 shows, in order
DEFAULT_OPTIMIZERS = COMPARE_OPTIMIZERS
#: one optimizer: label (``name``), optimizer, θ and where θ came from
Entry = sources.Entry


def learned_entry(task: str, path: str | os.PathLike | None = None, variant: str = "learned") -> Entry:
    """The learned optimizer from ``path`` (default: the bundled ``variant`` for ``task``)."""
    if path:
        return sources.file_entry(task, path, variant, str(path), variant)
    return sources.file_entry(task, bundled.optimizer_path(task, variant), variant, "bundled", variant)


def baseline_entry(task: str, name: str, tuned_file: str | os.PathLike | None = None,
                   untuned: bool = False) -> Entry | None:
    """A baseline with its tuned θ; with ``untuned``, its default θ when no tuned entry exists.

    Returns None when there is no tuned entry and ``untuned`` is false.
    """
    try:
        return sources.baseline_entry(task, name, tuned_file, untuned)
    except sources.Unavailable:
        return None


def resolve(task: str, names: list[str] | None = None, learned: str | None = None,
            tuned_file: str | None = None, untuned: bool = False,
            strict: bool | None = None) -> tuple[list[Entry], list[str]]:
    """The entries to compare (:func:`lopt_trace.optimizers.sources.resolve`), and notes about the
    ones skipped.

    With ``strict`` (default: true when ``names`` is given) every named optimizer must exist;
    otherwise (the default set) a missing learned optimizer or tuned baseline is skipped with a
    note. A ``learned`` path must always exist.
    """
    explicit = (names is not None) if strict is None else bool(strict)
    names = list(names or DEFAULT_OPTIMIZERS)
    entries, notes = [], []
    for name in names:
        if not (name in ALL_OPTIMIZERS or is_optax_spec(name)):
            raise UserError(f"unknown optimizer {name!r}; choose from: {', '.join(ALL_OPTIMIZERS)}, optax:NAME")
        if name in bundled.LEARNED and not explicit and not (name == "learned" and learned):
            path = bundled.optimizer_path(task, name)
            if not Path(path).exists():
                notes.append(f"no bundled learned optimizer for {task} at {path}; skipped it (train one "
                             f"with `lopt-trace train --task {task}` and pass --learned PATH)"
                             if name == "learned" else
                             f"no warm-started learned optimizer is bundled for {task}; skipped it")
                continue
        try:
            entry = sources.resolve(name, task, tuned_file=tuned_file, untuned=untuned, learned_file=learned)
        except sources.Unavailable as exc:
            if explicit:
                raise
            notes.append(str(exc).replace("; run", "; skipped it (run", 1) + ")")
            continue
        if is_optax_spec(name):
            entry.name = name  # labelled by the spec as given
        entries.append(entry)
    if not entries:
        raise UserError(f"nothing to compare on {task}: " + " ".join(notes))
    return entries, notes


def _curves_fn(task: Task, opt: ComponentwiseOptimizer, steps: int):
    return jax.jit(jax.vmap(lambda theta, p: loss_curve(task, opt, theta, p, steps), in_axes=(None, 0)))


def loss_curves(task: Task, entries: list[Entry], seeds, steps: int | None = None,
                batch: int | None = None, progress: bool = True) -> xr.Dataset:
    """Loss curves f_0..f_K of every entry on the problems of ``seeds``.

    Returns a Dataset with ``loss (optimizer, run, loss_step)`` (float64 of the float32 losses),
    coords ``optimizer`` (labels), ``run`` (seeds), ``loss_step`` (0..K) and ``source``
    (optimizer), plus ``seconds (optimizer)``, the wall time of each optimizer's runs.
    """
    steps = int(steps or task.default_steps)
    seeds = np.asarray(seeds, np.int64)
    problems = sample_problems(task, seeds)
    n = len(seeds)
    batch = int(batch or max(1, min(n, 2**22 // max(1, task.num_params))))
    curves = np.empty((len(entries), n, steps + 1), np.float64)
    seconds = np.zeros(len(entries))
    with tqdm(total=len(entries) * n, desc=f"compare {task.name}", unit="run", disable=not progress) as bar:
        for i, entry in enumerate(entries):
            fn = _curves_fn(task, entry.optimizer, steps)
            theta = jax.tree.map(jax.numpy.asarray, entry.theta)
            start = time.perf_counter()
            for lo in range(0, n, batch):
                hi = min(n, lo + batch)
                chunk = jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], problems)
                curves[i, lo:hi] = np.asarray(jax.block_until_ready(fn(theta, chunk)))
                bar.update(hi - lo)
            seconds[i] = time.perf_counter() - start
    return _curves_dataset(task, entries, curves, seconds, seeds)


def _curves_dataset(task: Task, entries: list[Entry], loss: np.ndarray, seconds: np.ndarray, seeds,
                    reused: np.ndarray | None = None) -> xr.Dataset:
    coords = {"optimizer": ("optimizer", np.array([e.label for e in entries], dtype=object)),
              "source": ("optimizer", np.array([e.source for e in entries], dtype=object),
                         {"long_name": "where θ came from"}),
              "run": ("run", np.asarray(seeds, np.int64), {"long_name": "problem seed (held-out range)", "units": "1"}),
              "loss_step": ("loss_step", np.arange(loss.shape[-1], dtype=np.int64),
                            {"long_name": "inner step k", "units": "1"})}
    if reused is not None:
        coords["reused"] = ("optimizer", np.asarray(reused, bool),
                            {"long_name": "curves read from a saved comparison (--reuse), not re-run"})
    return xr.Dataset(
        {"loss": (("optimizer", "run", "loss_step"), loss,
                  {"long_name": "training loss f(x_k) on step k's batch", "units": "1"}),
         "seconds": ("optimizer", seconds, {"long_name": "wall time of the runs", "units": "s"})},
        coords=coords, attrs={"task": task.name, "task_config": task.config(), "steps": loss.shape[-1] - 1})


def per_run(loss: xr.DataArray) -> xr.Dataset:
    """``meta_objective`` and ``final_loss`` per run from a loss DataArray (..., run, loss_step)."""
    f0 = loss.isel(loss_step=0, drop=True)
    meta = loss.isel(loss_step=slice(1, None)).mean("loss_step", skipna=False) / f0
    meta = meta.where(np.isfinite(meta), np.inf)
    final = loss.isel(loss_step=-1, drop=True)
    return xr.Dataset({
        "meta_objective": meta.assign_attrs(long_name="mean_k f_k / f_0, k = 1..K (non-finite: inf)", units="1"),
        "final_loss": final.assign_attrs(long_name="final loss f_K", units="1"),
    })


def summarize(loss: xr.DataArray, dim: str = "run") -> xr.Dataset:
    """Mean and sem over ``dim`` of the per-run meta-objective and final loss.

    Returns ``meta_objective_mean``, ``meta_objective_sem``, ``final_loss_mean``,
    ``final_loss_sem`` and ``runs`` over the remaining dims (e.g. ``optimizer``).
    """
    runs = per_run(loss)
    n = loss.sizes[dim]
    out = xr.Dataset()
    for name in ("meta_objective", "final_loss"):
        v = runs[name]
        label = name.replace("_", " ")
        out[f"{name}_mean"] = v.mean(dim, skipna=False).assign_attrs(long_name=f"{label}, mean over {dim}s", units="1")
        # a diverged run (inf or nan) makes the mean inf or nan and the sem nan, without warnings
        finite = np.isfinite(v)
        sem = v.where(finite, 0.0).std(dim, ddof=1) / math.sqrt(n) if n > 1 else v.mean(dim) * np.nan
        sem = sem.where(finite.all(dim))
        out[f"{name}_sem"] = sem.assign_attrs(long_name=f"{label}, standard error of the mean", units="1")
    out["runs"] = xr.Variable((), np.int64(n), {"long_name": f"number of {dim}s", "units": "1"})
    return out


def format_table(summary: xr.Dataset, dim: str = "optimizer", tuning: dict[str, str] | None = None) -> str:
    """A plain-text table, one row per optimizer, best meta-objective marked with ``*``.

    ``tuning`` (label -> ``"plateaued"``, ``"not plateaued"`` or ``"no curve"``, from
    :func:`tuning_status`) adds a column saying whether each tuned baseline's tuning curve
    reached a plateau; optimizers it does not name get ``—``.
    """
    summary = summary.compute()
    labels = [str(v) for v in summary[dim].values]
    meta = summary["meta_objective_mean"].values
    best = int(np.nanargmin(meta)) if np.any(np.isfinite(meta)) else -1
    sources = summary["source"].values if "source" in summary.coords else [""] * len(labels)
    width = max(12, 2 + max(len(label) for label in labels) + 1)  # room for '*' and a gap
    extra = f"{'tuning':>16}" if tuning else ""
    rows = [f"{'optimizer':<{width}}{'source':<10}{'meta-objective':>26}{'final loss':>28}{extra}",
            "-" * (width + 64 + len(extra))]
    for i, label in enumerate(labels):
        m = f"{meta[i]:.4g} ± {summary['meta_objective_sem'].values[i]:.2g}"
        f = f"{summary['final_loss_mean'].values[i]:.4g} ± {summary['final_loss_sem'].values[i]:.2g}"
        t = f"{tuning.get(label, '—'):>16}" if tuning else ""
        rows.append(f"{label + ('*' if i == best else ''):<{width}}{sources[i]!s:<10}{m:>26}{f:>28}{t}")
    rows.append(f"mean ± sem over {int(summary['runs'])} held-out problems; * lowest meta-objective")
    if tuning:
        rows.append("tuning: whether the baseline's tuning curve (best-so-far against candidates) "
                    "reached a plateau (docs/tuning.md); 'not plateaued': more tuning may still pay")
    return "\n".join(rows)


def tuned_entries(task: str, tuned_file: str | os.PathLike | None = None) -> tuple[dict, Path]:
    """The ``optimizers`` mapping of the tuned-hyperparameter file for ``task`` and its path."""
    path = Path(tuned_file) if tuned_file else bundled.tuned_path(task)
    return sources.read_tuned(path)["optimizers"], path


def tuning_status(task: str, entries: list[Entry], tuned_file: str | os.PathLike | None = None) -> dict[str, str]:
    """For each tuned baseline among ``entries``: ``"plateaued"`` or ``"not plateaued"`` (the
    verdict :func:`lopt_trace.tune.bundle_best` stored with it), or ``"no curve"`` for an entry
    bundled before tuning curves were recorded. Empty when no entry is tuned."""
    tuned = [e.label for e in entries if e.source == "tuned"]
    if not tuned:
        return {}
    data, _ = tuned_entries(task, tuned_file)
    out = {}
    for label in tuned:
        curve = (data.get(label) or {}).get("tuning_curve")
        out[label] = "no curve" if not curve else ("plateaued" if curve["plateaued"] else "not plateaued")
    return out


def tune_stores(task: str, entries: list[Entry], tuned_file: str | os.PathLike | None = None,
                stores: list[str] | None = None) -> tuple[dict[str, xr.Dataset], list[str]]:
    """The tuning datasets of the tuned baselines among ``entries``, ``{label: Dataset}``, and notes.

    From ``stores`` (tune stores) when given, else from the store each bundled entry names (its
    ``store``, relative to the working folder or the repository root). A dataset is used only when
    it is the search that chose the bundled θ (same samples, problems and creation time); a
    missing store is a note, not an error.
    """
    tuned = [e.label for e in entries if e.source == "tuned"]
    data, path = tuned_entries(task, tuned_file)
    found, notes = {}, []
    if stores:
        for store in stores:
            for name, ds in read_tune_store(store).items():
                if name in tuned and name not in found:
                    found[name] = ds
        return found, notes
    root = path.resolve().parent.parent.parent  # data/tuned/<task>.json -> the repository
    cache: dict[str, dict] = {}
    for label in tuned:
        entry = data.get(label) or {}
        if "store" not in entry:
            continue
        where = next((p for p in (Path(entry["store"]), root / entry["store"]) if p.exists()), None)
        if where is None:
            notes.append(f"tune store {entry['store']} of {label} is not here; no tuning curve for it")
            continue
        if str(where) not in cache:
            cache[str(where)] = read_tune_store(where)
        ds = cache[str(where)].get(label)
        if ds is None or any(ds.attrs.get(k) != entry.get(k) for k in ("samples", "problems", "created")):
            notes.append(f"{where} holds another {label} search than the one bundled; no tuning curve for it")
            continue
        found[label] = ds
    return found, notes


def margins(summary: xr.Dataset, reference: str = "learned", dim: str = "optimizer") -> dict[str, float]:
    """For each other optimizer: (its meta-objective − reference's) / √(sem² + sem²).

    Positive means the reference is better; the issue's bar is "more than 2" for every baseline.
    """
    s = summary.compute()
    labels = [str(v) for v in s[dim].values]
    if reference not in labels:
        return {}
    r = labels.index(reference)
    m, e = s["meta_objective_mean"].values, s["meta_objective_sem"].values
    out = {}
    for i, label in enumerate(labels):
        if i == r:
            continue
        diff = m[i] - m[r]
        if np.isnan(diff):  # both diverged
            out[label] = float("nan")
        elif not np.isfinite(diff):  # a diverged optimizer (inf) loses to a finite one
            out[label] = float(np.inf if m[i] > m[r] else -np.inf)
        else:
            out[label] = float(diff / math.sqrt(e[i] ** 2 + e[r] ** 2))
    return out


def paired_margins(loss: xr.DataArray, reference: str = "learned", dim: str = "optimizer") -> dict[str, float]:
    """Paired version of :func:`margins`: every optimizer runs on the same problems, so compare
    per problem. For each other optimizer: mean(d) / sem(d), d = its meta-objective − reference's.
    """
    meta = per_run(loss)["meta_objective"].compute()
    labels = [str(v) for v in meta[dim].values]
    if reference not in labels:
        return {}
    ref = meta.isel({dim: labels.index(reference)}).values
    out = {}
    for i, label in enumerate(labels):
        if label == reference:
            continue
        with np.errstate(invalid="ignore"):
            d = meta.isel({dim: i}).values - ref
        if not np.all(np.isfinite(d)):
            out[label] = float("nan") if np.any(np.isnan(d)) else float(np.inf if np.all(d > 0) else np.nan)
        elif len(d) < 2 or d.std(ddof=1) == 0:
            out[label] = float(np.sign(d.mean()) * np.inf) if d.mean() else 0.0
        else:
            out[label] = float(d.mean() / (d.std(ddof=1) / math.sqrt(len(d))))
    return out


def margin_lines(summary: xr.Dataset, loss: xr.DataArray, dim: str = "optimizer") -> list[str]:
    """The verdict lines of ``compare``: for each learned optimizer in the table (``learned``,
    ``learned-warm``), its margins over every baseline (the other learned ones are not
    baselines), combined and paired, and whether it beats all of them by more than 2."""
    labels = [str(v) for v in summary[dim].values]
    learned = [label for label in labels if label in bundled.LEARNED]
    lines = []
    for ref in learned:
        for kind, gaps in (("combined sem of the two means", margins(summary, ref, dim)),
                           ("sem of the per-problem differences (paired)", paired_margins(loss, ref, dim))):
            gaps = {k: v for k, v in gaps.items() if k not in learned}
            if gaps:
                text = ", ".join(f"{k} {v:+.1f}" for k, v in gaps.items())
                verdict = "beats" if all(v > 2 for v in gaps.values()) else "does NOT beat"
                lines.append(f"(baseline − {ref}) / {kind}: {text} -> {ref} {verdict} every baseline by > 2")
    return lines


COLOURS = {"learned": "#d62728", "learned-warm": "#9467bd", "sgd": "#7f7f7f", "momentum": "#1f77b4", "rmsprop": "#2ca02c",
           "adam": "#ff7f0e"}
_EXTRA = ("#8c564b", "#e377c2", "#bcbd22", "#17becf")


def figure(curves: xr.Dataset, title: str | None = None):
    """Fig. 1: mean loss curve ± sem band per optimizer, log y (a HoloViews overlay, bokeh)."""
    # HoloViews (slow to import) here and below only: comparing without a figure loads none
    import holoviews as hv
    import holoviews.plotting.bokeh

    loss = curves["loss"]
    n = loss.sizes["run"]
    with np.errstate(invalid="ignore", over="ignore"):  # diverged runs: inf mean, nan sem
        mean = loss.mean("run", skipna=False).compute()
        sem = (loss.std("run", ddof=1) / math.sqrt(n)).compute() if n > 1 else mean * 0.0
    k = curves["loss_step"].values
    layers = []
    for i, label in enumerate(str(v) for v in curves["optimizer"].values):
        colour = COLOURS.get(label, _EXTRA[i % len(_EXTRA)])
        m = mean.isel(optimizer=i).values
        s = np.nan_to_num(sem.isel(optimizer=i).values, nan=0.0, posinf=0.0)
        ok = np.isfinite(m) & (m > 0)
        floor = np.min(m[ok]) * 1e-3 if np.any(ok) else 1e-12
        m = np.where(np.isfinite(m), m, np.nan)  # a diverged curve ends where it leaves the plot
        with np.errstate(invalid="ignore"):
            lo, hi = np.maximum(m - s, floor), m + s
        layers.append(hv.Area((k, lo, hi), kdims=["step"], vdims=["loss", "loss_hi"], label=label)
                      .opts(color=colour, alpha=0.25, line_alpha=0))
        layers.append(hv.Curve((k, m), kdims=["step"], vdims=["loss"], label=label)
                      .opts(color=colour, line_width=2))
    title = title or (f"{curves.attrs.get('task', '')}: training loss, mean ± sem over {n} "
                      f"held-out problems")
    return hv.Overlay(layers).opts(logy=True, title=title, xlabel="step k", ylabel="loss f(x_k)",
                                   legend_position="top_right", width=720, height=440)


def tuning_figure(curves: dict[str, xr.Dataset], title: str | None = None):
    """Tuning curves: for each baseline the median best-so-far mean objective against the number
    of candidates, with the 5–95 % band over random candidate orders, log x and log y (a
    HoloViews overlay, bokeh). ``curves`` maps labels to :func:`lopt_trace.tune.tuning_curve`
    results; a curve without a plateau is labelled so in the legend. The y range ends at 1.5× the
    highest median, so that the plateau, not the upper band of the first few candidates (which can
    reach 10¹⁰ where a first candidate all but diverged), sets the scale."""
    import holoviews as hv
    import holoviews.plotting.bokeh

    layers, lows, medians = [], [], []
    for i, (label, c) in enumerate(curves.items()):
        colour = COLOURS.get(label, _EXTRA[i % len(_EXTRA)])
        n = c["candidates"].values
        clean = {k: np.where(np.isfinite(c[k].values), c[k].values, np.nan) for k in ("low", "median", "high")}
        lows.append(np.nanmin(clean["low"], initial=np.inf))
        medians.append(np.nanmax(clean["median"], initial=-np.inf))
        name = label if c.attrs["plateaued"] else f"{label} (not plateaued)"
        layers.append(hv.Area((n, clean["low"], clean["high"]), kdims=["candidates"],
                              vdims=["best", "best_hi"], label=name)
                      .opts(color=colour, alpha=0.2, line_alpha=0))
        layers.append(hv.Curve((n, clean["median"]), kdims=["candidates"], vdims=["best"], label=name)
                      .opts(color=colour, line_width=2))
    first = next(iter(curves.values()))
    title = title or (f"{first.attrs.get('task', '')}: tuning curves (median, 5–95 % over "
                      f"{first.attrs['permutations']} candidate orders)")
    low, top = min(lows), max(medians)
    scale = {}
    if np.isfinite(low) and np.isfinite(top) and 0 < low < top:
        bottom, ceiling = 0.9 * low, 1.5 * top
        decades = range(int(np.floor(np.log10(bottom))), int(np.ceil(np.log10(ceiling))) + 1)
        ticks = [m * 10.0**k for k in decades for m in (1, 2, 5)]  # labelled ticks within a decade or two
        scale = {"ylim": (bottom, ceiling), "yticks": [(t, f"{t:g}") for t in ticks if bottom <= t <= ceiling]}
    return hv.Overlay(layers).opts(logx=True, logy=True, **scale, title=title, xlabel="candidates evaluated",
                                   ylabel="best mean objective so far", toolbar=None,
                                   legend_position="top_right", width=720, height=440)


def save_figure(fig, path: str | os.PathLike, title: str = "lopt-trace compare",
                png: bool = False) -> tuple[list[Path], str | None]:
    """Save ``fig`` as HTML (bokeh, inline resources) at ``path`` and, with ``png``, as a PNG next
    to it (bokeh's export through headless Chromium, :func:`lopt_trace.report.export_pngs`).

    Returns the files written and a note when the PNG was asked for but could not be made (the
    HTML is written either way; check :func:`lopt_trace.report.check_png_export` first to fail
    before a long run instead).
    """
    import holoviews as hv
    import holoviews.plotting.bokeh

    path = Path(path)
    html = path.with_suffix(".html")
    html.parent.mkdir(parents=True, exist_ok=True)
    hv.save(fig, str(html), backend="bokeh", title=title, resources="inline")  # opens offline
    written, note = [html], None
    if not png:
        return written, note
    target = html.with_suffix(".png")
    try:
        from lopt_trace.report import export_pngs

        export_pngs([(fig, target)])
        written.append(target)
    except UserError as exc:  # what is missing, and how to install it
        note = f"no PNG ({exc}); wrote HTML only"
    except Exception as exc:  # noqa: BLE001  (the browser failed to start or to render)
        note = " ".join(f"no PNG ({type(exc).__name__}: {exc}); wrote HTML only".split())
    return written, note


def theta_digest(theta) -> str:
    """SHA-256 of θ: every leaf's path, dtype, shape and bytes (equal digests: the same θ)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _same(a, b) -> bool:
    return json.dumps(to_json_types(a), sort_keys=True) == json.dumps(to_json_types(b), sort_keys=True)


def open_saved(path) -> xr.DataTree:
    """A store written by ``lopt-trace compare --save``, with its curves in memory (so that the
    same path can be overwritten by the new comparison)."""
    if not exists(str(path)):
        raise UserError(f"no saved comparison at {path}; write one with `lopt-trace compare --save {path}`")
    try:
        tree = open_tree(path)
    except Exception as exc:  # noqa: BLE001  (any unreadable store: say which, in one line)
        raise UserError(f"{path} is not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    if "curves" not in tree.children:
        raise UserError(f"{path} is not a `lopt-trace compare --save` store (no /curves group)")
    return tree.load()


def reusable_curves(saved: xr.DataTree, task: Task, entries: list[Entry], seeds,
                    steps: int | None = None) -> tuple[dict[str, xr.Dataset], list[str]]:
    """The curves of ``entries`` that a store written by ``lopt-trace compare --save`` already holds.

    A saved optimizer is reused only when the run would be the same computation: the same task
    configuration and number of steps, every one of ``seeds`` among its runs, and the same label,
    optimizer configuration and θ (:func:`theta_digest`). Returns ``{label: Dataset}`` (``loss
    (run, loss_step)`` on ``seeds`` and ``seconds``, the original wall time), loaded into memory,
    and one note per saved optimizer that was requested but could not be reused, saying why.
    """
    steps = int(steps or task.default_steps)
    seeds = np.asarray(seeds, np.int64)
    attrs = saved.attrs
    if "curves" not in saved.children or "optimizer_configs" not in attrs:
        raise UserError("the --reuse store is not a `lopt-trace compare --save` store (no /curves "
                        "group or no optimizer_configs attribute)")
    curves = saved["curves"].to_dataset()
    wanted = [e for e in entries if e.label in set(curves["optimizer"].values.tolist())]
    digests = attrs.get("theta_sha256")
    if not wanted:
        return {}, []
    problem = None
    if attrs.get("task") != task.name or not _same(attrs.get("task_config"), task.config()):
        problem = f"it was run on another task configuration ({attrs.get('task')})"
    elif curves.sizes["loss_step"] != steps + 1:
        problem = f"it has {curves.sizes['loss_step'] - 1} steps, not {steps}"
    elif missing := sorted(set(seeds.tolist()) - set(curves["run"].values.tolist())):
        problem = f"it lacks {len(missing)} of the {len(seeds)} held-out seeds (first: {missing[0]})"
    elif not isinstance(digests, dict):
        problem = "it records no θ digests (saved by an older lopt-trace)"
    if problem:
        return {}, [f"not reusing {', '.join(e.label for e in wanted)} from the --reuse store: {problem}"]
    found, notes = {}, []
    for entry in wanted:
        if not _same(attrs["optimizer_configs"].get(entry.label), entry.optimizer.config()):
            notes.append(f"not reusing {entry.label} from the --reuse store: its optimizer configuration differs")
        elif digests.get(entry.label) != theta_digest(entry.theta):
            notes.append(f"not reusing {entry.label} from the --reuse store: its θ differs (other "
                         "hyperparameters or weights)")
        else:
            found[entry.label] = curves[["loss", "seconds"]].sel(optimizer=entry.label, run=seeds).load()
    return found, notes


def compare(task: Task, entries: list[Entry], seeds: int = 64, seed_base: int = 0,
            steps: int | None = None, progress: bool = True,
            reused: dict[str, xr.Dataset] | None = None) -> tuple[xr.Dataset, xr.Dataset]:
    """Curves and summary on ``seeds`` held-out problems (``test_seeds(seed_base, seeds)``).

    Entries whose label is in ``reused`` (:func:`reusable_curves`) are not run again: their saved
    curves take their place, and the ``reused (optimizer)`` coordinate says which.
    """
    test = seedlib.test_seeds(seed_base, seeds)
    reused = reused or {}
    todo = [e for e in entries if e.label not in reused]
    fresh = loss_curves(task, todo, test, steps, progress=progress) if todo else None
    steps = int(steps or task.default_steps)
    loss = np.empty((len(entries), len(test), steps + 1), np.float64)
    seconds = np.zeros(len(entries))
    for i, entry in enumerate(entries):
        part = reused.get(entry.label)
        if part is None:
            part = fresh.sel(optimizer=entry.label)
        loss[i], seconds[i] = part["loss"].values, float(part["seconds"])
    curves = _curves_dataset(task, entries, loss, seconds, test, [e.label in reused for e in entries])
    return curves, summarize(curves["loss"])
