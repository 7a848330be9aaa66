"""Overview tab: what the store holds, and the loss curves (mean ± sem over runs) of every
optimizer. Loss curves come from ``/analysis/performance`` when it is there (with the
meta-objectives), and are otherwise computed from the (small) ``loss`` arrays directly."""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from lopt_trace.dashboard._common import (HEIGHT, WIDTH, hv, missing, palette, pn,
                                          strings, widget)
from lopt_trace.dashboard.data import human_bytes


def store_summary(view) -> dict:
    """Task, optimizers, runs, steps, store size and the analyses present, as label -> text."""
    a = view.attrs
    names = view.optimizers
    runs = {n: view.group(n).sizes.get("run", 0) for n in names}
    out = {
        "store": view.label,
        "task": f"{a.get('task', '?')} {a.get('task_config', '')}",
        "optimizers": ", ".join(f"{n} ({view.tree[f'runs/{n}'].attrs.get('source', '?')})" for n in names)
        or "none",
        "runs": ", ".join(f"{n}: {r}" for n, r in runs.items()) or "0",
        "steps": f"{a.get('steps', '?')} (per-parameter arrays every {a.get('every', 1)} step(s))",
        "parameters kept per tensor": ("all" if a.get("params_per_tensor", -1) in (-1, None, "all")
                                       else str(a.get("params_per_tensor"))),
        "store size": human_bytes(view.size_bytes()),
        "analyses": ", ".join(view.analyses) or "none yet (`lopt-trace analyze all STORE`)",
        "created": str(a.get("created", "?")),
        "schema version": str(a.get("schema_version", "?")),
    }
    return out


