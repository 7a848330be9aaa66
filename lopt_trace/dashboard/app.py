"""The dashboard: a Panel app with one tab per view of a store.

Tabs are built when first shown (opening the dashboard reads only the store's metadata and its
loss curves); a tab is rebuilt after one of its buttons computed an analysis, and the other tabs
are rebuilt when they are next shown.
"""

from __future__ import annotations

import time
import traceback

from lopt_trace.dashboard import (distill, emergence, gradients, linear_dynamics, overview, state_space,
                                  update_functions)
from lopt_trace.dashboard._common import notice, pn
from lopt_trace.dashboard.data import StoreView

#: (title, builder) in the order of the tabs
TABS = (
    ("Overview", overview.build),
    ("State space", state_space.build),
    ("Update functions", update_functions.build),
    ("Linear dynamics", linear_dynamics.build),
    ("Gradients", gradients.build),
    ("Emergence", emergence.build),
    ("Distillation", distill.build),
)

CSS = """
.lopt-header h1 { margin-bottom: 0; }
"""


def slug(title: str) -> str:
    """``"State space"`` -> ``"state-space"`` (CSS class ``lopt-tab-<slug>`` of each tab's content)."""
    return title.lower().replace(" ", "-")


def _safe(builder, view, rebuild):
    """Build a tab; an unexpected error becomes a message in the tab, not a dead page."""
    try:
        return builder(view, rebuild)
    except Exception as exc:  # noqa: BLE001 - shown to the user, printed for the log
        traceback.print_exc()
        return notice(f"This tab could not be built: `{type(exc).__name__}: {exc}`", "danger")


def build_app(store, view: StoreView | None = None):
    """The dashboard for ``store`` (a path, URL or opened tree) as a Panel object.

    ``view`` may be shared between sessions (the CLI does so, so that a second browser tab reuses
    what the first one read).
    """
    panel = pn()
    view = view or StoreView(store)
    started = time.perf_counter()
    holders = [panel.Column(name=title, sizing_mode="stretch_width",
                            css_classes=["lopt-tab", f"lopt-tab-{slug(title)}"]) for title, _ in TABS]
    built = [False] * len(TABS)
    tabs = panel.Tabs(*holders, dynamic=False, sizing_mode="stretch_width", name="tabs")

    def fill(i):
        title, builder = TABS[i]
        holders[i][:] = [_safe(builder, view, lambda: stale(i))]
        built[i] = True

    def stale(i):
        """An analysis was written: rebuild tab ``i`` now and the others when next shown."""
        for j in range(len(TABS)):
            built[j] = False
        header.object = header_text()
        fill(i)

    def on_active(event):
        if not built[event.new]:
            holders[event.new][:] = [panel.indicators.LoadingSpinner(value=True, size=40)]
            fill(event.new)

    def header_text():
        return (f"# lopt-trace · {view.attrs.get('task', '?')}\n`{view.label}` · optimizers: "
                f"{', '.join(view.optimizers) or 'none'} · analyses: {', '.join(view.analyses) or 'none'}")

    header = panel.pane.Markdown(header_text(), css_classes=["lopt-header"], sizing_mode="stretch_width")
    tabs.param.watch(on_active, "active")
    fill(0)
    banner = [notice(f"This store did not pass validation, so some panels may be empty: {view.problem}",
                     "warning")] if view.problem else []
    app = panel.Column(header, *banner, tabs, sizing_mode="stretch_width", stylesheets=[CSS])
    app.build_seconds = time.perf_counter() - started
    app.view, app.tabs = view, tabs
    return app


__all__ = ["build_app", "TABS"]
