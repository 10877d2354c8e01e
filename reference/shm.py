"""The shared-memory data plane: collectives of a group whose ranks share one node.

SEMANTICS.md, "Reductions", "all_gather", "sum_scatter" and "Hangs"; docs/contracts.md, "Data
planes". After the agreement round, each rank copies its input into its own slot of a segment
that every rank of the group maps (``MPI.Win.Allocate_shared``), then works on the others' slots
directly: for a reduction each rank reduces a disjoint slice of the chunk, in rank order, and every
rank copies every slice out; all_gather copies every slot out; sum_scatter reduces its own block.
Each element is reduced by exactly one rank, always in rank order, so every rank gets the same bits
and integers, bool, max and min give exactly what the MPI data plane gives.

Payloads move in chunks of at most ``CHUNK_BYTES`` per rank through ``DEPTH`` buffers, so the
segment never grows with the payload (``segment_bytes``). There is no barrier per chunk: every rank
owns three counters in the segment (chunks copied in, reduced, copied out), each written only by
its owner and only ever increased; peers poll them with a memory fence (``Win.Sync``) between the
counter and the data. Polling yields the core after a few spins and sleeps after longer waits,
because ranks may outnumber cores.

A rank only ever writes its own slot and its own counters, and results are copied out of the
segment into private arrays. So when a peer stops and the wait times out, the group is retired
(unusable, ``TimeoutError`` naming the peers whose counters stalled) and its segment with it: it
is kept mapped and never used again, so a late peer can only write memory nobody reads.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from reference import deadline
from reference.reductions import SUM, combine_into

if TYPE_CHECKING:
    from mpi4py import MPI

# Per-rank chunk and pipeline depth: a rank copies chunk k+1 in while its peers still copy
# chunk k out. Measured at 2 ranks on 2 cores (see docs/benchmarks.md).
CHUNK_BYTES = 1 << 20
DEPTH = 2
# Each rank's counters sit on their own cache line: polling one rank's never stalls another's.
_LINE = 64
_COPIED_IN, _REDUCED, _COPIED_OUT = 0, 1, 2

# Polls before the first yield (ranks may outnumber cores: measured no slower than 64 on an
# idle pair), and time spent waiting before sleeping instead of yielding.
_SPINS = 4
_YIELD_SECONDS = 0.02
_MAX_SLEEP = 0.001
_yield = getattr(os, "sched_yield", lambda: time.sleep(0))


def segment_bytes(size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Bytes of shared memory a group of ``size`` ranks maps: the cap, whatever the payload."""
    return size * (_LINE + DEPTH * chunk_bytes)


class Stalled(Exception):
    """A peer stopped advancing its counters before the deadline."""

    def __init__(self, ranks: list[int], seconds: float) -> None:
        super().__init__(ranks, seconds)
        self.ranks = ranks
        self.seconds = seconds


def _barrier(comm: MPI.Comm, on_stall: Callable[[float], Exception]) -> None:
    request = comm.Ibarrier()
    deadline.wait_all([request], lambda pending, seconds: on_stall(seconds))


