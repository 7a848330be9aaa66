"""Bytes a store takes on disk, and how to print them."""

from __future__ import annotations

from pathlib import Path

from lopt_trace.store.zarr_io import is_local, url_to_fs


def size_on_disk(path) -> int:
    """Bytes a store takes (local folder or fsspec URL)."""
    if is_local(path):
        root = Path(str(path).removeprefix("file://"))
        if root.is_file():
            return root.stat().st_size
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    fs, root = url_to_fs(path)
    return int(fs.du(root, total=True)) if fs.exists(root) else 0


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover

