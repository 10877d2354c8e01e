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

# Payload range (bytes of each rank's input, [from, below); below None: no limit) in which
# ``auto`` takes shared memory; None: never. Measured on the idle 2-core machine
# (``bench --data-planes mpi,shm``, docs/benchmarks.md), each plane against raw mpi4py in the
# same job:
# - all-reduces: shared memory is as fast as the MPI plane or faster at every size past the
#   inline limit (64 KiB), at 2 ranks (all_sum 1.6-2.1x raw at 160-384 KiB where the MPI plane
#   gives 1.6x; 1.2-1.3x at 512 KiB-2 MiB against 0.85-1.2x; equal from 16 MiB, where the MPI
#   plane exchanges) and at 3 and 4 ranks (1.0-2.7x against 0.56-2.4x);
# - sum_scatter: the MPI plane's exchange is faster up to 768 KiB at 2 ranks (1.1-2.2x against
#   0.9-1.5x); from 1 MiB shared memory is as fast or faster, and at 3 and 4 ranks clearly;
# - all_gather: MPI's allgather copies once, the segment twice: shared memory is slower at 2
#   ranks from 2 MiB (0.5-0.9x against 0.7-1.2x) and no faster at 3 and 4.
AUTO_RANGES: dict[str, tuple[int, int | None] | None] = {
    "all_sum": (0, None),
    "all_max": (0, None),
    "all_min": (0, None),
    "all_gather": None,
    "sum_scatter": (1 << 20, None),
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
        if bounds is None or nbytes < bounds[0] or (bounds[1] is not None and nbytes >= bounds[1]):
            return None
    if group._segment is None:

        def stalled(seconds: float) -> TimeoutError:
            return group._break(
                f"{op} on {group._label} timed out after {seconds:g} s setting up shared memory: "
                "a peer stopped before every rank had arrived"
            )

        group._segment = Segment.create(group._comm, stalled) or False
    return group._segment or None