class Segment:
    """One group's shared segment: counters and slots, and the chunk schedule all ranks follow."""

    def __init__(
        self, win: MPI.Win, memory: np.ndarray, rank: int, size: int, chunk_bytes: int
    ) -> None:
        self._win = win
        self.chunk_bytes = chunk_bytes
        self._sync = win.Sync
        self.rank = rank
        self.size = size
        control = memory[: size * _LINE].view(np.int64).reshape(size, _LINE // 8)
        self._counters = control
        self._mine = control[rank]
        # The same counters as Python ints through a flat view: checking a few of them this way
        # costs a tenth of a numpy reduction over the column (polled in every wait).
        flat = memoryview(control.reshape(-1)).cast("B").cast("q")
        self._flat = flat
        self._columns = [[r * (_LINE // 8) + c for r in range(size)] for c in range(_LINE // 8)]
        self._peers = [r for r in range(size) if r != rank]
        # slots[r, d]: rank r's d-th chunk buffer.
        self._slots = memory[size * _LINE :].reshape(size, DEPTH, chunk_bytes)
        # Chunks every rank has started: the same on every rank, since all run the same calls.
        self._chunks = 0

    @classmethod
    def create(
        cls,
        comm: MPI.Comm,
        on_stall: Callable[[float], Exception],
        chunk_bytes: int = CHUNK_BYTES,
    ) -> Segment | None:
        """Map a segment for ``comm``'s ranks (collective), or None when they span nodes.

        MPI has no deadline-bounded way to map shared memory, so every rank first proves it is
        here with a non-blocking barrier under the deadline (``on_stall(seconds)`` if not): a rank
        that arrives after its peers gave up raises instead of blocking in the mapping forever.
        """
        from mpi4py import MPI

        _barrier(comm, on_stall)
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        one_node = node.Get_size() == comm.Get_size()
        node.Free()
        if not one_node:
            return None
        rank, size = comm.Get_rank(), comm.Get_size()
        # One allocation, owned by rank 0 and mapped by all: one array covers every slot.
        total = segment_bytes(size, chunk_bytes)
        win = MPI.Win.Allocate_shared(total if rank == 0 else 0, 1, comm=comm)
        buffer, _ = win.Shared_query(0)
        memory = np.frombuffer(buffer, np.uint8, count=total)
        win.Lock_all(MPI.MODE_NOCHECK)  # the passive epoch in which Win.Sync is a fence
        segment = cls(win, memory, rank, size, chunk_bytes)
        segment._mine[:] = 0
        win.Sync()
        # Nobody polls a counter before every owner has zeroed its own.
        _barrier(comm, on_stall)
        return segment

    # -- synchronisation --

    def _publish(self, counter: int, value: int) -> None:
        """Make this rank's writes visible, then announce them."""
        self._sync()
        self._mine[counter] = value

    def _wait(self, counter: int, value: int) -> None:
        """Until every peer's ``counter`` reaches ``value``; raise Stalled at the deadline."""
        flat, column = self._flat, self._columns[counter]
        if _all_reached(flat, column, value):
            self._sync()
            return
        spins = 0
        start = time.monotonic()
        limit = start + deadline.get_timeout()
        sleep = 1e-5
        while not _all_reached(flat, column, value):
            spins += 1
            if spins < _SPINS:
                continue
            now = time.monotonic()
            if now >= limit:
                late = [r for r in self._peers if flat[column[r]] < value]
                raise Stalled(late, deadline.get_timeout())
            if now - start < _YIELD_SECONDS:
                _yield()
            else:
                time.sleep(sleep)
                sleep = min(sleep * 2, _MAX_SLEEP)
        self._sync()

    def _reserve(self, chunks: int) -> int:
        first = self._chunks
        self._chunks += chunks
        return first

    def _buffer_free(self, chunk: int) -> np.ndarray:
        """This rank's buffer for ``chunk``, once every rank is done with its previous use."""
        if chunk >= DEPTH:
            self._wait(_COPIED_OUT, chunk - DEPTH + 1)
        return self._slots[self.rank, chunk % DEPTH]

    # -- the collectives; inputs and outputs are flat and C-contiguous --

    def all_reduce(self, kind: str, src: np.ndarray, out: np.ndarray) -> None:
        """``out = src (kind) over the ranks``: each rank reduces one slice of every chunk.

        A rank's own slice never leaves its private input: peers only read the other slices of
        its slot, and it reduces its slice straight from ``src`` into that slice of its slot.
        """
        per = self.chunk_bytes // src.itemsize
        count = max(1, math.ceil(src.size / per))
        first = self._reserve(count)
        rank = self.rank
        self._copy_in_others(src, first, per, 0)
        for index in range(count):
            chunk = first + index
            start = index * per
            bounds = self._bounds(min(per, src.size - start))
            lo, hi = bounds[rank], bounds[rank + 1]
            self._wait(_COPIED_IN, chunk + 1)
            views = [row.view(src.dtype) for row in self._slots[:, chunk % DEPTH]]
            parts = [view[lo:hi] for view in views]
            parts[rank] = src[start + lo : start + hi]
            _reduce(kind, parts, views[rank][lo:hi])
            self._publish(_REDUCED, chunk + 1)
            if index + 1 < count:
                self._copy_in_others(src, first, per, index + 1)
            self._wait(_REDUCED, chunk + 1)
            for r in range(self.size):
                lo, hi = bounds[r], bounds[r + 1]
                out[start + lo : start + hi] = views[r][lo:hi]
            self._publish(_COPIED_OUT, chunk + 1)

    def _bounds(self, length: int) -> list[int]:
        """Rank r reduces elements ``[bounds[r], bounds[r + 1])`` of a chunk of ``length``."""
        return [length * r // self.size for r in range(self.size + 1)]

    def _copy_in_others(self, src: np.ndarray, first: int, per: int, index: int) -> None:
        """Chunk ``index`` of ``src`` into this rank's buffer, but for its own slice."""
        chunk = first + index
        piece = src[index * per : (index + 1) * per]
        bounds = self._bounds(piece.size)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        slot = self._buffer_free(chunk).view(src.dtype)
        slot[:lo] = piece[:lo]
        slot[hi : piece.size] = piece[hi:]
        self._publish(_COPIED_IN, chunk + 1)

    def _copy_in(self, src: np.ndarray, first: int, per: int, index: int) -> None:
        chunk = first + index
        piece = src[index * per : (index + 1) * per]
        slot = self._buffer_free(chunk).view(src.dtype)
        slot[: piece.size] = piece
        self._publish(_COPIED_IN, chunk + 1)

    def all_gather(self, src: np.ndarray, out: np.ndarray) -> None:
        """``out[r * n : (r + 1) * n] = rank r's src`` (bytes): every rank copies every slot."""
        nbytes = src.nbytes
        src = src.view(np.uint8)
        out = out.view(np.uint8)
        per = self.chunk_bytes
        count = max(1, math.ceil(nbytes / per))
        first = self._reserve(count)
        self._copy_in(src, first, per, 0)
        out[self.rank * nbytes : (self.rank + 1) * nbytes] = src
        for index in range(count):
            chunk = first + index
            start = index * per
            length = min(per, nbytes - start)
            self._wait(_COPIED_IN, chunk + 1)
            if index + 1 < count:
                self._copy_in(src, first, per, index + 1)
            for r in self._peers:
                at = r * nbytes + start
                out[at : at + length] = self._slots[r, chunk % DEPTH, :length]
            self._publish(_COPIED_OUT, chunk + 1)

    def sum_scatter(self, src: np.ndarray, out: np.ndarray) -> None:
        """``out = sum over ranks of block self.rank of src`` (src holds ``size`` blocks)."""
        size = self.size
        block = src.size // size
        per = self.chunk_bytes // size // src.itemsize  # elements of each block per chunk
        count = max(1, math.ceil(block / per))
        first = self._reserve(count)
        blocks = src.reshape(size, block)
        self._scatter_in(blocks, first, per, 0)
        for index in range(count):
            chunk = first + index
            if index + 1 < count:
                self._scatter_in(blocks, first, per, index + 1)
            self._wait(_COPIED_IN, chunk + 1)
            start = index * per
            length = min(per, block - start)
            lo = self.rank * per
            parts = [row.view(src.dtype)[lo : lo + length] for row in self._slots[:, chunk % DEPTH]]
            parts[self.rank] = blocks[self.rank, start : start + length]
            _reduce(SUM, parts, out[start : start + length])
            self._publish(_COPIED_OUT, chunk + 1)

    def _scatter_in(self, blocks: np.ndarray, first: int, per: int, index: int) -> None:
        """Chunk ``index`` of every peer's block into this rank's buffer, block r at r * per.

        The block this rank reduces itself never leaves its private input.
        """
        chunk = first + index
        pieces = blocks[:, index * per : (index + 1) * per]
        slot = self._buffer_free(chunk).view(blocks.dtype)
        length = pieces.shape[1]
        for r in self._peers:
            slot[r * per : r * per + length] = pieces[r]
        self._publish(_COPIED_IN, chunk + 1)


def _all_reached(flat: memoryview, column: list[int], value: int) -> bool:
    for index in column:
        if flat[index] < value:
            return False
    return True


def _reduce(kind: str, parts: list[np.ndarray], target: np.ndarray) -> None:
    """``target = parts[0] (kind) parts[1] (kind) ...``, in rank order; target is no input."""
    if target.size == 0:
        return
    accumulated = parts[0]
    for part in parts[1:]:
        combine_into(kind, accumulated, part, target)
        accumulated = target


def run(move: Callable[[], None], on_stall: Callable[[list[int], float], Exception]) -> None:
    """Run ``move`` (a Segment method call); a stalled peer raises ``on_stall(peers, seconds)``."""
    try:
        move()
    except Stalled as stalled:
        raise on_stall(stalled.ranks, stalled.seconds) from None
