"""How this process's C allocator serves large arrays (a long recording's memory stays flat)."""

from __future__ import annotations

import ctypes
import ctypes.util

_MALLOC_BOUNDED = False


def bound_malloc_growth(threshold: int = 1 << 20) -> None:
    """Serve allocations of ``threshold`` bytes and more with mmap, so freed blocks go back to the
    system at once (glibc only; elsewhere nothing happens).

    glibc raises its mmap threshold dynamically up to 32 MB as large arrays are freed; afterwards
    block-sized arrays come from the heap, and with a writer thread the heap fragments, so a
    long recording's resident memory creeps up by a few percent of the data written (measured:
    +80 MB per 4x steps on two_moons). A fixed threshold keeps the peak flat. Called by
    :func:`lopt_trace.recorder.record`; it affects only how large allocations are served in this process.
    """
    global _MALLOC_BOUNDED
    if _MALLOC_BOUNDED:
        return
    _MALLOC_BOUNDED = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, int(threshold))  # M_MMAP_THRESHOLD (also turns off the dynamic raise)
    except (OSError, AttributeError):  # not glibc
        pass
