"""Splitting a batch across every JAX device with ``jax.sharding``: a 1-D mesh of the devices and
its two shardings, shared by tuning (candidates), meta-training (problems) and recording (runs).

On one device there is nothing to split: callers then keep their plain jitted functions, so the
computation is exactly the one of before sharding existed.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def mesh_shardings(axis: str, devices) -> tuple:
    """``(replicated, split)`` on a 1-D mesh of ``devices`` named ``axis``: ``split`` divides an
    array's leading axis among the devices, ``replicated`` copies the whole array to each."""
    mesh = Mesh(np.array(list(devices)), (axis,))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(axis))


def batch_placement(batch: int, axis: str, devices=None) -> tuple | None:
    """:func:`mesh_shardings` of ``devices`` (default every JAX device, ``jax.devices()``) for a
    leading axis of ``batch``; None when there is one device or ``batch`` is not a multiple of
    their number (everything then stays on the default device)."""
    devices = jax.devices() if devices is None else list(devices)
    if len(devices) < 2 or int(batch) % len(devices):
        return None
    return mesh_shardings(axis, devices)


def shard_count(placement) -> int:
    """How many devices a :func:`batch_placement` splits over (1 for None)."""
    return 1 if placement is None else len(placement[1].mesh.devices.flat)
