"""The recorded store: schema constants, opening and validating a store, and the writer's lock.

A store is an xarray DataTree in Zarr v3 (consolidated metadata); see ``docs/store.md`` for the
schema. It opens with plain ``xr.open_datatree(path, engine="zarr", chunks={})``;
:func:`open_store` opens it the same way and checks that it is a store this lopt-trace can read.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import xarray as xr

from lopt_trace.errors import UserError
from lopt_trace.zarr_io import exists, is_local, url_to_fs

#: version of the layout below; bumped on any incompatible change
SCHEMA_VERSION = 1

#: root attributes every store carries
ROOT_ATTRS = ("schema_version", "lopt_trace_version", "task", "task_config", "created", "command",
              "seeds", "versions", "optimizers", "steps", "every", "params_per_tensor")

#: group attributes of every ``/runs/<optimizer>`` group
GROUP_ATTRS = ("optimizer", "state_names", "source")

#: dims of a ``/runs/<optimizer>`` group
RUN_DIMS = ("run", "step", "loss_step", "param", "unit", "tensor", "bin", "bin_edge")

#: data variables of a ``/runs/<optimizer>`` group: name -> (dims, long_name, units)
RUN_VARIABLES = {
    "loss": (("run", "loss_step"), "training loss f(x_k) on step k's minibatch", "loss"),
    "gradient": (("run", "step", "param"), "gradient g_k of the loss", "loss / parameter"),
    "update": (("run", "step", "param"), "parameter update dx_k = readout(theta, h_{k+1})", "parameter"),
    "state": (("run", "step", "param", "unit"),
              "optimizer state h_{k+1} = F(theta, h_k, g_k) after taking step k's gradient", "1"),
    "initial_state": (("param", "unit"), "initial optimizer state h_0", "1"),
    "state_mean": (("run", "step", "tensor", "unit"),
                   "mean of the optimizer state over all parameters of each tensor", "1"),
    "gradient_abs_mean": (("run", "step", "tensor"),
                          "mean |gradient| over all parameters of each tensor", "loss / parameter"),
    "gradient_hist": (("run", "tensor", "bin"),
                      "count of |gradient| over all parameters and all steps, per log-spaced bin", "1"),
    "run_complete": (("run",), "whether the run was recorded to the end", "1"),
}

#: coordinates of a ``/runs/<optimizer>`` group: name -> (dims, long_name, units)
RUN_COORDS = {
    "run": (("run",), "seed of the test problem", "1"),
    "step": (("step",), "inner step k of the kept record", "step"),
    "loss_step": (("loss_step",), "inner step k", "step"),
    "unit": (("unit",), "optimizer state component", "1"),
    "tensor": (("tensor",), "parameter tensor", "1"),
    "tensor_layer": (("tensor",), "layer of the tensor", "1"),
    "tensor_kind": (("tensor",), "weight or bias", "1"),
    "tensor_size": (("tensor",), "number of parameters in the tensor", "1"),
    "param_tensor": (("param",), "tensor the parameter belongs to", "1"),
    "param_layer": (("param",), "layer the parameter belongs to", "1"),
    "param_kind": (("param",), "weight or bias", "1"),
    "param_index": (("param",), "position of the parameter within its (flattened) tensor", "1"),
    "param_flat_index": (("param",), "position of the parameter in the flat parameter vector", "1"),
    "bin": (("bin",), "geometric centre of the |gradient| bin", "loss / parameter"),
    "bin_edges": (("bin_edge",), "edges of the log-spaced |gradient| bins", "loss / parameter"),
}

#: |gradient| histogram: 4 bins per decade from 1e-10 to 1e4; values outside go to the end bins
HIST_LOG10_MIN = -10.0
HIST_LOG10_MAX = 4.0
HIST_BINS = 56


#: group attribute holding a JSON copy of every string-valued array of the group (see
#: :func:`with_label_copies`), for readers without zarr-python's variable-length strings
LABELS_ATTR = "labels"


def with_label_copies(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with a JSON copy of its string-valued variables and coordinates in ``attrs["labels"]``.

    zarr-python stores string coordinates (``tensor``, ``unit``, ``param_tensor``, ...) with its
    variable-length string type, which other Zarr implementations (tensorstore, for one) cannot
    read. The copy is ``{name: {"dims": [...], "runs": [[value, count], ...]}}``: the values in C
    order, run-length encoded (``param_tensor`` repeats each tensor's name once per kept
    parameter), so ``[v for v, n in runs for _ in range(n)]`` reshaped to the dims' sizes gives
    the array back. Every numeric array reads without help.
    """
    labels = {}
    for name, var in ds.variables.items():
        if var.dtype.kind not in "OUST":
            continue
        flat = [str(v) for v in np.asarray(var.values).ravel()]
        runs: list[list] = []
        for v in flat:
            if runs and runs[-1][0] == v:
                runs[-1][1] += 1
            else:
                runs.append([v, 1])
        labels[str(name)] = {"dims": [str(d) for d in var.dims], "runs": runs}
    out = ds.copy()
    if labels:
        out.attrs = {**ds.attrs, LABELS_ATTR: labels}
    return out


