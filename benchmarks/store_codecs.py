"""Store codecs on recorded hidden states: compressed size and speed of zstd against Blosc (LZ4 or
zstd over bit-shuffled values), for float32, float16 and ``--keep-bits`` 16/12/8, in one run.

Every chunk of one recorded ``state`` array (as the recorder chunks it) is encoded with each codec
(numcodecs, one thread, as zarr calls it per chunk) after the setting's rounding; the table gives
the compressed bytes over the float32 bytes and the encode and decode rates (MB of the setting's
values per second). By default a store is recorded first: two_moons with the bundled learned
optimizer, 4 runs × 200 steps, every parameter. This is where ``lopt_trace.store.zarr_io``'s
choices come from (``per_parameter_compressors``): LZ4 for float32 arrays kept whole, zstd over
bit-shuffled values after ``--keep-bits``, plain zstd for float16; each codec's label names where
it is used.

    python benchmarks/store_codecs.py [STORE] [--array runs/learned/state]
    python benchmarks/store_codecs.py --quick      # a check that it runs: 20 steps
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import zarr
from numcodecs import BitRound, Blosc, Zstd

CODECS = {
    "zstd 3 (float16; every array before 2026-12-03)": lambda: Zstd(level=3),
    "Blosc LZ4, bit-shuffled (float32)": lambda: Blosc("lz4", 5, Blosc.BITSHUFFLE),
    "Blosc zstd 3, bit-shuffled (--keep-bits)": lambda: Blosc("zstd", 3, Blosc.BITSHUFFLE),
}


def settings(x: np.ndarray) -> dict[str, np.ndarray]:
    rounded = {f"keep-bits {k}": BitRound(k).encode(x).view(np.float32).reshape(x.shape) for k in (16, 12, 8)}
    return {"float32": x, "float16": x.astype(np.float16), **rounded}


def chunks_of(x: np.ndarray, chunks: tuple[int, ...]):
    for start in itertools.product(*(range(0, s, c) for s, c in zip(x.shape, chunks))):
        yield np.ascontiguousarray(x[tuple(slice(i, i + c) for i, c in zip(start, chunks))])


def measure(x: np.ndarray, chunks: tuple[int, ...], raw_bytes: int) -> list[tuple[str, float, float, float]]:
    rows = []
    parts = list(chunks_of(x, chunks))
    for name, make in CODECS.items():
        codec = make()
        t = time.perf_counter()
        encoded = [codec.encode(p) for p in parts]
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        for e in encoded:
            codec.decode(e)
        t_dec = time.perf_counter() - t
        size = sum(len(e) for e in encoded)
        rows.append((name, size / raw_bytes, x.nbytes / t_enc / 1e6, x.nbytes / t_dec / 1e6))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("store", nargs="?", help="a recorded store (default: record two_moons first)")
    p.add_argument("--array", default="runs/learned/state", help="the array (default runs/learned/state)")
    p.add_argument("--quick", action="store_true", help="a check that it runs: record 20 steps")
    a = p.parse_args(argv)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="lopt-trace-codecs-") as tmp:
        store = a.store
        if store is None:
            store = os.path.join(tmp, "two_moons.zarr")
            steps = "20" if a.quick else "200"
            subprocess.run([sys.executable, "-m", "lopt_trace.cli", "record", "--task", "two_moons",
                            "--optimizer", "learned", "--runs", "4", "--steps", steps, "--params", "all",
                            "--out", store], check=True, stdout=subprocess.DEVNULL)
        arr = zarr.open_array(store, path=a.array, mode="r")
        x = np.asarray(arr[...], dtype=np.float32)
        print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {platform.node()}; {os.cpu_count()} CPUs; "
              f"load average {load}")
        print(f"{a.array} of {store if a.store else 'a fresh two_moons recording'}: shape {x.shape}, "
              f"chunks {arr.chunks}, {x.nbytes / 1e6:.1f} MB float32; one thread per codec call")
        print("| setting | codec | size / float32 bytes | encode MB/s | decode MB/s |")
        print("| --- | --- | ---: | ---: | ---: |")
        for setting, values in settings(x).items():
            for name, ratio, enc, dec in measure(values, arr.chunks, x.nbytes):
                print(f"| {setting} | {name} | {ratio:.3f} | {enc:,.0f} | {dec:,.0f} |", flush=True)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
