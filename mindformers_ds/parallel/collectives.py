"""Which collectives a backend has, decided in one place, and the emulations used where it lacks one.

    HCCL (Ascend), NCCL (GPU): AllReduce, AllGather and ReduceScatter over any group, AlltoAll,
                               Send/Receive
    mccl (CPU, MindSpore 2.10): AllReduce over any group, AllGather and Broadcast over the world
                               group only (measured: a sub-group AllGather fails to run)

The explicit executor's cells (comm.py) ask `native(ctx, op, axis)`; where it says no they
build the emulation: a group all-gather as an all-reduce of zero-padded buffers, a
reduce-scatter as an all-reduce and a slice. Both paths exist; the tests here run mccl's.
"""
from __future__ import annotations

from typing import Dict, FrozenSet

BACKEND_OF_DEVICE: Dict[str, str] = {"CPU": "mccl", "Ascend": "hccl", "GPU": "nccl"}
_FULL = frozenset({"all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv", "broadcast"})
CAPABILITIES: Dict[str, FrozenSet[str]] = {
    "hccl": _FULL,
    "nccl": _FULL,
    "mccl": frozenset({"all_reduce"}),         # over any group
}
WORLD_ONLY: Dict[str, FrozenSet[str]] = {"mccl": frozenset({"all_gather", "broadcast"})}


def native(device: str, op: str, world_group: bool) -> bool:
    """Whether the backend of `device` runs collective `op` itself on this group."""
    backend = BACKEND_OF_DEVICE.get(device, "mccl")
    if op in CAPABILITIES.get(backend, frozenset()):
        return True
    return world_group and op in WORLD_ONLY.get(backend, frozenset())