def labels_from_attrs(attrs: dict, sizes: dict) -> dict[str, np.ndarray]:
    """The string arrays of a group from its ``labels`` attribute (inverse of
    :func:`with_label_copies`); ``sizes`` maps dim names to lengths."""
    out = {}
    for name, entry in (attrs.get(LABELS_ATTR) or {}).items():
        values = [v for v, n in entry["runs"] for _ in range(int(n))]
        out[name] = np.array(values, dtype=object).reshape([sizes[d] for d in entry["dims"]])
    return out


def hist_edges() -> np.ndarray:
    """The fixed log-spaced |gradient| bin edges, shape (HIST_BINS + 1,)."""
    return np.logspace(HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS + 1)


# -- opening ---------------------------------------------------------------------------------------
def open_store(path, validate: bool = True, check: bool = True) -> xr.DataTree:
    """Open a recorded store as a Dask-backed ``xarray.DataTree``.

    With ``validate`` (the default) the store must carry ``schema_version`` equal to
    :data:`SCHEMA_VERSION` and have every group its attributes promise; otherwise a
    :class:`~lopt_trace.errors.UserError` says what is wrong.

    With ``check`` (the default) a store that has a manifest (:mod:`lopt_trace.manifest`) must
    have every file the recorder wrote, at its recorded size; otherwise
    :class:`~lopt_trace.manifest.StoreDamaged` (a ``UserError``) names what is affected. This
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
        from lopt_trace.manifest import bad_metadata

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
    """Raise :class:`~lopt_trace.manifest.StoreDamaged` unless every file in the store's manifest
    exists at its recorded size, and with ``full`` has its recorded checksum (nothing to check for
    a store recorded before manifests)."""
    from lopt_trace.manifest import StoreDamaged, check, read_manifest

    man = read_manifest(path)
    if man is None:
        # recorded before manifests, or copied without it (``tree.to_zarr`` elsewhere): nothing to
        # compare with; ``info`` and ``verify`` say so
        return
    report = check(path, full=full, manifest=man)
    if not report.ok:
        raise StoreDamaged(report.one_line())


def validate_store(tree: xr.DataTree, path="store") -> None:
    """Raise :class:`UserError` unless ``tree`` follows store schema v1."""
    attrs = tree.attrs
    if "schema_version" not in attrs:
        raise UserError(f"{path} is not a lopt-trace store: it has no schema_version attribute "
                        "(record one with `lopt-trace record`)")
    if attrs["schema_version"] != SCHEMA_VERSION:
        raise UserError(f"{path} has store schema version {attrs['schema_version']!r}; this lopt-trace "
                        f"reads version {SCHEMA_VERSION}; record it again with this version")
    missing = [a for a in ROOT_ATTRS if a not in attrs]
    if missing:
        raise UserError(f"{path} is missing root attributes {', '.join(missing)}; record it again")
    if "runs" not in tree.children:
        raise UserError(f"{path} has no /runs group; record it again")
    for name in attrs["optimizers"]:
        if name not in tree["runs"].children:
            raise UserError(f"{path} is missing the group /runs/{name}; record it again")
        node = tree["runs"][name]
        lacking = [v for v in RUN_VARIABLES if v not in node.variables]
        lacking += [a for a in GROUP_ATTRS if a not in node.attrs]
        if "theta" not in node.children:
            lacking.append("theta")
        if lacking:
            raise UserError(f"{path}: group /runs/{name} lacks {', '.join(lacking)}; record it again")


# -- sizes -----------------------------------------------------------------------------------------
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


# -- the writer's lock -----------------------------------------------------------------------------
def lock_path(path) -> str:
    """Where the lock of the store at ``path`` lives: next to it, as ``<store>.lock``.

    The lock is a sibling rather than a key inside the store because zarr warns about any object in
    a store that is not part of the Zarr hierarchy.
    """
    path = str(path)
    if is_local(path):
        p = Path(path.removeprefix("file://")).expanduser().resolve()
        return str(p.with_name(p.name + ".lock"))
    return path.rstrip("/") + ".lock"


def _pid_alive(pid: int, created: float | None) -> bool:
    import psutil

    try:
        proc = psutil.Process(int(pid))
        if created is not None and abs(proc.create_time() - float(created)) > 1.0:
            return False  # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


class StoreLock:
    """An exclusive lock on a store, held by one writer (pid and host recorded in the lock file).

    A lock left by a process that no longer runs on this host is stale and is taken over. A lock
    held by a live process, or by another host, is refused with :class:`UserError`::

        with StoreLock(path):
            ...  # write the store
    """

    def __init__(self, path, writer: str = "recorder"):
        self.path = str(path)
        self.writer = writer  # what holds it, for the message: "recorder", "training run"
        self.lock = lock_path(path)
        self.held = False
        self.took_over: dict | None = None  # the stale holder, when one was replaced

    def _info(self) -> dict:
        import psutil

        me = psutil.Process()
        return {"pid": os.getpid(), "host": socket.gethostname(), "process_created": me.create_time(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "store": self.path}

    # local files use O_EXCL, so two processes cannot both create the lock
    def _try_create(self) -> bool:
        payload = json.dumps(self._info()).encode()
        if is_local(self.lock):
            Path(self.lock).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            return True
        fs, root = url_to_fs(self.lock)
        if fs.exists(root):
            return False
        fs.pipe_file(root, payload)
        return True

    def holder(self) -> dict | None:
        """The lock file's content, or None when there is no lock."""
        try:
            if is_local(self.lock):
                data = Path(self.lock).read_bytes()
            else:
                fs, root = url_to_fs(self.lock)
                data = fs.cat_file(root)
        except (FileNotFoundError, OSError):
            return None
        try:
            info = json.loads(data)
        except ValueError:  # also UnicodeDecodeError
            return {}
        return info if isinstance(info, dict) else {}

    def _remove(self) -> None:
        if is_local(self.lock):
            Path(self.lock).unlink(missing_ok=True)
        else:
            fs, root = url_to_fs(self.lock)
            if fs.exists(root):
                fs.rm_file(root)

    def acquire(self) -> "StoreLock":
        for _ in range(3):
            if self._try_create():
                self.held = True
                return self
            info = self.holder()
            if info is None:  # removed between our two looks: try again
                continue
            if not isinstance(info, dict) or "pid" not in info or "host" not in info:
                time.sleep(0.3)  # a writer may be between creating the file and filling it
                info = self.holder()
                if info is None:
                    continue
            if not isinstance(info, dict) or "pid" not in info or "host" not in info:
                raise UserError(
                    f"the lock file {self.lock} is empty or unreadable, so it does not say which "
                    f"process holds {self.path} (a writer killed while creating it leaves one); "
                    f"if no lopt-trace process is writing {self.path} (check with `ps`), delete "
                    f"{self.lock} and run the command again")
            stale = (info.get("host") == socket.gethostname()
                     and not _pid_alive(info["pid"], info.get("process_created")))
            if not stale:
                who = (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
                       f"since {info.get('started', '?')}")
                raise UserError(f"{self.path} is being written by another {self.writer} ({who}); wait "
                                f"for it to finish, or delete {self.lock} if that process is gone")
            self.took_over = info
            self._remove()
        raise UserError(f"could not take the lock {self.lock}; try again")

    def release(self) -> None:
        if self.held:
            info = self.holder()
            if info is not None and info.get("pid") == os.getpid():
                self._remove()
            self.held = False

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def locked_output(writer: str = "training run", param: str = "out"):
    """Decorator: run the function holding the :class:`StoreLock` of its ``param`` argument, so a
    second process writing the same output is refused with one line (and the first is unaffected).
    A lock left by a dead process is taken over with a note; no lock file at all (an output
    written before this lock existed) is fine."""
    import functools
    import inspect

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            out = sig.bind(*args, **kwargs).arguments[param]
            if not str(out).strip():
                raise UserError("--out is empty; give the output's path")
            with StoreLock(out, writer=writer) as lock:
                if lock.took_over:
                    print(f"note: took over the stale lock of pid {lock.took_over.get('pid')} "
                          f"({lock.lock})", flush=True)
                return fn(*args, **kwargs)

        return locked

    return wrap
