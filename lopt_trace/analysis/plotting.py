"""HoloViews for the recipes' plots, with the Bokeh backend loaded so that ``.opts`` works."""

from __future__ import annotations


def holoviews():
    """The ``holoviews`` module, with its Bokeh plotting backend imported (no notebook needed).

    Imported on call, on purpose: HoloViews and Bokeh take seconds to load, and analyses that
    only compute (``lopt-trace analyze``, the recipes' ``compute``) never draw."""
    import holoviews as hv
    import holoviews.plotting.bokeh

    if not hv.Store.current_backend:
        hv.Store.set_current_backend("bokeh")
    return hv
