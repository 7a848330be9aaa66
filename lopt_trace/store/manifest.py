"""The store's manifest: every file the recorder wrote, with its size and CRC32 checksum.

Zarr reads a chunk that is not there as the fill value (NaN), so a lost chunk file reads exactly
like a step that was never recorded, and a chunk that was all fill value (a diverged run's NaNs,
a histogram of zeros) is never written at all. Only a record of what *was* written tells "lost"
from "never written"; that record is the manifest, ``lopt_trace_manifest.json`` at the root of
the store (a plain JSON file; opening with the consolidated metadata never sees it, and zarr only
warns that it is not part of the hierarchy when it lists the root without them)::

    {"format": "lopt-trace-manifest", "version": 1, "complete": true, "updated": "...",
     "checksum": "crc32", "files": {"runs/adam/loss/c/0/0": [1234, 2840123457], ...}}

It covers everything under ``/runs`` and ``/meta_train`` (chunks and ``zarr.json`` files), which
never change once written; not the root ``zarr.json`` and ``/analysis``, which analyses rewrite.
The recorder adds a file once its content is final: the metadata, coordinates and θ when the store
is created, the chunks of a run chunk once every run in it is complete (the writer thread does this
right after it writes the runs' ``run_complete`` flags), and ``complete`` is set when every run of
every optimizer is.

Why sizes *and* checksums: a size is known from a directory listing, so :func:`check` with
``full=False`` (what :func:`lopt_trace.store.open_store` and so every analysis does) costs one
listing and catches deleted and truncated files; ``full=True`` (``lopt-trace verify``) reads every
file and also catches a file changed in place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import zlib

import numpy as np
import zarr

from lopt_trace.errors import UserError
from lopt_trace.provenance import utc_now
from lopt_trace.store.zarr_io import is_local, url_to_fs

#: name of the manifest file at the root of a store
MANIFEST = "lopt_trace_manifest.json"
FORMAT = "lopt-trace-manifest"
VERSION = 1
#: top-level groups the manifest covers (they never change after recording)
COVERED = ("runs", "meta_train")


class StoreDamaged(UserError):
    """A store whose files do not match its manifest, or whose files cannot be decoded."""


def _fs(path):
    fs, root = url_to_fs(path)
    return fs, root.rstrip("/")


def _rel(root: str, full: str) -> str:
    full = full.rstrip("/")
    if full.startswith(root + "/"):
        return full[len(root) + 1:]
    # fsspec may or may not keep a leading slash (memory://)
    a, b = root.lstrip("/"), full.lstrip("/")
    return b[len(a) + 1:] if b.startswith(a + "/") else full


def listing(path, prefixes=COVERED) -> dict[str, int]:
    """Relative path -> size of every file under ``prefixes`` of the store (one listing)."""
    fs, root = _fs(path)
    out = {}
    for prefix in prefixes:
        base = f"{root}/{prefix}" if prefix else root
        if not fs.isdir(base):
            continue
        for full, info in fs.find(base, detail=True).items():
            if info.get("type", "file") == "file":
                out[_rel(root, full)] = int(info["size"])
    return out


def _crc(fs, root: str, key: str) -> int:
    return zlib.crc32(fs.cat_file(f"{root}/{key}")) & 0xFFFFFFFF


def manifest_path(path) -> str:
    return f"{str(path).rstrip('/')}/{MANIFEST}"


def read_manifest(path) -> dict | None:
    """The manifest of the store at ``path``; None when it has none (recorded before manifests)."""
    fs, root = _fs(path)
    key = f"{root}/{MANIFEST}"
    try:
        text = fs.cat_file(key)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        if data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
            raise ValueError("not a lopt-trace manifest")
    except (ValueError, AttributeError) as exc:
        raise StoreDamaged(f"{manifest_path(path)} is damaged ({type(exc).__name__}: {exc}); the "
                           "store's files cannot be checked: record it again") from None
    return data


def _write(path, data: dict) -> None:
    data = {**data, "updated": utc_now()}
    payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    if is_local(path):
        target = manifest_path(str(path).removeprefix("file://"))
        tmp = target + ".tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, target)
    else:
        fs, root = _fs(path)
        fs.pipe_file(f"{root}/{MANIFEST}", payload)


def _run_chunk_size(fs, root: str, array: str, cache: dict) -> int | None:
    """Runs per chunk of ``array`` if its first dim is ``run``, else None."""
    if array not in cache:
        try:
            meta = json.loads(fs.cat_file(f"{root}/{array}/zarr.json"))
            dims = meta.get("dimension_names") or []
            shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
            cache[array] = int(shape[0]) if dims and dims[0] == "run" else None
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            cache[array] = None
    return cache[array]


_CHUNK = re.compile(r"^(.*?)/c((?:/\d+)*)$")


def split_chunk_key(key: str) -> tuple[str, list[int]] | None:
    """``"runs/adam/loss/c/0/1"`` -> ``("runs/adam/loss", [0, 1])``; None for other files."""
    m = _CHUNK.match(key)
    if m is None or key.endswith("zarr.json"):
        return None
    return m.group(1), [int(x) for x in m.group(2).split("/")[1:]]


def _final(key: str, done: dict, fs, root: str, cache: dict) -> bool:
    """Whether the file ``key`` holds final content, given each group's finished runs ``done``."""
    parts = key.split("/")
    split = split_chunk_key(key)
    if split is None or parts[0] != "runs" or not split[1]:
        return True  # metadata, θ (0-d: ``.../c``), /meta_train: written once with the template
    array, idx = split
    rc = _run_chunk_size(fs, root, array, cache)
    if rc is None:
        return True  # coordinates and initial_state: no run dim, written with the template
    flags = done.get(parts[1])
    if flags is None:
        return False
    i = idx[0]
    runs = np.asarray(flags[i * rc:(i + 1) * rc], dtype=bool)
    return bool(runs.size and runs.all())


