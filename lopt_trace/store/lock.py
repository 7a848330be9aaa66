"""The writer's lock: one process writes a store (or another output) at a time."""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import time
from pathlib import Path

import psutil

from lopt_trace.errors import UserError
from lopt_trace.store.zarr_io import is_local, url_to_fs


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
