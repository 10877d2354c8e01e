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

# Payload range (bytes of each rank's input, [from, below)) in which ``auto`` takes shared
# memory; None: never. Measured at 2 ranks on the 2-core machine: the plane alone against
# MPICH's collectives on an idle pair, all-reduce 2.2-3.4x and sum_scatter 1.4-4x from 256 KiB
# to 64 MiB, all_gather 1.4x up to 1 MiB but 0.8-0.9x from 16 MiB (MPICH copies once, the
# segment twice). But through the API, against the MPI plane of the same commit (its exchanges
# for sum_scatter and large all-reduces, load average ~13): all_sum 0.91/1.58/1.09/1.15/1.49x
# raw at 256K/1M/4M/16M/64M where the MPI plane gave 0.45/0.75/1.17/1.02/3.52x; sum_scatter
# shm 1.11/0.96/0.66/0.92/2.69x, MPI plane 2.38/2.78/0.97/1.44/4.91x; all_gather shm
# 2.03/1.29/0.79/0.64/0.38x, MPI plane 1.32/0.54/1.23/1.09/0.83x. Shared memory wins only
# around 256 KiB-1 MiB for all_sum and all_gather, on a loaded machine: ``auto`` stays on MPI
# until an idle measurement (``bench --data-planes mpi,shm``) sets a range here.
AUTO_RANGES: dict[str, tuple[int, int] | None] = {
    "all_sum": None,
    "all_max": None,
    "all_min": None,
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
