"""Where an optimizer comes from: one resolver from a spec to an :class:`Entry`, and the one reader
of the tuned hyperparameters (``data/tuned/<task>.json``).

A spec is ``learned`` or ``learned-warm`` (the bundled learned optimizer of the task), a baseline
name (``sgd``, ``momentum``, ``rmsprop``, ``adam``: tuned θ when the task has it), the path of an
optimizer file (``lopt-trace train --out FILE``) or ``optax:NAME(...)``. ``lopt-trace record``,
``compare``, ``tune`` and the analyses all resolve optimizers here.

An optimizer file meta-trained on another task is refused, by ``record`` and ``compare`` alike:
its θ was fitted to other gradients, and recording it under this task's name would mislead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import xarray as xr

from lopt_trace import bundled
from lopt_trace.errors import UserError
from lopt_trace.optimizers import BASELINES, ComponentwiseOptimizer
from lopt_trace.optimizers.io import load_optimizer
from lopt_trace.optimizers.optax_wrap import is_optax_spec, optax_entry
from lopt_trace.store.template import to_json_types
from lopt_trace.store.zarr_io import exists


class Unavailable(UserError):
    """The spec names something this installation does not have (a bundled learned optimizer, a
    tuned θ); ``compare`` skips it with a note in its default set."""


@dataclasses.dataclass
class Entry:
    """One resolved optimizer: its name (a store's group, a comparison's label), the optimizer, θ,
    where θ came from (``tuned``, ``default``, ``bundled``, ``spec``, a file path), the spec it was
    resolved from, the meta-training history of a learned optimizer and attributes to record."""

    name: str
    optimizer: ComponentwiseOptimizer
    theta: dict
    source: str
    spec: str = ""
    meta_train: xr.Dataset | None = None
    attrs: dict = dataclasses.field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name (as ``compare`` calls it)."""
        return self.name


