"""``lopt-trace verify STORE``: check every file of a store against its manifest."""

from __future__ import annotations

from lopt_trace.errors import UserError

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


def add_parser(sub, name):
    p = sub.add_parser(
        name, help="check a store's files against the manifest the recorder wrote",
        description="Compare every file the recorder wrote into STORE with the store's manifest "
                    "(size and CRC32 checksum), check that every zarr.json parses and that the "
                    "analysis results decode, and print one line per damaged array with the runs "
                    "and steps it affects. Exit code 0: intact; 1: damaged; 2: not a store. A store "
                    "recorded before manifests existed is checked by decoding every chunk (a lost "
                    "chunk cannot be detected there). See docs/store.md.")
    p.add_argument("store", help="store path or fsspec URL")
    return p


def verify(path) -> tuple[bool, list[str]]:
    """``(intact, lines to print)`` for the store at ``path``."""
    from lopt_trace.manifest import (StoreDamaged, bad_metadata, check, decode_all, describe,
                                     read_manifest)
    from lopt_trace.store import open_store
    from lopt_trace.zarr_io import exists

    path = str(path)
    if not path.strip():
        raise UserError("the store path is empty")
    if not exists(path):
        raise UserError(f"no store at {path}")
    try:
        man = read_manifest(path)
    except StoreDamaged as exc:
        return False, [f"{path}: DAMAGED", f"  {exc}"]
    if man is not None:
        report = check(path, full=True, manifest=man)
        problems = list(report.problems)
        try:
            problems += decode_all(path, prefixes=("analysis",))
        except Exception:  # noqa: BLE001 - the root metadata is unreadable: reported above
            pass
        if problems:
            lines = describe(path, problems)
            n = sum(1 for p in report.problems if p.key in man["files"])
            parts = [f"{n} of {report.checked} recorded files missing or changed"] if n else []
            if len(problems) > n:
                parts.append(f"{len(problems) - n} other files unreadable or unexpected")
            head = f"{path}: DAMAGED: {', '.join(parts)}"
            return False, [head + "; affected:", *(f"  {line}" for line in lines)]
        open_store(path, check=False)  # a store at all? (UserError -> exit 2)
        state = "complete" if man.get("complete") else "INCOMPLETE recording (continue with --resume)"
        return True, [f"{path}: intact: {report.checked} recorded files match the manifest (size and "
                      f"CRC32), every zarr.json parses, the analysis results decode; {state}"]
    bad = [(k, e) for k, e in bad_metadata(path)]
    if not bad:
        open_store(path, check=False)
        bad = decode_all(path)
    if bad:
        lines = describe(path, bad)
        return False, [f"{path}: DAMAGED: {len(bad)} files cannot be read; affected:",
                       *(f"  {line}" for line in lines)]
    attrs = open_store(path, validate=False, check=False).attrs
    why = ("its manifest is missing (deleted, or the store was copied without it)" if attrs.get("manifest")
           else "no manifest (recorded before lopt-trace wrote one)")
    return True, [f"{path}: {why}: every chunk decodes and "
                  "every zarr.json parses, but a lost chunk cannot be told from one never written; "
                  "record it again to get a manifest"]


def run(args) -> int:
    ok, lines = verify(args.store)
    print("\n".join(lines))
    return 0 if ok else 1