def update_manifest(path, done: dict) -> dict:
    """Add every file of the store whose content is final to its manifest (written anew).

    ``done`` maps each optimizer group to its ``run_complete`` flags. Files already in the manifest
    keep their entry (they never change), so this reads only new files.
    """
    old = read_manifest(path)
    files = dict(old["files"]) if old else {}
    fs, root = _fs(path)
    cache: dict = {}
    for key, size in sorted(listing(path).items()):
        if key in files or not _final(key, done, fs, root, cache):
            continue
        files[key] = [size, _crc(fs, root, key)]
    complete = bool(done) and all(np.asarray(d, dtype=bool).all() for d in done.values())
    if old is not None and old["files"] == files and old.get("complete") == complete:
        return old  # nothing new: the store is left exactly as it was
    data = {"format": FORMAT, "version": VERSION, "checksum": "crc32", "complete": complete,
            "files": files}
    _write(path, data)
    return data


# -- checking --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Problem:
    key: str            # file, relative to the store
    kind: str           # missing, truncated, size changed, changed, unexpected, unreadable
    detail: str = ""


@dataclasses.dataclass
class Report:
    path: str
    manifest: dict | None
    problems: list
    checked: int        # files checked
    full: bool

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per affected array: what is wrong, and which runs and steps it touches."""
        return describe(self.path, self.problems)

    def one_line(self) -> str:
        lines = self.lines()
        first = lines[0].strip() if lines else ""
        more = f"; and {len(lines) - 1} more" if len(lines) > 1 else ""
        n = len(self.problems)
        key = self.problems[0].key if self.problems else ""
        return (f"{self.path} is damaged: {n} recorded file{'s' if n != 1 else ''} missing or "
                f"changed ({first}{more}; first: {self.path.rstrip('/')}/{key}); its results cannot "
                f"be trusted. `lopt-trace verify {self.path}` lists them; record the store again or "
                "restore the files")


def check(path, full: bool = False, manifest: dict | None = None) -> Report:
    """Compare the store's files with its manifest.

    ``full=False``: every file in the manifest exists with its recorded size (one listing; what
    :func:`lopt_trace.store.open_store` does). ``full=True``: also its CRC32, and every
    ``zarr.json`` in the store parses. A store without a manifest gives a report with
    ``manifest=None`` and no problems (nothing to compare with); see :func:`decode_all`.
    """
    path = str(path)
    man = manifest if manifest is not None else read_manifest(path)
    if man is None:
        return Report(path, None, [], 0, full)
    fs, root = _fs(path)
    have = listing(path)
    problems = []
    for key, (size, crc) in sorted(man["files"].items()):
        if key not in have:
            problems.append(Problem(key, "missing"))
        elif have[key] != size:
            kind = ("changed" if key.endswith("zarr.json")
                    else "truncated" if have[key] < size else "size changed")
            problems.append(Problem(key, kind, f"{have[key]} bytes, {size} recorded"))
        elif full and _crc(fs, root, key) != crc:
            problems.append(Problem(key, "changed", "checksum differs"))
    if man.get("complete"):
        for key in sorted(set(have) - set(man["files"])):
            problems.append(Problem(key, "unexpected", "not written by the recorder"))
    if full:
        problems += [Problem(k, "unreadable", d) for k, d in bad_metadata(path)
                     if not any(p.key == k for p in problems)]
    return Report(path, man, problems, len(man["files"]), full)


def bad_metadata(path) -> list[tuple[str, str]]:
    """``(file, error)`` for every ``zarr.json`` of the store that is not valid JSON."""
    fs, root = _fs(path)
    out = []
    for full in sorted(fs.find(root)):
        if posixpath.basename(full) != "zarr.json":
            continue
        try:
            json.loads(fs.cat_file(full))
        except (ValueError, UnicodeDecodeError) as exc:
            out.append((_rel(root, full), f"{type(exc).__name__}: {exc}"))
    return out


def decode_all(path, prefixes: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """``(file, error)`` for every chunk of the store that cannot be decoded (reads all of them).

    For stores without a manifest this is all that can be checked: a missing chunk cannot be told
    from one that was never written, but a truncated or garbled one fails to decode.
    """
    bad = []
    group = zarr.open_group(str(path), mode="r")
    for name, arr in group.members(max_depth=None):
        if not isinstance(arr, zarr.Array):
            continue
        if prefixes is not None and name.split("/")[0] not in prefixes:
            continue
        for idx in np.ndindex(*arr.cdata_shape) if arr.ndim else [()]:
            try:
                arr.get_block_selection(idx) if arr.ndim else arr[()]
            except Exception as exc:  # noqa: BLE001 - any decoding failure is damage
                key = f"{name}/c" + "".join(f"/{i}" for i in idx)
                bad.append((key, f"{type(exc).__name__}: {exc}"))
    return bad


# -- describing ------------------------------------------------------------------------------------
def _consolidated(fs, root) -> dict:
    try:
        meta = json.loads(fs.cat_file(f"{root}/zarr.json"))
        return (meta.get("consolidated_metadata") or {}).get("metadata") or {}
    except (OSError, ValueError):
        return {}


def _array_meta(fs, root, array: str, consolidated: dict) -> dict | None:
    meta = consolidated.get(array)
    if meta is None:
        try:
            meta = json.loads(fs.cat_file(f"{root}/{array}/zarr.json"))
        except (OSError, ValueError):
            return None
    return meta if meta.get("node_type") == "array" else None


def _span(a: int, b: int) -> str:
    return f"{a}" if a == b else f"{a}-{b}"


def _chunk_text(meta: dict, idx: list[int], every: int) -> str:
    dims = meta.get("dimension_names") or [f"dim_{i}" for i in range(len(meta["shape"]))]
    shape = meta["shape"]
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    parts = []
    for dim, n, c, i in zip(dims, shape, chunks, idx):
        if c >= n and dim not in ("run", "step", "loss_step"):
            continue  # the chunk spans the whole dim (runs and steps are always named)
        a, b = i * c, min((i + 1) * c, n) - 1
        if dim == "run":
            parts.append(f"runs {_span(a, b)}")
        elif dim == "step":
            parts.append(f"steps {_span(a * every, b * every)}")
        elif dim == "loss_step":
            parts.append(f"loss steps {_span(a, b)}")
        elif dim == "param":
            parts.append(f"params {_span(a, b)}")
        else:
            parts.append(f"{dim} {_span(a, b)}")
    return ", ".join(parts) or "all of it"


def describe(path, problems: list) -> list[str]:
    """One line per affected array (or other file): the kind of damage and the runs and steps."""
    if not problems:
        return []
    fs, root = _fs(path)
    consolidated = _consolidated(fs, root)
    try:
        every = int(json.loads(fs.cat_file(f"{root}/zarr.json"))["attributes"].get("every", 1))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        every = 1
    by_array: dict[str, dict[str, list[str]]] = {}
    for p in problems:
        key = p.key if isinstance(p, Problem) else p[0]
        kind = p.kind if isinstance(p, Problem) else (
            "unreadable" if key.endswith("zarr.json") else "undecodable")
        split = split_chunk_key(key)
        if split is not None:
            array, idx = split
            meta = _array_meta(fs, root, array, consolidated)
            chunk = "/".join(["c", *map(str, idx)])
            try:
                where = f"{_chunk_text(meta, idx, every)} ({chunk})" if meta else chunk
            except (ValueError, KeyError, TypeError, IndexError):
                where = chunk
        elif key.endswith("zarr.json"):
            array, where = posixpath.dirname(key), "metadata (zarr.json)"
        else:
            array, where = key, "file"
        by_array.setdefault(array, {}).setdefault(kind, []).append(where)
    lines = []
    for array in sorted(by_array):
        texts = []
        for kind, wheres in by_array[array].items():
            uniq = list(dict.fromkeys(wheres))
            texts.append(f"{kind}: {'; '.join(uniq)}")
        lines.append(f"/{array}  " + " | ".join(texts))
    return lines


def undecodable_message(path, exc: BaseException) -> str | None:
    """When reading ``path`` failed with ``exc``: one line naming the damaged file, or None when no
    damaged file is found (then ``exc`` is not about damage)."""
    try:
        bad = bad_metadata(path)
        if bad:
            key, err = bad[0]
            return (f"{str(path).rstrip('/')}/{key} is damaged (not valid JSON: {err}); "
                    "record the store again or restore the file")
        bad = decode_all(path)
    except Exception:  # noqa: BLE001 - looking for the cause must not hide the error
        return None
    if not bad:
        return None
    key, err = bad[0]
    more = f" (and {len(bad) - 1} more chunks)" if len(bad) > 1 else ""
    return (f"{str(path).rstrip('/')}/{key} is damaged and cannot be decoded ({err}){more}; "
            f"record the store again or restore the file (`lopt-trace verify {path}` lists all)")


#: what a damaged chunk or metadata file raises when it is read
def is_decode_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, json.JSONDecodeError) or any(
        w in text for w in ("decompress", "zstd", "blosc", "codec", "checksum", "cannot reshape",
                            "buffer size", "unexpected end", "invalid input data"))
