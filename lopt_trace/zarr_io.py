"""Writing xarray trees to Zarr: format 3, consolidated metadata, zstd, never clobbering data."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import fsspec
import xarray as xr
import zarr

from lopt_trace.errors import UserError

ZARR_FORMAT = 3
#: codec for every array lopt-trace writes
COMPRESSORS = (zarr.codecs.ZstdCodec(level=3),)


@contextlib.contextmanager
def quiet_zarr_writes():
    """Silence zarr's note that consolidated metadata is not yet in the v3 spec.

    lopt-trace writes consolidated metadata so that stores open fast and warning-free with plain
    ``xr.open_datatree``; the note is about the spec, not about our data.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield


def is_local(path: str | os.PathLike) -> bool:
    """True for a plain filesystem path (not ``memory://``, ``s3://``, ...)."""
    return "://" not in str(path) or str(path).startswith("file://")


def exists(path: str | os.PathLike) -> bool:
    """Whether anything is at ``path`` (a local path or an fsspec URL)."""
    if is_local(path):
        return Path(str(path).removeprefix("file://")).exists()
    fs, root = fsspec.core.url_to_fs(str(path))
    return fs.exists(root)


def remove(path: str | os.PathLike) -> None:
    """Delete a store (local folder or fsspec URL)."""
    if is_local(path):
        p = Path(str(path).removeprefix("file://"))
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    else:
        fs, root = fsspec.core.url_to_fs(str(path))
        if fs.exists(root):
            fs.rm(root, recursive=True)


def check_writable(path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless ``overwrite`` is set."""
    if exists(path) and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it, or choose another --out")


def encoding_for(tree: xr.DataTree) -> dict:
    """zstd compression for every variable in every group."""
    enc = {}
    for node in tree.subtree:
        own = node.to_dataset(inherit=False).variables  # not the coordinates a parent holds
        enc[node.path] = {name: {"compressors": COMPRESSORS} for name in own}
    return enc


def write_tree(tree: xr.DataTree, path, overwrite: bool = False) -> None:
    """Write a whole tree. Local paths are written to a temporary folder and renamed into place,
    so an interrupted write never leaves half a file and an old file survives a failed write."""
    check_writable(path, overwrite)
    with quiet_zarr_writes():
        if not is_local(path):
            if overwrite:
                remove(path)
            tree.to_zarr(str(path), mode="w-", zarr_format=ZARR_FORMAT, consolidated=True,
                         encoding=encoding_for(tree))
            return
        target = Path(str(path).removeprefix("file://")).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            tree.to_zarr(str(tmp / "store"), mode="w-", zarr_format=ZARR_FORMAT,
                         consolidated=True, encoding=encoding_for(tree))
            if target.exists():
                remove(target)
            os.replace(tmp / "store", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def open_tree(path, chunks: dict | None = None) -> xr.DataTree:
    """Open a tree written by :func:`write_tree` (Dask-backed when ``chunks`` is a dict)."""
    return xr.open_datatree(str(path), engine="zarr", chunks=chunks)
