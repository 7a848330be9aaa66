"""State space tab: PCA trajectories of the optimizer state (paper Fig. 3a).

The principal components come from ``/analysis/momentum`` when it was computed for the chosen
optimizer, and are otherwise computed here by the recipes' own PCA
(:func:`lopt_trace.analysis.group_pca`: one streaming pass, memory O(units²)). Every recorded state (run, step, parameter) is projected and drawn, coloured by
step, run, tensor or kind; clouds of more than ``RASTERIZE_ABOVE`` points are rasterized with
datashader so that millions of points stay fluid. Fixed points are overlaid: g* = 0 from
``/analysis/momentum`` and the g* sweep (the S-curve) from ``/analysis/adaptation``. The total
variance of the state across runs is shown over steps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from lopt_trace.analysis.pca import group_pca, project
from lopt_trace.analysis.sampling import initial_state
from lopt_trace.dashboard._common import (HEIGHT, RASTERIZE_ABOVE, SMALL, WIDTH, hv, missing,
                                          notice, optimizer_select, palette, pn, strings, widget)

COLOR_BY = ("step", "run", "tensor", "kind")
#: at most this many (run, step, param) points are read for the cloud; beyond, parameters are
#: thinned evenly
MAX_POINTS = 4_000_000
#: trajectories are drawn as lines (not only points) up to this many (run, param) pairs
MAX_PATHS = 400


def pca_info(view, name: str) -> tuple[xr.Dataset, xr.DataArray, str]:
    """``(pcs, total_variance, source)`` for group ``name``: ``pcs`` has ``pca_mean``,
    ``components``, ``explained_variance_ratio``. From ``/analysis/momentum`` when it has them,
    else from :func:`lopt_trace.analysis.group_pca`, the recipes' own PCA, over every recorded run."""
    mom = view.analysis("momentum", name)
    keep = ["pca_mean", "components", "explained_variance_ratio"]
    if mom is not None and all(k in mom for k in keep) and "total_variance" in mom:
        return mom[keep], mom["total_variance"], "from /analysis/momentum"
    pcs, tv = group_pca(view.tree, name, complete_only=False)
    return pcs[keep], tv, "computed here (one streaming pass over `state`)"


def _thin(ds: xr.Dataset, max_points: int) -> xr.Dataset:
    n = ds.sizes["run"] * ds.sizes["step"] * ds.sizes["param"]
    if n <= max_points:
        return ds
    stride = int(np.ceil(n / max_points))
    return ds.isel(param=slice(0, None, stride))


def trajectory_points(view, name: str, pcs: xr.Dataset, max_points: int = MAX_POINTS,
                      n_components: int = 3) -> pd.DataFrame:
    """One row per recorded state: ``PC 1``.. (as many as there are), ``step``, ``run``, ``tensor``,
    ``kind``, ``trajectory`` (an id per (run, param))."""
    ds = _thin(view.group(name), max_points)
    k = min(n_components, pcs.sizes["component"])
    proj = project(ds["state"], pcs, k).transpose("run", "step", "param", "component")
    values = np.asarray(proj.values, dtype=np.float32)
    nr, ns, npar = values.shape[:3]
    runs = np.asarray(ds["run"].values)
    steps = np.asarray(ds["step"].values)
    tensors = np.array(strings(ds["param_tensor"].values), dtype=object)
    kinds = np.array(strings(ds["param_kind"].values), dtype=object)
    frame = {f"PC {i + 1}": values[..., i].ravel() for i in range(k)}
    frame["step"] = np.broadcast_to(steps[None, :, None], (nr, ns, npar)).ravel()
    frame["run"] = pd.Categorical(np.broadcast_to(runs[:, None, None], (nr, ns, npar)).ravel().astype(str))
    frame["tensor"] = pd.Categorical(np.broadcast_to(tensors[None, None, :], (nr, ns, npar)).ravel())
    frame["kind"] = pd.Categorical(np.broadcast_to(kinds[None, None, :], (nr, ns, npar)).ravel())
    traj = np.arange(nr)[:, None, None] * npar + np.arange(npar)[None, None, :]
    frame["trajectory"] = np.broadcast_to(traj, (nr, ns, npar)).ravel()
    return pd.DataFrame(frame)


def initial_projection(view, name: str, pcs: xr.Dataset, k: int) -> np.ndarray:
    return np.asarray(project(initial_state(view.group(name)), pcs, k).values)


