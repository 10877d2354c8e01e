"""sum_scatter's MPI data phase: a pairwise exchange of blocks, summed locally in rank order.

MPICH's ``(I)reduce_scatter_block`` is slow on one node at some sizes (measured at 2 ranks on
this project's machine: 310 us at 256 KiB and 1.2 ms at 1 MiB non-blocking, where this exchange
takes 36 us and 60 us; docs/benchmarks.md). Here rank ``d`` receives block ``d`` of every peer's
input and sums the blocks itself, in rank order, with the rule of ``reference.reductions``: so
float16, bfloat16 and bool follow the same rule as every other path, and the result does not
depend on MPI's algorithm.

The block of the first peer in rank order lands in the result buffer itself; the others (groups
of 3 or more) in one pooled staging buffer. MPI never writes anything else, and at the deadline
the requests, the input and both buffers are handed to the group's orphans, so neither buffer is
recycled while a late peer could still write it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from reference import buffers, deadline
from reference.reductions import SUM, combine_into

if TYPE_CHECKING:
    from reference.group import Group

# Point-to-point tag of the blocks on the group's communicator: distinct from the agreement
# round's (11, 12) and from send/recv's (21, 22 and 1024 up).
TAG_BLOCK = 13


def _bytes(array: np.ndarray) -> Any:
    from mpi4py import MPI

    return [array.reshape(-1).view(np.uint8), MPI.BYTE]


def sum_scatter_into(group: Group, array: np.ndarray, out: np.ndarray) -> None:
    """``out`` = this rank's block of the element-wise sum of every rank's ``array``.

    ``array`` is C-contiguous with ``group.size() * out.size`` elements. A peer that stops
    before its blocks have moved retires the group (TimeoutError at the deadline).
    """
    comm, rank, size = group._comm, group._rank, group._size
    blocks = array.reshape(size, out.size)
    first = 1 if rank == 0 else 0
    others = [peer for peer in range(size) if peer not in (rank, first)]
    staging = buffers.empty((len(others), out.size), array.dtype) if others else None
    requests = [comm.Irecv(_bytes(out), first, TAG_BLOCK)]
    requests += [comm.Irecv(_bytes(staging[i]), peer, TAG_BLOCK) for i, peer in enumerate(others)]
    for step in range(1, size):
        peer = (rank + step) % size
        requests.append(comm.Isend(_bytes(blocks[peer]), peer, TAG_BLOCK))

    def on_timeout(pending: list[int], seconds: float) -> TimeoutError:
        group._orphans.append((requests, array, out, staging))
        return group._break(
            f"sum_scatter on {group._label} timed out after {seconds:g} s moving data: a peer "
            "stopped making progress after every rank had arrived"
        )

    # Sends are not cancelled (MPICH cannot cancel a send); everything stays with the orphans.
    deadline.wait_all(requests, on_timeout, cancel=False)

    def block(r: int) -> np.ndarray:
        if r == rank:
            return blocks[rank]
        return out.reshape(-1) if r == first else staging[others.index(r)]

    flat_out = out.reshape(-1)
    combine_into(SUM, block(0), block(1), flat_out)
    for r in range(2, size):
        combine_into(SUM, flat_out, block(r), flat_out)
