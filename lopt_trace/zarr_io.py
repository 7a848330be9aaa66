"""Moved to :mod:`lopt_trace.store.zarr_io`; this name is the same module (kept for old imports)."""

import sys

from lopt_trace.store import zarr_io as _module

sys.modules[__name__] = _module
