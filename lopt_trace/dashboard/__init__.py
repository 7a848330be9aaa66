"""Interactive dashboard of a lopt-trace store (``lopt-trace dashboard STORE``), built with
Panel, HoloViews and Bokeh; see docs/dashboard.md.

Each tab lives in its own module, with plain functions that turn store data into HoloViews objects
(tested directly) and a ``build(view, rebuild)`` function that adds the widgets:

  overview          the store, and loss curves of every optimizer
  state_space       PCA trajectories of the state, fixed points, variance across runs
  update_functions  Δx(g) at a chosen state against SGD; effective learning rate along it
  linear_dynamics   Jacobian eigenvalues at the fixed points; α_i against β_i
  gradients         gradient-magnitude histograms with the saturation threshold
  emergence         the meta-objective and each mechanism's strength over meta-training
  distill           how much of the learned optimizer an optimizer built from the mechanisms
                    recovers, with each mechanism removed in turn
"""

from lopt_trace.dashboard.data import StoreView


def build_app(store, view=None):
    """The dashboard as a Panel object (see :func:`lopt_trace.dashboard.app.build_app`)."""
    from lopt_trace.dashboard.app import build_app as _build  # on call: StoreView alone loads no Panel

    return _build(store, view)


__all__ = ["StoreView", "build_app"]
