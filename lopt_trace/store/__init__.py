"""The recorded store: every on-disk format of lopt-trace and the one way to open or write it.

A store is an xarray DataTree in Zarr v3 (consolidated metadata); see ``docs/store.md`` for the
schema. It opens with plain ``xr.open_datatree(path, engine="zarr", chunks={})``;
:func:`open_store` opens it the same way and checks that it is a store this lopt-trace can read.

Modules, one job each:

- :mod:`~lopt_trace.store.schema`: version, attributes, dims, variables, label copies, validation
- :mod:`~lopt_trace.store.opening`: :func:`open_store` and the integrity check
- :mod:`~lopt_trace.store.lock`: the writer's lock (:class:`StoreLock`, :func:`locked_output`)
- :mod:`~lopt_trace.store.template`: the recorder's group template and settings
- :mod:`~lopt_trace.store.writer`: creating a store, the region writer, the resume check
- :mod:`~lopt_trace.store.results`: writing and reading ``/analysis/<recipe>``
- :mod:`~lopt_trace.store.manifest`: the manifest and ``lopt-trace verify``
- :mod:`~lopt_trace.store.optimizer_file`: the trained-optimizer file and the meta-training checkpoint
- :mod:`~lopt_trace.store.zarr_io`: writing any xarray tree to Zarr, never clobbering data
- :mod:`~lopt_trace.store.sizes`: bytes on disk
"""

from __future__ import annotations

from lopt_trace.store.lock import StoreLock, lock_path, locked_output
from lopt_trace.store.opening import check_integrity, open_store
from lopt_trace.store.results import read_result, write_result
from lopt_trace.store.schema import (GROUP_ATTRS, HIST_BINS, HIST_LOG10_MAX, HIST_LOG10_MIN, LABELS_ATTR,
                                     ROOT_ATTRS, RUN_COORDS, RUN_DIMS, RUN_VARIABLES, SCHEMA_VERSION,
                                     hist_edges, labels_from_attrs, validate_store, with_label_copies)
from lopt_trace.store.sizes import human_bytes, size_on_disk

__all__ = ["GROUP_ATTRS", "HIST_BINS", "HIST_LOG10_MAX", "HIST_LOG10_MIN", "LABELS_ATTR", "ROOT_ATTRS",
           "RUN_COORDS", "RUN_DIMS", "RUN_VARIABLES", "SCHEMA_VERSION", "StoreLock", "check_integrity",
           "hist_edges", "human_bytes", "labels_from_attrs", "lock_path", "locked_output", "open_store",
           "read_result", "size_on_disk", "validate_store", "with_label_copies", "write_result"]
