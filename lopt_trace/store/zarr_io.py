"""Writing xarray trees to Zarr: format 3, consolidated metadata, Blosc (LZ4, bit-shuffled), never
clobbering data."""

from __future__ import annotations

import contextlib
import json
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
#: codec for every array lopt-trace writes: Blosc with LZ4 over bit-shuffled values (in the Zarr v3
#: spec, so plain zarr/xarray read it). On recorded float32 hidden states it is both smaller and
#: faster than zstd level 3, which lopt-trace used before (``benchmarks/store_codecs.py`` on
#: two_moons' learned states: 0.74x against 0.92x of the raw bytes, encoding at 1.0 against
#: 0.7 GB/s and decoding at 2.6 against 1.1 GB/s); the writer's CPU time is what a full-size
#: recording pays on top of its steps (docs/performance.md). ``typesize`` is left to zarr, which
#: takes it from each array's dtype. Blosc does not notice a truncated buffer (it can decode one
#: silently into wrong values), so every chunk also carries the spec's CRC32C checksum: a damaged
#: chunk fails to decode, with or without the store's manifest.
COMPRESSORS = (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"), zarr.codecs.Crc32cCodec())
#: codecs of ``state``, ``gradient`` and ``update`` when they are stored lossily, where size is
#: what was asked for: see :func:`per_parameter_compressors`.
ROUNDED_COMPRESSORS = (zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), zarr.codecs.Crc32cCodec())
FLOAT16_COMPRESSORS = (zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec())


def per_parameter_compressors(dtype: str, keep_bits: int | None) -> tuple:
    """The codecs of the recorder's per-parameter arrays (``state``, ``gradient``, ``update``).

    float32 kept whole: :data:`COMPRESSORS` (LZ4, the fastest and here also the smallest). With
    ``--keep-bits``: zstd over bit-shuffled values, which gathers the zeroed mantissa bits into
    runs; in float16 without rounding: plain zstd. Measured with ``benchmarks/store_codecs.py``
    and ``benchmarks/record_precision.py`` on two_moons' learned states in two chunkings (sizes
    relative to the raw float32 state / to the whole float32 store):
    ``--keep-bits 16`` 0.51x / 0.68x against plain zstd's 0.66x / 0.99x,
    ``--keep-bits 8`` 0.22x / 0.31x against 0.19x / 0.34x; float16 0.21x / 0.37x with plain zstd
    against 0.28x / 0.39x bit-shuffled (docs/performance.md).
    """
    if keep_bits is not None:
        return ROUNDED_COMPRESSORS
    return FLOAT16_COMPRESSORS if dtype == "float16" else COMPRESSORS

#: zarr notes, at every numcodecs codec it builds (writing or reading), that such codecs are not in
#: the Zarr v3 spec. The recorder's ``--keep-bits`` writes ``numcodecs.bitround`` on purpose
#: (docs/store.md says which readers decode it), so lopt-trace does not repeat the note; a plain
#: ``xr.open_datatree`` without lopt-trace shows it once.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")


def bit_round(keep_bits: int):
    """The array-to-array codec that rounds floats to ``keep_bits`` mantissa bits (round to
    nearest, ties to even) before compression: ``numcodecs.bitround`` in the array's metadata, so any
    zarr-python 3 with numcodecs reads it (decoding is a no-op: the rounded values are stored)."""
    try:
        from zarr.codecs.numcodecs import BitRound  # zarr >= 3.1.3
    except ImportError:  # pragma: no cover - older zarr: numcodecs' own zarr 3 wrappers
        from numcodecs.zarr3 import BitRound
    return BitRound(keepbits=int(keep_bits))


