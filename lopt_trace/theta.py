"""θ (a flat dict of arrays) <-> an ``xarray.Dataset``, so it can live in any store group."""

from __future__ import annotations

import numpy as np
import xarray as xr


def theta_to_dataset(theta: dict, leading: tuple[str, ...] = ()) -> xr.Dataset:
    """One variable per θ entry; dims are ``leading`` then ``<name>_dim<i>``.

    ``leading`` names extra leading axes, e.g. ``("checkpoint",)`` for a stack of θ.
    """
    data_vars = {}
    for name, value in theta.items():
        value = np.asarray(value)
        extra = value.ndim - len(leading)
        dims = tuple(leading) + tuple(f"{name}_dim{i}" for i in range(extra))
        data_vars[name] = xr.Variable(dims, value, attrs={"long_name": f"optimizer weight {name}",
                                                          "units": "1"})
    return xr.Dataset(data_vars)


def theta_from_dataset(ds: xr.Dataset, prefix: str = "") -> dict:
    """Inverse of :func:`theta_to_dataset` (loads the values)."""
    return {str(k)[len(prefix):]: np.asarray(v.values) for k, v in ds.data_vars.items()
            if str(k).startswith(prefix)}
