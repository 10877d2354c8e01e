"""Which data plane moves a collective's payload once the agreement round has passed.

docs/contracts.md, "Data planes". ``mpi``: one MPI collective from the caller's buffer into the
result (works everywhere). ``shm``: the shared-memory plane of ``reference.shm``, for a group whose
ranks all share one node. ``auto`` (the default) takes shm when the group is on one node and the
payload is in the op's range below (measured); a group that spans nodes always uses MPI.

``REFERENCE_DATA_PLANE=mpi|shm|auto`` or ``set_data_plane(name)`` chooses; every rank of a group
must choose the same (the choice is made on every rank from agreed facts only: op, payload size,
whether the group shares a node and whether its ranks can read each other, which they agree on
when the segment is mapped). ``shm`` on a group that spans nodes falls back to MPI.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from reference.shm import Segment

if TYPE_CHECKING:
    from reference.group import Group

PLANE_ENV = "REFERENCE_DATA_PLANE"
PLANES = ("mpi", "shm", "auto")

# Payload range (bytes of each rank's input, [from, below)) in which ``auto`` takes shared
# memory; None: never. Measured on the idle 2-core machine (``bench --data-planes mpi,shm``,
# docs/benchmarks.md), each plane against raw mpi4py in the same job, in both of the states in
# which that machine was found (raw MPI ran up to 2x faster in one):
# - all-reduces: at every size past the inline limit, since the segment reads its peers directly
#   from 2 MiB (reference.shm.DIRECT_FROM). 2 ranks, all_sum, shm against the MPI plane:
#   256 KiB 1.9-2.2x raw against 1.6-1.7x, 1 MiB 1.3-1.4x against 0.9x, 4 MiB 1.4-1.8x
#   against 1.5-1.8x, 16 MiB 1.8-1.9x against 1.7x, 64 MiB 3.2-3.6x against 2.9-3.4x; 3 ranks
#   faster at every size (64 MiB 5.6x against 4.7x); 4 ranks as fast or faster (16 MiB 1.9x
#   against 1.6x).
# - all_gather: below 1 MiB a rank at 3 ranks and more (past the inline limit: fifth session,
#   own pages, two runs each: 3 ranks 40-60 KiB a rank 0.50-0.55x raw against 0.35-0.40x;
#   4 ranks 0.53-0.58x against 0.39-0.43x; from 1 MiB a rank the planes tie); in groups of two
#   from 64 KiB to below 1 MiB a rank (PAIR_RANGES), where the segment copies (direct reads start
#   at 8 MiB) and beat the MPI plane in all runs measured but one (2 ranks, 256 KiB a rank:
#   0.55x against 0.67x, in a run whose baselines disagreed between planes): 2 ranks, 64 KiB a rank
#   0.72x raw against 0.62x, 128 KiB 0.84x against 0.73x (1.66-1.94x against 1.38-1.71x in other
#   runs), 512 KiB 0.92-1.05x against 0.75-0.89x; 3 ranks 0.51-0.89x against 0.39-0.66x; 4 ranks
#   0.52-1.68x against 0.42-0.66x. (Not yet raw MPI's speed there, so these sizes are below the
#   1.0x issue 15 asks of the plane wherever it is picked; the MPI plane is slower still.) Below
#   64 KiB the MPI plane is faster (2 ranks, 32 KiB: 0.9-1.2x against 0.6x); from 1 MiB they
#   trade places with the machine's state (direct reads gave 1.4-1.9x at 1-4 MiB in one state
#   and 0.6-0.7x in the other, where the MPI plane gave 0.8-1.2x in both).
# - sum_scatter: past the inline limit and below 2 MiB, at 3 ranks and more (groups of two keep
#   the MPI plane, PAIR_RANGES). Measured with buffers on pages of their own (fifth session),
#   shm against the MPI plane, two runs each: 3 ranks 96 KiB 0.95-1.03x raw against
#   0.61-0.69x, 512 KiB 2.0x against 1.6x, 1 MiB 0.90-0.91x against 0.78-0.81x; 4 ranks
#   96 KiB 0.62-0.63x against 0.44x, 256 KiB 0.76-0.78x against 0.59x, 1 MiB 0.82-0.86x
#   against 0.73-0.80x. From 2 MiB the MPI plane's exchange ties or wins (3 ranks 3 MiB
#   0.90-0.91x against 1.02-1.06x; 4 ranks 16 MiB 0.47x against 1.06-1.08x). At 2 ranks the
#   exchange is one send/receive pair and wins at every size (256 KiB 1.40-1.42x against
#   1.19-1.22x, 1 MiB 1.11-1.13x against 0.81-0.82x).
# A segment whose ranks cannot read each other copies twice, and takes the narrower
# ``COPYING_RANGES`` (measured before direct reads): all-reduces up to 4 MiB, where shared memory
# was as fast as the MPI plane or faster at 2 to 4 ranks; beyond it the MPI plane's exchange
# (reference.scatter) copies less; all_gather's and sum_scatter's ranges above, where the segment
# copies anyway (its direct reads start at 8 and 16 MiB); auto_ranges still applies first.
_EVERY = sys.maxsize
AUTO_RANGES: dict[str, tuple[int, int] | None] = {
    "all_sum": (0, _EVERY),
    "all_max": (0, _EVERY),
    "all_min": (0, _EVERY),
    "all_gather": (0, 1 << 20),
    "sum_scatter": (0, 2 << 20),
}
# Groups of two (all_gather and sum_scatter as measured above): all-reduces from 2 MiB (where
# the segment would read its peers directly) take the MPI plane, whose pairwise exchange is then
# one send/receive pair. Measured with buffers on pages of their own (docs/benchmarks.md, fourth
# session), 2 ranks, all_sum, shm against MPI:
# 4 MiB 1.09-1.15x raw against 1.26-1.29x, 16 MiB 1.70-1.88x against 1.39-1.49x, 64 MiB
# 3.7x against 3.4x in two runs; 0.88x against 1.66x, 0.91x against 1.67x, 2.3x against 4.1x
# in a third; a plain loop of 4 MiB calls 1240-1330 us against 484-504 us. The MPI plane lost
# at most a fifth where direct reads won and won up to 2.6x where they lost. At 3 and 4 ranks
# direct reads stayed ahead (3 ranks 2 MiB 1.77x against 1.12x, 64 MiB 6.5x against 5.4x).
PAIR_RANGES: dict[str, tuple[int, int] | None] = {
    "all_sum": (0, 2 << 20),
    "all_max": (0, 2 << 20),
    "all_min": (0, 2 << 20),
    "all_gather": (64 << 10, 1 << 20),
    "sum_scatter": None,
}
COPYING_RANGES: dict[str, tuple[int, int] | None] = {
    "all_sum": (0, 4 << 20),
    "all_max": (0, 4 << 20),
    "all_min": (0, 4 << 20),
    "all_gather": (0, 1 << 20),
    "sum_scatter": (0, 2 << 20),
}


def auto_ranges(group_size: int) -> dict[str, tuple[int, int] | None]:
    """The ranges in which ``auto`` takes the segment, for a group of ``group_size`` ranks."""
    return PAIR_RANGES if group_size == 2 else AUTO_RANGES


def _in(ranges: dict[str, tuple[int, int] | None], op: str, nbytes: int) -> bool:
    bounds = ranges[op]
    return bounds is not None and bounds[0] <= nbytes < bounds[1]


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
    if _plane == "auto" and not _in(auto_ranges(group._size), op, nbytes):
        return None
    if group._segment is None:

        def stalled(seconds: float) -> TimeoutError:
            return group._break(
                f"{op} on {group._label} timed out after {seconds:g} s setting up shared memory: "
                "a peer stopped before every rank had arrived"
            )

        group._segment = Segment.create(group._comm, stalled) or False
    segment = group._segment or None
    if _plane == "auto" and segment and not segment.single_copy:
        return segment if _in(COPYING_RANGES, op, nbytes) else None
    return segment