def fixed_point_projections(view, name: str, pcs: xr.Dataset, k: int) -> dict:
    """``{"g0": (n, k) array or None, "sweep": {arm: (g*, (m, k) array)} or None}``."""
    out = {"g0": None, "sweep": None}
    mom = view.analysis("momentum", name)
    if mom is not None and "fixed_point_state" in mom:
        out["g0"] = np.atleast_2d(np.asarray(project(mom["fixed_point_state"], pcs, k)
                                             .transpose("fixed_point", "component").values))
    ad = view.analysis("adaptation", name)
    if ad is not None and "fixed_point" in ad:
        proj = project(ad["fixed_point"], pcs, k)
        out["sweep"] = {str(arm): (np.asarray(ad["g_star"].sel(arm=arm).values),
                                   np.asarray(proj.sel(arm=arm).transpose("g_abs", "component").values))
                        for arm in ad["arm"].values}
    return out


def trajectory_plot(df: pd.DataFrame, color_by: str = "step", x: str = "PC 1", y: str = "PC 2",
                    rasterize_above: int = RASTERIZE_ABOVE, fixed: dict | None = None,
                    h0: np.ndarray | None = None, title: str = "optimizer state trajectories"):
    """The cloud of projected states coloured by ``color_by``, trajectories as faint lines when
    few, fixed points (g* = 0: red stars; g* sweep: a line per arm) and h0 (black triangle)."""
    h = hv()
    if y not in df:  # a one-dimensional state: PC 1 against step
        y = "step"
    vdims = [y] + [c for c in ("step", "run", "tensor", "kind") if c not in (x, y)]
    pts = h.Points(df, kdims=[x, y], vdims=[c for c in vdims if c != y])
    cat = color_by != "step"
    layers = []
    if len(df) > rasterize_above:
        plot = _raster(pts, color_by, cat)
        layers.append(plot)
    else:
        ntraj = df["trajectory"].nunique()
        if ntraj <= MAX_PATHS:
            paths = [g[[x, y]].values for _, g in df.sort_values("step").groupby("trajectory", sort=False)]
            if h0 is not None and y != "step" and len(h0) > max(_pc(x), _pc(y)):  # paths start at h0
                start = np.array([[h0[_pc(x)], h0[_pc(y)]]])
                paths = [np.concatenate([start, p]) for p in paths]
            layers.append(h.Path(paths, kdims=[x, y]).opts(color="gray", alpha=0.25, line_width=1))
        if cat:
            cats = list(df[color_by].cat.categories) if hasattr(df[color_by], "cat") else sorted(set(df[color_by]))
            cmap = dict(zip(cats, palette(len(cats))))
            layers.append(pts.opts(color=color_by, cmap=cmap, size=4, alpha=0.8, tools=["hover"],
                                   legend_position="right", show_legend=len(cats) <= 20))
        else:
            layers.append(pts.opts(color=color_by, cmap="viridis", size=4, alpha=0.8, colorbar=True,
                                   tools=["hover"]))
    if y != "step":
        xi, yi = _pc(x), _pc(y)
        if fixed and fixed.get("sweep"):
            for arm, (gstar, p) in fixed["sweep"].items():
                if p.shape[1] > max(xi, yi):
                    layers.append(h.Curve((p[:, xi], p[:, yi]), x, y, label=f"fixed points, g* {arm}")
                                  .opts(color="#d62728" if arm == "positive" else "#1f77b4", line_width=3))
        if fixed and fixed.get("g0") is not None and fixed["g0"].shape[1] > max(xi, yi):
            g0 = fixed["g0"]
            layers.append(h.Scatter((g0[:, xi], g0[:, yi]), x, y, label="fixed points, g* = 0")
                          .opts(color="red", marker="star", size=16, line_color="black"))
        if h0 is not None and len(h0) > max(xi, yi):
            layers.append(h.Scatter(([h0[xi]], [h0[yi]]), x, y, label="initial state h0")
                          .opts(color="black", marker="triangle", size=12))
    size = dict(title=title, width=WIDTH + 260, height=HEIGHT + 140, show_grid=True)
    if isinstance(layers[0], h.DynamicMap):  # rasterized: a DynamicMap of overlays takes the options
        return h.Overlay(layers).collate().opts(**size)
    return h.Overlay(layers).opts(legend_position="right", **size)


