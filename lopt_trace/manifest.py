"""Moved to :mod:`lopt_trace.store.manifest`; this name is the same module (kept for old imports)."""

import sys

from lopt_trace.store import manifest as _module

sys.modules[__name__] = _module
