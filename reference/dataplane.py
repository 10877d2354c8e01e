"""Which data plane moves a collective's payload once the agreement round has passed.

docs/contracts.md, "Data planes". ``mpi``: one MPI collective from the caller's buffer into the
result (works everywhere). ``shm``: the shared-memory plane of ``reference.shm``, for a group whose
ranks all share one node. ``auto`` (the default) takes shm when the group is on one node and the
payload is in the op's range below (measured); a group that spans nodes always uses MPI.

``REFERENCE_DATA_PLANE=mpi|shm|auto`` or ``set_data_plane(name)`` chooses; every rank of a group
must choose the same (the choice is made on every rank from agreed facts only: op, payload size,
and whether the group shares a node). ``shm`` on a group that spans nodes falls back to MPI.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from reference.shm import Segment

if TYPE_CHECKING:
    from reference.group import Group

PLANE_ENV = "REFERENCE_DATA_PLANE"
PLANES = ("mpi", "shm", "auto")

# Payload range (bytes of each rank's input, [from, below)) in which
# ``auto`` takes shared memory; None: never. Measured on the idle 2-core machine
# (``bench --data-planes mpi,shm``, docs/benchmarks.md), each plane against raw mpi4py in the
# same job, repeated runs:
# - all-reduces: past the inline limit (64 KiB) and below 4 MiB shared memory is as fast as the
#   MPI plane or faster, at 2 ranks (all_sum 1.8-2.0x raw at 256 KiB where the MPI plane gives
#   1.5-1.75x; 1.2-1.3x at 1 MiB against 0.85-0.95x) and at 3 and 4 ranks (1.0-1.6x against
#   0.6-1.0x). From 4 MiB the MPI plane's exchange (reference.scatter) is as fast at 3 and 4
#   ranks and faster at 2 (16 MiB 1.7-1.8x against 1.0-1.7x, 64 MiB 2.9-3.3x against 1.9-3.1x:
#   MPI copies the peer's half once, the segment copies in and out);
# - sum_scatter: at 2 ranks the exchange is one send/receive pair and beats the segment in most
#   runs (1-4 MiB 1.1-1.3x against 0.6-1.4x); at 3 and 4 ranks the segment wins only at 1 and
#   16 MiB, by less than run-to-run noise elsewhere: not taken;
# - all_gather: MPI's allgather copies once, the segment twice: shared memory is slower from
#   4 MiB (0.65-0.95x against 1.0-1.1x) and no faster below.
AUTO_RANGES: dict[str, tuple[int, int] | None] = {
    "all_sum": (0, 4 << 20),
    "all_max": (0, 4 << 20),
    "all_min": (0, 4 << 20),
    "all_gather": None,
    "sum_scatter": None,
}


def _parse(value: str, what: str) -> str:
    if value not in PLANES:
        raise ValueError(
            f"{what}={value!r} is not a data plane; expected one of {', '.join(PLANES)}"
        )
    return value


_plane = _parse(os.environ.get(PLANE_ENV, "auto"), PLANE_ENV)


def get_data_plane() -> str:
    """The data plane setting: ``mpi``, ``shm`` or ``auto``."""
    return _plane


def set_data_plane(name: str) -> str:
    """Choose the data plane of later collectives (on every rank alike); returns the previous."""
    global _plane
    previous, _plane = _plane, _parse(name, "the data plane")
    return previous


def segment_for(group: Group, op: str, nbytes: int) -> Segment | None:
    """The group's shared segment when this call should use it, else None (use MPI).

    Collective on the group's first shared-memory call (the segment is mapped then); every rank
    reaches the same answer because it depends on agreed facts only.
    """
    if _plane == "mpi":
        return None
    if _plane == "auto":
        bounds = AUTO_RANGES[op]
        if bounds is None or not bounds[0] <= nbytes < bounds[1]:
            return None
    if group._segment is None:

        def stalled(seconds: float) -> TimeoutError:
            return group._break(
                f"{op} on {group._label} timed out after {seconds:g} s setting up shared memory: "
                "a peer stopped before every rank had arrived"
            )

        group._segment = Segment.create(group._comm, stalled) or False
    return group._segment or None
