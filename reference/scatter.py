"""Reductions by pairwise exchange, summed (or max'd, min'd) locally in rank order.

Two data phases use it instead of MPI's own reductions:

- ``sum_scatter``: MPICH's ``(I)reduce_scatter_block`` is slow on one node at some sizes
  (measured at 2 ranks on this project's machine: 310 us at 256 KiB and 1.2 ms at 1 MiB
  non-blocking, where this exchange takes 36 us and 60 us; docs/benchmarks.md).
- the all-reduces MPI has no native op for (float max/min with NaN propagation, complex max/min,
  float16/bfloat16 sums): a user-defined op calls back into Python for every chunk MPI reduces
  (0.4-0.5x raw ``MPI.MAX`` at 16-64 MiB); and every all-reduce from ``EXCHANGE_FROM`` bytes.
  Here each rank reduces one block with numpy, then one ``Iallgatherv`` in place hands every
  rank every block (a reduce-scatter then an all-gather, as MPI's large-message algorithms do).

Rank ``d`` receives block ``d`` of every peer's input and combines the blocks itself, in rank
order, with the rule of ``reference.reductions``: every element is reduced by exactly one rank, so
every rank gets the same bits, and the result does not depend on MPI's algorithm.

The block of the first peer in rank order lands in the result buffer itself; the others (groups
of 3 or more) in one pooled staging buffer. At the deadline the requests, the input and both
buffers are handed to the group's orphans, so neither buffer is recycled while a late peer could
still write it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from reference import buffers, deadline
from reference.reductions import SUM, combine_into

if TYPE_CHECKING:
    from reference.group import Group

# From this payload up, even the reductions MPI has a native op for go by exchange (below it,
# on one node, dataplane's auto takes shared memory). Measured on the idle 2-core machine, paired
# with raw Allreduce: at 4 MiB the exchange (float max) gave 1.4-2.2x raw at 2 ranks and 2.0x at
# 3, where Iallreduce gave 0.7-1.1x and 1.0x; 1.7x at 16 MiB and 2.9-3.3x at 64 MiB (2 ranks).
EXCHANGE_FROM = 4 << 20

# Point-to-point tag of the blocks on the group's communicator: distinct from the agreement
# round's (11, 12) and from send/recv's (21, 22 and 1024 up).
TAG_BLOCK = 13


def _bytes(array: np.ndarray) -> Any:
    from mpi4py import MPI

    return [array.reshape(-1).view(np.uint8), MPI.BYTE]


def _bounds(count: int, size: int) -> list[int]:
    """Block boundaries: ``size`` blocks of ``count`` elements, the first ones one longer."""
    base, extra = divmod(count, size)
    edges = [0]
    for r in range(size):
        edges.append(edges[-1] + base + (r < extra))
    return edges


def _timed_out(group: Group, op: str, kept: tuple[Any, ...]) -> Any:
    def on_timeout(pending: list[int], seconds: float) -> TimeoutError:
        group._orphans.append(kept)
        return group._break(
            f"{op} on {group._label} timed out after {seconds:g} s moving data: a peer stopped "
            "making progress after every rank had arrived"
        )

    return on_timeout


def _reduce_block(
    group: Group, op: str, kind: str, flat: np.ndarray, mine: np.ndarray, edges: list[int]
) -> None:
    """``mine`` = the ``kind`` reduction, over the ranks, of this rank's block of ``flat``."""
    comm, rank, size = group._comm, group._rank, group._size
    first = 1 if rank == 0 else 0
    others = [peer for peer in range(size) if peer not in (rank, first)]
    staging = buffers.empty((len(others), mine.size), flat.dtype) if others else None
    requests = [comm.Irecv(_bytes(mine), first, TAG_BLOCK)]
    requests += [comm.Irecv(_bytes(staging[i]), peer, TAG_BLOCK) for i, peer in enumerate(others)]
    for step in range(1, size):
        peer = (rank + step) % size
        requests.append(comm.Isend(_bytes(flat[edges[peer] : edges[peer + 1]]), peer, TAG_BLOCK))
    # Sends are not cancelled (MPICH cannot cancel a send); everything stays with the orphans.
    kept = (requests, flat, mine, staging)
    deadline.wait_all(requests, _timed_out(group, op, kept), cancel=False)

    def block(r: int) -> np.ndarray:
        if r == rank:
            return flat[edges[rank] : edges[rank + 1]]
        return mine if r == first else staging[others.index(r)]

    combine_into(kind, block(0), block(1), mine)
    for r in range(2, size):
        combine_into(kind, mine, block(r), mine)


def sum_scatter_into(group: Group, array: np.ndarray, out: np.ndarray) -> None:
    """``out`` = this rank's block of the element-wise sum of every rank's ``array``.

    ``array`` is C-contiguous with ``group.size() * out.size`` elements. A peer that stops
    before its blocks have moved retires the group (TimeoutError at the deadline).
    """
    edges = [r * out.size for r in range(group._size + 1)]
    _reduce_block(group, "sum_scatter", SUM, array.reshape(-1), out.reshape(-1), edges)


def all_reduce_into(group: Group, op: str, kind: str, array: np.ndarray, out: np.ndarray) -> None:
    """``out`` = the element-wise ``kind`` reduction of every rank's ``array`` (same shape).

    Each rank reduces one block, then an in-place ``Iallgatherv`` hands every rank every block.
    """
    from mpi4py import MPI

    size, rank = group._size, group._rank
    flat_out = out.reshape(-1)
    edges = _bounds(flat_out.size, size)
    mine = flat_out[edges[rank] : edges[rank + 1]]
    _reduce_block(group, op, kind, array.reshape(-1), mine, edges)
    itemsize = out.dtype.itemsize
    counts = [(edges[r + 1] - edges[r]) * itemsize for r in range(size)]
    displacements = [edges[r] * itemsize for r in range(size)]
    request = group._comm.Iallgatherv(
        MPI.IN_PLACE, [flat_out.view(np.uint8), counts, displacements, MPI.BYTE]
    )
    deadline.wait_all([request], _timed_out(group, op, (request, array, out)), cancel=False)