# -- the tuned hyperparameters -------------------------------------------------------------------
def read_tuned(path: str | os.PathLike) -> dict:
    """Read a tuned-hyperparameter file; ``{"task": None, "optimizers": {}}`` when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return {"task": None, "optimizers": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable tuned-hyperparameter file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("optimizers"), dict):
        raise UserError(f"{path} is not a tuned-hyperparameter file (no 'optimizers' mapping)")
    return data


def tuned_entry(task: str, optimizer: str, path: str | os.PathLike | None = None) -> dict | None:
    """The tuned entry (``theta`` and how it was selected) of ``optimizer`` for ``task`` from
    ``path`` (default: the bundled file), or None. A ``path`` given explicitly must exist."""
    if path is not None and not Path(path).is_file():
        raise UserError(f"no tuned-hyperparameter file at {path}")
    entry = read_tuned(path or bundled.tuned_path(task))["optimizers"].get(optimizer)
    if not isinstance(entry, dict) or not isinstance(entry.get("theta"), dict):
        return None
    return entry


def tuned_theta(task: str, optimizer: str, path: str | os.PathLike | None = None) -> dict | None:
    """The tuned θ of ``optimizer`` for ``task`` (float32 JAX arrays), or None if absent."""
    entry = tuned_entry(task, optimizer, path)
    if entry is None:
        return None
    return {k: jnp.asarray(v, jnp.float32) for k, v in entry["theta"].items()}


# -- entries ---------------------------------------------------------------------------------------
def _f32(theta: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float32) for k, v in theta.items()}


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip("._") or "optimizer"


def baseline_entry(task: str, name: str, tuned_file: str | os.PathLike | None = None,
                   untuned: bool = True) -> Entry:
    """A baseline with its tuned θ for ``task``; without one, its default θ when ``untuned``, else
    :class:`Unavailable`."""
    opt = BASELINES[name]()
    defaults = _f32(opt.init_theta())
    entry = tuned_entry(task, name, tuned_file)
    if entry is None:
        if untuned:
            return Entry(name, opt, defaults, "default", name)
        raise Unavailable(f"no tuned {name} hyperparameters for {task} in "
                          f"{tuned_file or bundled.tuned_path(task)}; run `lopt-trace tune --task {task} "
                          f"--optimizer {name} --bundle`, or pass --untuned to use the defaults")
    values = entry["theta"]
    if set(values) != set(defaults):
        raise UserError(f"the tuned θ of {name} for {task} in {tuned_file or bundled.tuned_path(task)} has "
                        f"entries {sorted(values)}, expected {sorted(defaults)}; re-run "
                        f"`lopt-trace tune --task {task} --optimizer {name} --bundle`")
    info = {k: v for k, v in entry.items() if k != "theta"}
    return Entry(name, opt, _f32(values), "tuned", name,
                 attrs={"tuned": to_json_types(info),
                        "tuned_file": str(tuned_file or bundled.tuned_path(task))})


def file_entry(task: str, path: str | os.PathLike, name: str, source: str, spec: str) -> Entry:
    """A learned optimizer from its file; refused when it was meta-trained on another task."""
    trained = load_optimizer(path)
    trained_on = (trained.task or {}).get("name")
    if trained_on not in (None, task):
        raise UserError(f"{path} was meta-trained on {trained_on!r}, not {task!r}; pass the optimizer "
                        f"file for {task!r} (or train one with `lopt-trace train --task {task}`)")
    attrs = {"optimizer_file": str(path)}
    if trained.task is not None:
        attrs["trained_on"] = to_json_types(trained.task)
    if trained.attrs.get("metatrain"):
        attrs["metatrain"] = to_json_types(trained.attrs["metatrain"])
    return Entry(name, trained.optimizer, _f32(trained.theta), source, spec,
                 meta_train=trained.meta_train, attrs=attrs)


def resolve(spec: str, task: str, *, tuned_file: str | os.PathLike | None = None,
            untuned: bool = True, learned_file: str | os.PathLike | None = None) -> Entry:
    """The :class:`Entry` of one optimizer SPEC for ``task`` (θ loaded and checked).

    ``tuned_file`` replaces the bundled tuned hyperparameters; without ``untuned`` a baseline that
    has no tuned θ is :class:`Unavailable` instead of running with its defaults. ``learned_file``
    is the file the spec ``learned`` stands for (default: the bundled one).
    """
    if is_optax_spec(spec):  # any component-wise optax transform, θ from the spec
        name, opt, theta = optax_entry(spec)
        return Entry(name, opt, theta, "spec", spec)
    if spec in BASELINES:
        return baseline_entry(task, spec, tuned_file, untuned)
    if spec in bundled.LEARNED:
        if spec == "learned" and learned_file:
            return file_entry(task, learned_file, spec, str(learned_file), spec)
        path = bundled.optimizer_path(task, spec)
        if not path.exists():
            raise Unavailable(f"no {spec} optimizer is bundled for task {task!r}; train one with "
                              f"`lopt-trace train --task {task} --out FILE`, then pass --optimizer FILE")
        return file_entry(task, path, spec, "bundled", spec)
    if not exists(spec):
        known = ", ".join([*bundled.LEARNED, *BASELINES])
        raise UserError(f"unknown optimizer {spec!r}: use one of {known}, optax:NAME, or the path "
                        f"of an optimizer file (nothing at {spec}; make one with `lopt-trace train`)")
    return file_entry(task, spec, _label(Path(str(spec).rstrip("/")).stem), str(spec), spec)


def resolve_many(task: str, specs) -> list[Entry]:
    """:func:`resolve` every SPEC (each at most once); repeated names get ``_2``, ``_3``, ...."""
    specs = list(specs)
    seen_specs = set()
    for spec in specs:
        if spec in seen_specs:
            raise UserError(f"--optimizer {spec} is given twice")
        seen_specs.add(spec)
    entries, names = [], set()
    for spec in specs:
        entry = resolve(spec, task)
        base, i = entry.name, 2
        while entry.name in names:
            entry.name = f"{base}_{i}"
            i += 1
        names.add(entry.name)
        entries.append(entry)
    return entries


__all__ = ["Entry", "Unavailable", "baseline_entry", "file_entry", "read_tuned", "resolve", "resolve_many",
           "tuned_entry",
           "tuned_theta"]
