"""The store's conventions for what an analysis writes, for recipes and other code outside
:mod:`lopt_trace.analysis`: variable attributes (:func:`attrs`), string labels (:func:`strings`)
and the name of the state dim (:data:`UNIT`)."""

from __future__ import annotations

from lopt_trace.store.schema import strings

#: the dim of the optimizer's state components
UNIT = "unit"


def attrs(long_name: str, units: str = "1", **extra) -> dict:
    """Variable attributes in the store's convention."""
    return {"long_name": long_name, "units": units, **extra}


__all__ = ["UNIT", "attrs", "strings"]