def _pc(label: str) -> int:
    """0-based component index of a "PC n" label."""
    return int(label.split()[-1]) - 1


def _raster(pts, color_by: str, categorical: bool):
    """Rasterize (datashader) a large cloud: mean step, or counts by category."""
    try:  # only for large clouds: datashader (numba) is slow to import, and may be missing
        import datashader as ds
        from holoviews.operation.datashader import datashade, dynspread, rasterize
    except ImportError:  # datashader missing: draw an even subsample
        n = len(pts)
        return pts.iloc[::int(np.ceil(n / RASTERIZE_ABOVE))].opts(color=color_by, size=2, alpha=0.5)
    if categorical:
        cats = list(pts.data[color_by].cat.categories)
        key = dict(zip(cats, palette(len(cats))))
        return dynspread(datashade(pts, aggregator=ds.count_cat(color_by), color_key=key,
                                   min_alpha=60), threshold=0.5)
    return rasterize(pts, aggregator=ds.mean(color_by)).opts(cmap="viridis", colorbar=True,
                                                            tools=["hover"], clabel=color_by)


def variance_plot(tv: xr.DataArray):
    h = hv()
    return h.Curve((tv["step"].values, np.asarray(tv.values, dtype=float)), "step",
                   "total variance across runs").opts(title="total state variance across runs",
                                                      tools=["hover"], show_grid=True, **SMALL)


def explained_plot(pcs: xr.Dataset, n: int = 10):
    h = hv()
    r = np.asarray(pcs["explained_variance_ratio"].values[:n], dtype=float)
    return h.Bars((np.arange(1, len(r) + 1).astype(str), r), "component", "explained variance ratio").opts(
        title="PCA: explained variance", tools=["hover"], **SMALL)


def prepared(view, name: str):
    """Everything the tab draws for group ``name`` (cached in the view until it is refreshed):
    ``(pcs, total_variance, source, points, fixed points, h0 projection, components)``."""
    key = ("state_space", name)
    if key not in view.cache:
        pcs, tv, source = pca_info(view, name)
        k = min(3, pcs.sizes["component"])
        df = trajectory_points(view, name, pcs, n_components=k)
        fixed = fixed_point_projections(view, name, pcs, k)
        h0 = initial_projection(view, name, pcs, k)
        view.cache[key] = (pcs, tv, source, df, fixed, h0, k)
    return view.cache[key]


def build(view, rebuild=None):
    """The State space tab."""
    panel = pn()
    if not view.optimizers:
        return notice("No optimizer groups under `/runs`: nothing to show.", "danger")
    opt = optimizer_select(view)
    color = widget(panel.widgets.Select, "colour by", options=list(COLOR_BY), value="step", width=140)

    def content(name, color_by):
        if not view.has_variable(name, "state"):
            return notice(f"`/runs/{name}` has no `state` array: nothing to project.", "warning")
        pcs, tv, source, df, fixed, h0, k = prepared(view, name)
        main = trajectory_plot(df, color_by, "PC 1", "PC 2" if k > 1 else "step", fixed=fixed, h0=h0,
                               title=f"{name}: state trajectories on the principal components")
        evr = pcs["explained_variance_ratio"].values
        pcs_text = "PC 1 explains" if k == 1 else f"PC 1–{k} explain"
        info = (f"{len(df):,} states ({df['trajectory'].nunique():,} trajectories) · PCA {source} · "
                f"{pcs_text} {100 * float(np.sum(evr[:k])):.1f}% of the variance"
                + (" · rasterized with datashader" if len(df) > RASTERIZE_ABOVE else ""))
        notes = []
        if fixed["g0"] is None:
            notes.append(missing(view, "momentum", "Fixed points at g* = 0", name, rebuild))
        if fixed["sweep"] is None:
            notes.append(missing(view, "adaptation", "The g* sweep of fixed points", name, rebuild))
        return panel.Column(
            panel.pane.Markdown(info),
            panel.Row(panel.pane.HoloViews(main, name="state-trajectories"),
                      panel.Column(panel.pane.HoloViews(variance_plot(tv), name="total-variance"),
                                   panel.pane.HoloViews(explained_plot(pcs), name="explained-variance"))),
            *notes)

    return panel.Column(panel.Row(opt, color), panel.bind(content, opt, color), name="State space")
