"""Opening a recorded store: the one reader that checks its schema and its manifest."""

from __future__ import annotations

import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.store.manifest import StoreDamaged, bad_metadata, read_manifest
from lopt_trace.store.manifest import check as check_files
from lopt_trace.store.schema import validate_store
from lopt_trace.store.zarr_io import exists


def open_store(path, validate: bool = True, check: bool = True) -> xr.DataTree:
    """Open a recorded store as a Dask-backed ``xarray.DataTree``.

    With ``validate`` (the default) the store must carry ``schema_version`` equal to
    :data:`SCHEMA_VERSION` and have every group its attributes promise; otherwise a
    :class:`~lopt_trace.errors.UserError` says what is wrong.

    With ``check`` (the default) a store that has a manifest (:mod:`lopt_trace.store.manifest`) must
    have every file the recorder wrote, at its recorded size; otherwise
    :class:`~lopt_trace.store.manifest.StoreDamaged` (a ``UserError``) names what is affected. This
    costs one directory listing; ``lopt-trace verify`` also compares checksums.
    """
    path = str(path)
    if not path.strip():
        raise UserError("the store path is empty")
    if not exists(path):
        raise UserError(f"no store at {path}; record one with `lopt-trace record --task TASK --out {path}`")
    try:
        tree = xr.open_datatree(path, engine="zarr", chunks={})
    except Exception as exc:
        try:
            bad = bad_metadata(path)
        except Exception:  # noqa: BLE001 - naming the file is a nicety
            bad = []
        if bad:
            key, err = bad[0]
            raise UserError(f"{path.rstrip('/')}/{key} is damaged (not valid JSON: {err}); record "
                            "the store again or restore the file") from None
        raise UserError(f"{path} is not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    if validate:
        validate_store(tree, path)
    if check:
        check_integrity(path, tree.attrs)
    return tree


def check_integrity(path, attrs: dict | None = None, full: bool = False) -> None:
    """Raise :class:`~lopt_trace.store.manifest.StoreDamaged` unless every file in the store's manifest
    exists at its recorded size, and with ``full`` has its recorded checksum (nothing to check for
    a store recorded before manifests)."""
    man = read_manifest(path)
    if man is None:
        # recorded before manifests, or copied without it (``tree.to_zarr`` elsewhere): nothing to
        # compare with; ``info`` and ``verify`` say so
        return
    report = check_files(path, full=full, manifest=man)
    if not report.ok:
        raise StoreDamaged(report.one_line())