@contextlib.contextmanager
def quiet_zarr_writes():
    """Silence zarr's note that consolidated metadata is not yet in the v3 spec, and its note that
    the store's manifest file is not part of the Zarr hierarchy (when it lists the root).

    lopt-trace writes consolidated metadata so that stores open fast and warning-free with plain
    ``xr.open_datatree``; the notes are about the spec and our own file, not about our data.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        # the store's manifest (lopt_trace.manifest) is a plain JSON file that zarr need not know
        warnings.filterwarnings("ignore", message=r"Object at lopt_trace_manifest\.json(\.tmp)? is not recognized")
        yield


def url_to_fs(path: str | os.PathLike):
    """``fsspec.core.url_to_fs``, with a missing filesystem package (``s3fs`` for ``s3://``, ...)
    or an unknown protocol turned into a one-line :class:`UserError`."""
    path = str(path)
    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as exc:
        raise UserError(f"{path}: {exc} (the URL needs a filesystem package that is not "
                        "installed)") from None
    except ValueError as exc:
        if "protocol" not in str(exc).lower():
            raise
        proto = path.split("://", 1)[0]
        raise UserError(f"{path}: unknown URL protocol {proto!r}; use a local path or a URL fsspec "
                        "knows (memory://, s3://, gs://, ...)") from None


def is_local(path: str | os.PathLike) -> bool:
    """True for a plain filesystem path (not ``memory://``, ``s3://``, ...)."""
    return "://" not in str(path) or str(path).startswith("file://")


def exists(path: str | os.PathLike) -> bool:
    """Whether anything is at ``path`` (a local path or an fsspec URL)."""
    if is_local(path):
        return Path(str(path).removeprefix("file://")).exists()
    fs, root = url_to_fs(path)
    return fs.exists(root)


#: the root attributes by which lopt-trace recognises what it wrote: kind -> test of the attributes
_KINDS = {
    "store": lambda a: "schema_version" in a and ("lopt_trace_version" in a or "record_settings" in a),
    # optimizer_file.FORMAT (optimizer_file imports this module, so the literal is repeated here)
    "optimizer file": lambda a: a.get("format") == "lopt-trace-optimizer",
    "training checkpoint": lambda a: "next_iteration" in a and "settings" in a,
    "tune or compare result": lambda a: isinstance(a.get("versions"), dict) and "lopt_trace" in a["versions"],
}


def made_by_lopt_trace(path: str | os.PathLike) -> str | None:
    """What lopt-trace wrote at ``path`` (``"store"``, ``"optimizer file"``, ...), from the root
    attributes of a Zarr tree there; None when it is anything else (or nothing)."""
    path = str(path)
    try:
        if is_local(path):
            meta = Path(path.removeprefix("file://"), "zarr.json").read_bytes()
        else:
            fs, root = url_to_fs(path)
            meta = fs.cat_file(root.rstrip("/") + "/zarr.json")
        attrs = json.loads(meta).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(attrs, dict):
        return None
    return next((kind for kind, test in _KINDS.items() if test(attrs)), None)


def _what_is_there(path: str) -> str:
    if is_local(path):
        p = Path(path.removeprefix("file://"))
        if p.is_file():
            return f"a file of {p.stat().st_size} bytes"
        if p.is_dir():
            names = sorted(c.name for c in p.iterdir())
            shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
            if "zarr.json" in names:
                try:
                    json.loads((p / "zarr.json").read_bytes())
                except ValueError:
                    return f"a Zarr tree whose zarr.json is unreadable (it holds {shown})"
                return f"a Zarr tree that lopt-trace did not write (it holds {shown})"
            return f"a folder holding {shown}"
        return "something that is neither a file nor a folder"
    return "something lopt-trace did not write"


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse (one line) to replace anything at ``path`` that lopt-trace did not make: only a
    store, an optimizer file, a checkpoint or a tune/compare result, or an empty folder, may go."""
    path = str(path)
    if not exists(path) or made_by_lopt_trace(path) is not None:
        return
    if is_local(path):
        p = Path(path.removeprefix("file://"))
        if p.is_dir() and not any(p.iterdir()):
            return
    raise UserError(f"refusing to overwrite {path}: it is {_what_is_there(path)}, not a store or "
                    "optimizer file written by lopt-trace; move it away or choose another --out")


def remove(path: str | os.PathLike) -> None:
    """Delete a store (local folder or fsspec URL). Callers replacing an output check
    :func:`check_replaceable` first."""
    if is_local(path):
        p = Path(str(path).removeprefix("file://"))
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    else:
        fs, root = url_to_fs(path)
        if fs.exists(root):
            fs.rm(root, recursive=True)


def check_writable(path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless ``overwrite`` is set and it is something
    lopt-trace made (:func:`check_replaceable`)."""
    if not str(path).strip():
        raise UserError("the output path is empty; give a file or folder name")
    if exists(path) and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it, or choose another --out")
    if overwrite:
        check_replaceable(path)


def probe_writable(path: str | os.PathLike) -> None:
    """Check that the folder that will hold ``path`` can be written, by creating, filling and
    deleting a small file there (local paths only): a read-only filesystem, a folder without write
    permission or a full disk fails now, as an ``OSError`` naming the folder, not after hours of
    work."""
    if not str(path).strip():
        raise UserError("the output path is empty; give a file or folder name")
    if not is_local(path):
        return
    target = Path(str(path).removeprefix("file://")).expanduser().absolute()
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing folder: the rest is made later
    if not folder.is_dir():
        raise UserError(f"cannot write {target}: {folder} is not a folder")
    probe = folder / f".{target.name}.write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from None
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def encoding_for(tree: xr.DataTree) -> dict:
    """The project's compression (:data:`COMPRESSORS`) for every variable in every group."""
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
