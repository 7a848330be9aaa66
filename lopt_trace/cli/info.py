"""``lopt-trace info``: a readable summary of a recorded store."""

from __future__ import annotations

import numpy as np

# Everything that loads JAX, xarray, zarr, Dask or HoloViews (the lopt_trace modules behind this
# command included) is imported inside the functions below, never here: `lopt-trace --help` and
# argument errors must answer without loading them (tests/test_cli_startup.py).


def add_parser(sub, name):
    p = sub.add_parser(name, help="summarise a recorded store: groups, dims, sizes, optimizers, final losses",
                       description="Print a readable summary of a store written by `lopt-trace record`: "
                                   "its task and settings, every group with its dims and size, the "
                                   "optimizers and their final losses (mean ± sem over runs).")
    p.add_argument("store", help="store path or fsspec URL")
    return p


def describe(path) -> str:
    """The summary ``lopt-trace info`` prints."""
    from lopt_trace.recorder import format_mean_sem
    from lopt_trace.store import human_bytes, lock_path, open_store, size_on_disk
    from lopt_trace.zarr_io import exists

    tree = open_store(path, check=False)  # a damaged store is described, not refused
    a = tree.attrs
    integrity, damaged = _integrity(path, a)
    lines = [f"store    {path}  ({human_bytes(size_on_disk(path))} on disk)",
             f"schema   v{a['schema_version']}, written by lopt-trace {a['lopt_trace_version']} on {a['created']}",
             f"command  {a['command']}",
             f"task     {a['task']}  {a['task_config']}",
             f"runs     {len(a['seeds'])} (seeds {a['seeds'][0]}..{a['seeds'][-1]}), {a['steps']} steps, "
             f"every {a['every']} kept, {a['params_per_tensor']} params per tensor"
             + (f", {a['dtype']}" if "dtype" in a else "")
             + (f" rounded to {a['keep_bits']} mantissa bits (--keep-bits)" if a.get("keep_bits") else "")]
    lines += integrity
    if exists(lock_path(path)):
        lines.append(f"note     a recorder is writing it, or was interrupted (lock {lock_path(path)})")
    lines.append("groups (dims, uncompressed size):")
    for node in sorted(tree.subtree, key=lambda n: n.path):
        if node.path == "/":
            continue
        ds = node.to_dataset(inherit=False)
        dims = ", ".join(f"{k} {v}" for k, v in ds.sizes.items())
        size = human_bytes(ds.nbytes) if ds.variables else ""
        lines.append(f"  {node.path:<28} {dims}" + (f"  [{size}]" if size else ""))
    lines.append("optimizers (final loss, mean ± sem over complete runs):")
    names = list(a["optimizers"])
    width = max([len(n) for n in names] + [4])
    for name in names:
        node = tree["runs"][name]
        if damaged:
            lines.append(f"  {name:<{width}}  n/a (the store is damaged)  ({node.attrs['source']}; "
                         f"{node.attrs['optimizer']})")
            continue
        done = np.asarray(node["run_complete"].values, dtype=bool)
        final = np.asarray(node["loss"].isel(loss_step=-1).values, dtype=np.float64)
        status = "" if done.all() else f"  [{int(done.sum())} of {done.size} runs complete]"
        lines.append(f"  {name:<{width}}  {format_mean_sem(final[done]) if done.any() else 'n/a'}"
                     f"  ({node.attrs['source']}; {node.attrs['optimizer']}){status}")
    return "\n".join(lines)


def _integrity(path, attrs) -> tuple[list[str], bool]:
    """The lines about the store's manifest (cheap check: every recorded file at its size)."""
    from lopt_trace.manifest import StoreDamaged, check, read_manifest

    try:
        man = read_manifest(path)
    except StoreDamaged as exc:
        return [f"integrity DAMAGED: {exc}"], True
    if man is None:
        if attrs.get("manifest"):
            return [f"integrity no manifest: its {attrs['manifest']} is missing (deleted, or the store "
                    "was copied without it): a lost chunk cannot be detected; "
                    f"`lopt-trace verify {path}` checks that every chunk decodes"], False
        return ["integrity no manifest (recorded before lopt-trace wrote one): a lost chunk cannot "
                f"be detected; `lopt-trace verify {path}` checks that every chunk decodes"], False
    report = check(path, full=False, manifest=man)
    if report.ok:
        state = "" if man.get("complete") else " (recording incomplete)"
        return [f"integrity manifest of {report.checked} files, all present at their recorded sizes"
                f"{state}; `lopt-trace verify {path}` also compares checksums"], False
    return ([f"integrity DAMAGED: {len(report.problems)} recorded files missing or changed; "
             f"`lopt-trace verify {path}` lists them:"]
            + [f"  {line}" for line in report.lines()]), True


def run(args) -> int:
    text = describe(args.store)
    print(text)
    return 1 if "\nintegrity DAMAGED" in text else 0