def _sem(x: np.ndarray) -> np.ndarray:
    n = np.sum(np.isfinite(x), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(x, axis=0, ddof=1) / np.sqrt(n)


def loss_data(view, names: list[str] | None = None) -> xr.Dataset:
    """``loss_mean``, ``loss_sem`` over ``(optimizer, loss_step)``, and the meta-objective when
    ``/analysis/performance`` has it. Reads only the ``loss`` arrays."""
    names = list(names) if names is not None else view.optimizers
    perf = view.analysis("performance")
    have = set(strings(perf["optimizer"].values)) if perf is not None else set()
    parts = []
    for name in names:
        if name in have:
            d = perf.sel(optimizer=name)
            keep = ["loss_mean", "loss_sem"] + [v for v in ("meta_objective_mean", "meta_objective_sem",
                                                           "final_loss_mean", "final_loss_sem")
                                              if v in d]
            d = d[keep]
            d = d.drop_vars([c for c in d.coords if c != "loss_step"])
            d = d.dropna("loss_step", how="all", subset=["loss_mean"])
        else:
            loss = view.group(name)["loss"].astype(np.float64).values
            finite = np.where(np.isfinite(loss), loss, np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(finite, axis=0)
            sem = _sem(finite)
            d = xr.Dataset({"loss_mean": ("loss_step", mean), "loss_sem": ("loss_step", sem),
                            "final_loss_mean": mean[-1], "final_loss_sem": sem[-1]},
                           coords={"loss_step": view.group(name)["loss_step"].values})
        parts.append(d.expand_dims(optimizer=np.array([name], dtype=object)))
    if not parts:
        return xr.Dataset()
    out = xr.concat(parts, dim="optimizer", join="outer")
    out.attrs["source"] = "analysis/performance" if have.issuperset(names) else "loss arrays"
    return out


def loss_plot(data: xr.Dataset, logy: bool = True):
    """One curve (mean) and one band (± sem) per optimizer."""
    h = hv()
    names = strings(data["optimizer"].values) if "optimizer" in data.dims else []
    colours = palette(len(names))
    layers = []
    for name, colour in zip(names, colours):
        d = data.sel(optimizer=name)
        step, mean = d["loss_step"].values, d["loss_mean"].values
        sem = np.nan_to_num(d["loss_sem"].values)
        ok = np.isfinite(mean) & ((mean > 0) if logy else True)
        step, mean, sem = step[ok], mean[ok], sem[ok]
        lower = np.minimum(sem, 0.999 * mean) if logy else sem  # the band stays positive on log axes
        layers.append(h.Spread((step, mean, lower, sem), "step", ["loss", "neg", "pos"], label=name)
                      .opts(color=colour, alpha=0.25, line_alpha=0))
        layers.append(h.Curve((step, mean), "step", "loss", label=name).opts(color=colour, line_width=2))
    if not layers:
        return h.Curve([], "step", "loss").opts(title="no optimizer groups in the store")
    return h.Overlay(layers).opts(
        title="training loss on test problems (mean ± sem over runs)", logy=logy, width=WIDTH + 160,
        height=HEIGHT + 40, legend_position="right", tools=["hover"], show_grid=True)


def meta_objective_plot(data: xr.Dataset):
    """Bars of the meta-objective (mean f_k / f_0, lower is better) per optimizer."""
    h = hv()
    names = strings(data["optimizer"].values)
    vals = data["meta_objective_mean"].values.astype(float)
    ok = np.isfinite(vals)
    return h.Bars((np.array(names, dtype=object)[ok], vals[ok]), "optimizer", "meta-objective").opts(
        title="meta-objective: mean f_k / f_0 (lower is better)", width=WIDTH - 100, height=HEIGHT + 40,
        tools=["hover"], color="#4c72b0")


def meta_train_plot(view):
    """The meta-training history (meta-loss over iterations), when the store has /meta_train."""
    if "meta_train" not in view.tree.children:
        return None
    ds = view.tree["meta_train"].to_dataset(inherit=False)
    if "meta_loss" not in ds:
        return None
    h = hv()
    loss = ds["meta_loss"].astype(np.float64).values
    it = ds[ds["meta_loss"].dims[0]].values if ds["meta_loss"].dims[0] in ds.coords else np.arange(len(loss))
    return h.Curve((it, loss), "iteration", "meta-loss").opts(
        title="meta-training", width=WIDTH - 100, height=HEIGHT + 40, tools=["hover"], logy=bool(np.all(loss[np.isfinite(loss)] > 0)))


def final_table(data: xr.Dataset) -> str:
    """Markdown table: final loss (mean ± sem) and meta-objective per optimizer."""
    rows = ["| optimizer | final loss (mean ± sem) | meta-objective |", "| --- | --- | --- |"]
    for name in strings(data["optimizer"].values):
        d = data.sel(optimizer=name)
        fl = f"{float(d['final_loss_mean']):.4g} ± {float(d['final_loss_sem']):.2g}" \
            if "final_loss_mean" in d else "n/a"
        mo = (f"{float(d['meta_objective_mean']):.4g}" if "meta_objective_mean" in d
              and np.isfinite(float(d["meta_objective_mean"])) else "n/a")
        rows.append(f"| {name} | {fl} | {mo} |")
    return "\n".join(rows)


def build(view, rebuild=None):
    """The Overview tab (``rebuild`` re-creates the tab after an analysis was computed)."""
    panel = pn()
    summary = store_summary(view)
    table = "\n".join(["| store | |", "| --- | --- |"] + [f"| **{k}** | {v} |" for k, v in summary.items()])
    names = view.optimizers
    if not names:
        return panel.Column(panel.pane.Markdown(table), missing_runs(), name="Overview")
    choose = widget(panel.widgets.MultiChoice, "optimizers", options=names, value=names, width=360)
    logy = widget(panel.widgets.Checkbox, "log loss axis", value=True)
    data = loss_data(view)

    def plot(chosen, log):
        chosen = [n for n in names if n in chosen] or names[:1]
        return panel.pane.HoloViews(loss_plot(data.sel(optimizer=chosen), log), name="loss-curves")

    extra = []
    if "meta_objective_mean" in data:
        extra.append(meta_objective_plot(data))
    mt = meta_train_plot(view)
    if mt is not None:
        extra.append(mt)
    parts = [panel.Row(panel.pane.Markdown(table, width=560),
                       panel.Column(panel.pane.Markdown("#### Final losses"),
                                    panel.pane.Markdown(final_table(data), width=440))),
             panel.Row(choose, logy),
             panel.Row(panel.bind(plot, choose, logy), *[panel.pane.HoloViews(e) for e in extra])]
    if view.analysis("performance") is None:
        parts.append(missing(view, "performance", "Meta-objectives", on_computed=rebuild))
    return panel.Column(*parts, name="Overview")


def missing_runs():
    return pn().pane.Alert("This store has no optimizer groups under `/runs`: record some with "
                           "`lopt-trace record --task TASK`.", alert_type="danger")
