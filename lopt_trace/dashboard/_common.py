"""Shared pieces of the dashboard panels: Panel set-up, widgets, and the notice a panel shows when
what it needs is not in the store (how plots look is :mod:`lopt_trace.dashboard.style`, re-exported
here)."""

from __future__ import annotations

import threading
import traceback

from lopt_trace.dashboard.style import (HEIGHT, RASTERIZE_ABOVE, SMALL, WIDTH, finite_range, hv,  # noqa: F401
                                       palette, strings)


def pn():
    """``panel`` with its extension loaded once. Imported on call: the report draws with the
    tabs' plotting functions and needs no Panel, which is slow to load."""
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
