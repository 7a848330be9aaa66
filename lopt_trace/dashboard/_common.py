"""Shared pieces of the dashboard panels: HoloViews set-up, plot sizes, colours, and the notice a
panel shows when what it needs is not in the store."""

from __future__ import annotations

import threading
import traceback

import numpy as np

#: plot sizes (pixels)
WIDTH, HEIGHT = 520, 360
SMALL = dict(width=360, height=280)
#: above this many points, clouds are rasterized (datashader) instead of drawn point by point
RASTERIZE_ABOVE = 50_000


def hv():
    """``holoviews`` with the Bokeh backend loaded."""
    from lopt_trace.analysis.plotting import holoviews

    return holoviews()


def pn():
    """``panel`` with its extension loaded once."""
    import panel

    if not getattr(pn, "_loaded", False):
        panel.extension(notifications=False)
        pn._loaded = True
    return panel


def widget(cls, label: str, **kwargs):
    """A Panel widget with a visible ``label`` (``label`` on Panel ≥ 1.8, ``name`` before)."""
    key = "label" if "label" in cls.param else "name"
    if "button_type" in kwargs and "color" in cls.param:
        kwargs["color"] = kwargs.pop("button_type")
    return cls(**{key: label}, **kwargs)


def palette(n: int) -> list[str]:
    """``n`` distinct colours (category10, then category20)."""
    from bokeh.palettes import Category10_10, Category20_20

    base = list(Category10_10) if n <= 10 else list(Category20_20)
    return [base[i % len(base)] for i in range(n)]


def strings(values) -> list[str]:
    return [str(v) for v in np.asarray(values, dtype=object).ravel()]


def finite_range(*arrays, pad: float = 0.05, log: bool = False) -> tuple[float, float] | None:
    """(lo, hi) of the finite values of ``arrays`` (positive ones when ``log``), padded."""
    vals = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) if arrays else np.array([])
    vals = vals[np.isfinite(vals)]
    if log:
        vals = vals[vals > 0]
    if vals.size == 0:
        return None
    lo, hi = float(vals.min()), float(vals.max())
    if log:
        return lo / (1 + pad * 4), hi * (1 + pad * 4)
    span = hi - lo or max(abs(hi), 1.0) * 0.1
    return lo - pad * span, hi + pad * span


def notice(text: str, kind: str = "info"):
    """A short message box."""
    return pn().pane.Alert(text, alert_type=kind, sizing_mode="stretch_width")


def missing(view, recipe: str, what: str, optimizer: str | None = None, on_computed=None):
    """A notice that ``/analysis/<recipe>`` is missing: what it would add, the command that makes
    it, and a button that computes it here (when the store can be written). ``on_computed`` is
    called after a successful computation, to rebuild the panel."""
    panel = pn()
    who = f" for `{optimizer}`" if optimizer else ""
    what = what.replace("*", "\\*")  # g* is not emphasis
    text = (f"**{what}** needs `/analysis/{recipe}`{who}, which this store does not have yet. "
            f"Compute it with the button, or run:\n\n```\n{view.command(recipe, optimizer)}\n```")
    button = widget(panel.widgets.Button, f"Compute {recipe}", button_type="primary",
                    disabled=not view.writable, width=220)
    status = panel.pane.Markdown("" if view.writable else "_(the store cannot be written from here)_")

    def run():
        try:
            view.compute(recipe, optimizer)
        except Exception as exc:  # shown in the page: the server keeps running
            traceback.print_exc()
            return f"**{recipe} failed:** `{type(exc).__name__}: {exc}`"
        return None

    def finish(error):
        button.loading = False
        status.object = error or f"`/analysis/{recipe}` written."
        if error is None and on_computed is not None:
            on_computed()

    def click(_event):
        button.loading = True
        status.object = f"computing `{recipe}`… (the result is written into the store)"
        doc = panel.state.curdoc
        if doc is None or doc.session_context is None:  # not served (tests, notebooks): wait
            finish(run())
            return

        def work():  # served: compute off the event loop so that the page stays responsive
            error = run()
            doc.add_next_tick_callback(lambda: finish(error))

        threading.Thread(target=work, name=f"lopt-trace-{recipe}", daemon=True).start()

    button.on_click(click)
    return panel.Column(notice(text, "warning"), panel.Row(button, status), sizing_mode="stretch_width",
                        css_classes=["lopt-missing"], name=f"missing-{recipe}")


def optimizer_select(view, name: str = "optimizer", value: str | None = None,
                     options: list[str] | None = None):
    """A selector of the store's optimizers (or of ``options``, a subset), starting at ``value``,
    else the store's default optimizer when it is among the options, else the first option."""
    panel = pn()
    options = list(view.optimizers if options is None else options)
    value = value or view.default_optimizer()
    if value not in options:
        value = options[0] if options else None
    return widget(panel.widgets.Select, name, options=options, value=value, width=180)
