"""The shared-memory data plane: collectives of a group whose ranks share one node.

SEMANTICS.md, "Reductions", "all_gather", "sum_scatter" and "Hangs"; docs/contracts.md, "Data
planes". After the agreement round, each rank copies its input into its own slot of a segment
that every rank of the group maps (``MPI.Win.Allocate_shared``), then works on the others' slots
directly: for a reduction each rank reduces a disjoint slice of the chunk, in rank order, and every
rank copies every slice out; all_gather copies every slot out; sum_scatter reduces its own block.
Each element is reduced by exactly one rank, always in rank order, so every rank gets the same bits
and integers, bool, max and min give exactly what the MPI data plane gives.

When every rank can read every peer's memory directly (``reference.crossmemory``: Linux
``process_vm_readv``, probed when the segment is mapped), data skips the segment altogether: a
rank reads the slice it reduces straight from its peers' inputs, and then every reduced slice
straight from the peer's result (all_gather: every peer's input), one copy where the segment
needs two. Otherwise payloads move in chunks of at most ``CHUNK_BYTES`` per rank through
``DEPTH`` buffers, so the segment never grows with the payload (``segment_bytes``).

There is no barrier per chunk: every rank owns three counters in the segment (chunks copied in,
reduced, copied out), each written only by its owner and only ever increased; peers poll them with
a memory fence (``Win.Sync``) between the counter and the data. Polling yields the core after a few
spins and sleeps after longer waits, because ranks may outnumber cores.

A rank only ever writes its own slot, its own counters and its own private arrays (a direct
read copies into the reader's memory only), and results are copied out of the segment into
private arrays. So when a peer stops and the wait times out, the group is retired (unusable,
``TimeoutError`` naming the peers whose counters stalled) and its segment with it: it is kept
mapped and never used again, so a late peer can only write memory nobody reads. A rank that
gives up raises its flag in the segment first; a rank that read a peer directly checks every
flag after its last read and raises if one is up, because the peer that gave up may already have
returned and let its caller change what was read. (A fence, ``Win.Sync``, comes between the flag
and the peer's return, and between the reads and the check of the flags.)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from reference import crossmemory, deadline
from reference.reductions import SUM, combine_into

if TYPE_CHECKING:
    from mpi4py import MPI

# Per-rank chunk and pipeline depth: a rank copies chunk k+1 in while its peers still copy
# chunk k out. Measured at 2 ranks on 2 cores (see docs/benchmarks.md).
CHUNK_BYTES = 1 << 20
DEPTH = 2
# Each rank's input from which a group that can read its peers directly does (bytes). A direct
# read costs more per byte than a copy within the caches (the kernel pins every 4 KiB page it
# reads: 512 KiB take ~64 us where an in-cache copy takes 15-23 us), and saves a trip to memory
# when the payload is past the caches. The same idle 2-core machine measured in two states
# (docs/benchmarks.md: raw MPI itself ran up to 2x faster in one than the other), 2 ranks, each
# path against raw MPI in the same job, segment copies vs direct reads, one state; the other:
# - all_sum: 1 MiB 1.36x vs 1.30x; 1.38x vs 1.07x. 2 MiB 1.32x vs 1.71x. 4 MiB 1.21x vs 1.81x;
#   1.16x vs 1.24x. 16 MiB 1.53x vs 1.74x. 64 MiB 3.21x vs 3.16x;
# - all_gather (bench size: the result): 1 MiB 0.97x vs 1.42x; 1.05x vs 0.68x. 4 MiB 0.97x vs
#   1.73x; 0.91x vs 0.64x. 16 MiB 0.63x vs 0.97x; 0.68x vs 0.85x. 64 MiB 0.94x vs 0.98x;
# - sum_scatter: 1 MiB 0.82x vs 0.97x; 1.56x vs 0.98x. 2 MiB 0.81x vs 1.17x. 4 MiB 0.77x vs
#   1.16x; 1.43x vs 1.42x in one run, 1.49-1.54x vs 0.92-0.97x in another. 16 MiB 0.79x vs
#   1.23x; 1.83-1.96x vs 1.59-1.72x. 64 MiB 2.59x vs 4.17x; 3.81-3.94x vs 3.78-3.86x.
# Each threshold is where direct reads stopped losing much in either state.
DIRECT_FROM = {"all_reduce": 2 << 20, "all_gather": 8 << 20, "sum_scatter": 16 << 20}
# Each rank's counters sit on their own cache line: polling one rank's never stalls another's.
_LINE = 64
_COPIED_IN, _REDUCED, _COPIED_OUT = 0, 1, 2
# The rest of a rank's line: its flag "gave up" (never lowered), and for direct reads its process
# id and the addresses of this call's input and result.
_GAVE_UP, _PID, _SRC, _OUT = 3, 4, 5, 6
# What a rank's private probe holds (xor its rank) while peers check they can read it.
_PROBE = 0x5EED_F00D_CAFE

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
    """Peers made this rank stop: ``reason`` is ``STOPPED`` (counters stalled until the deadline),
    ``GAVE_UP`` (they timed out first) or ``UNREADABLE`` (a direct read of them failed)."""

    STOPPED = "stopped making progress"
    GAVE_UP = "timed out first and gave up"
    UNREADABLE = "could not be read directly"

    def __init__(
        self, ranks: list[int], seconds: float, reason: str = STOPPED, gave_up: Iterable[int] = ()
    ) -> None:
        super().__init__(ranks, seconds, reason)
        self.ranks = ranks
        self.seconds = seconds
        self.reason = reason
        self.gave_up = list(gave_up)

    def __str__(self) -> str:
        said = f"rank(s) {', '.join(map(str, self.ranks))} {self.reason}"
        if self.gave_up:
            said += f"; rank(s) {', '.join(map(str, self.gave_up))} {self.GAVE_UP}"
        return said


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
        # Whether data moves by direct reads of the peers (agreed by all ranks in ``create``),
        # from which input sizes, and where a read waits to be reduced (one chunk, kept).
        self.single_copy = False
        self.direct_from = dict(DIRECT_FROM)
        self._scratch = np.empty(chunk_bytes, np.uint8)

    @classmethod
    def create(
        cls,
        comm: MPI.Comm,
        on_stall: Callable[[float], Exception],
        chunk_bytes: int = CHUNK_BYTES,
        single_copy: bool = True,
    ) -> Segment | None:
        """Map a segment for ``comm``'s ranks (collective), or None when they span nodes.

        MPI has no deadline-bounded way to map shared memory, so every rank first proves it is
        here with a non-blocking barrier under the deadline (``on_stall(seconds)`` if not): a rank
        that arrives after its peers gave up raises instead of blocking in the mapping forever.
        With ``single_copy`` (and only if every rank asks for it and reads every peer's probe
        back), collectives read peers directly (``crossmemory``); else through the segment.
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
        mine = segment._mine
        mine[:] = 0
        mine[_PID] = os.getpid()
        probe = np.array([_PROBE ^ rank], np.int64)
        mine[_SRC] = crossmemory.address(probe)
        win.Sync()
        # Nobody polls a counter before every owner has zeroed its own.
        _barrier(comm, on_stall)
        win.Sync()
        can_read = single_copy and crossmemory.available() and segment._can_read_peers()
        agreed = np.array([can_read], np.int8)
        request = comm.Iallreduce(MPI.IN_PLACE, agreed, MPI.MIN)
        deadline.wait_all([request], lambda pending, seconds: on_stall(seconds))
        # Every rank has read every probe once the minimum is known: the probe may go now.
        del probe
        segment.single_copy = bool(agreed[0])
        return segment

    def _can_read_peers(self) -> bool:
        """Whether a direct read of every peer's probe gives back what it holds."""
        got = np.zeros(1, np.int64)
        for r in self._peers:
            try:
                self._read_published(r, _SRC, 0, got)
            except crossmemory.ReadFailed:
                return False
            if got[0] != _PROBE ^ r:
                return False
        return True

    # -- synchronisation --

    def _publish(self, counter: int, value: int) -> None:
        """Make this rank's writes visible, then announce them."""
        self._sync()
        self._mine[counter] = value

    def _give_up(self) -> None:
        """Raise this rank's flag: peers stop waiting for it, and distrust what they read of it."""
        self._mine[_GAVE_UP] = 1
        self._sync()

    def _peers_gave_up(self) -> list[int]:
        flat, column = self._flat, self._columns[_GAVE_UP]
        return [r for r in self._peers if flat[column[r]]]

    def _stop_if_a_peer_gave_up(self, waiting_for: list[int]) -> None:
        """When a peer's flag is up, give up too, naming whom this rank still ``waiting_for``
        (besides the peers that gave up) or else the peers that gave up."""
        gave_up = self._peers_gave_up()
        if not gave_up:
            return
        self._give_up()
        late = [r for r in waiting_for if r not in gave_up]
        if late:
            raise Stalled(late, deadline.get_timeout(), gave_up=gave_up)
        raise Stalled(gave_up, deadline.get_timeout(), Stalled.GAVE_UP)

    def _wait(self, counter: int, value: int) -> None:
        """Until every peer's ``counter`` reaches ``value``; raise Stalled at the deadline, or as
        soon as a peer gave up (this rank gives up either way)."""
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
            if self._peers_gave_up():
                self._stop_if_a_peer_gave_up([r for r in self._peers if flat[column[r]] < value])
            if now >= limit:
                late = [r for r in self._peers if flat[column[r]] < value]
                self._give_up()
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

    # -- direct reads of the peers' private arrays --

    def _read_published(self, peer: int, field: int, offset: int, into: np.ndarray) -> None:
        """``into`` = bytes ``offset...`` of the array ``peer`` published in ``field``."""
        line = self._flat
        base = peer * (_LINE // 8)
        crossmemory.read(line[base + _PID], line[base + field] + offset, into)

    def _read(self, peer: int, field: int, offset: int, into: np.ndarray) -> None:
        """``_read_published`` in a collective: a failed read makes this rank give up."""
        try:
            self._read_published(peer, field, offset, into)
        except crossmemory.ReadFailed:
            self._stop_if_a_peer_gave_up([])
            self._give_up()
            raise Stalled([peer], deadline.get_timeout(), Stalled.UNREADABLE) from None

    def _announce(self, src: np.ndarray, out: np.ndarray) -> int:
        """Publish where this call's input and result are; once every peer has: the call's number.

        A peer reads the addresses only after this rank's counter says they are this call's,
        and this rank writes the next call's only after every peer finished this one.
        """
        call = self._reserve(1)
        self._mine[_SRC] = crossmemory.address(src)
        self._mine[_OUT] = crossmemory.address(out)
        self._publish(_COPIED_IN, call + 1)
        self._wait(_COPIED_IN, call + 1)
        return call

    def _finish(self, call: int) -> None:
        """Return only once no peer reads this rank's arrays any more, and none gave up.

        The check comes after this rank's last read: a peer that gave up may have returned, and
        its caller changed what was read, before the read ended.
        """
        self._publish(_COPIED_OUT, call + 1)
        self._wait(_COPIED_OUT, call + 1)
        self._stop_if_a_peer_gave_up([])

    def _all_reduce_direct(self, kind: str, src: np.ndarray, out: np.ndarray) -> None:
        """``all_reduce`` by direct reads: rank r reduces slice r of the whole payload, reading
        the peers' inputs chunk by chunk (so the reduction finds them in cache), in rank order,
        into its result; then it reads every other slice from the result of the rank that
        reduced it."""
        call = self._announce(src, out)
        bounds = self._bounds(src.size)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        self._reduce_direct(kind, src, lo, out[lo:hi])
        self._publish(_REDUCED, call + 1)
        self._wait(_REDUCED, call + 1)
        for q in self._peers:
            lo, hi = bounds[q], bounds[q + 1]
            self._read(q, _OUT, lo * src.itemsize, out[lo:hi])
        self._finish(call)

    def _reduce_direct(self, kind: str, src: np.ndarray, first: int, into: np.ndarray) -> None:
        """``into`` = elements ``first...`` of every rank's input reduced in rank order, reading
        the peers' chunk by chunk so that the reduction finds them in cache."""
        rank, itemsize = self.rank, src.itemsize
        per = max(1, self.chunk_bytes // itemsize)
        scratch = self._scratch.view(src.dtype)
        for at in range(0, into.size, per):
            start, stop = first + at, first + min(at + per, into.size)
            target = into[at : at + stop - start]
            accumulated: np.ndarray | None = None
            for q in range(self.size):
                if q == rank:
                    part = src[start:stop]
                else:
                    # The first part lands in the result itself; later ones in the scratch.
                    part = target if accumulated is None else scratch[: stop - start]
                    self._read(q, _SRC, start * itemsize, part)
                if accumulated is not None:
                    combine_into(kind, accumulated, part, target)
                    part = target
                accumulated = part

    def _sum_scatter_direct(self, src: np.ndarray, out: np.ndarray) -> None:
        """``sum_scatter`` by direct reads: this rank's block of every peer's input."""
        call = self._announce(src, out)
        self._reduce_direct(SUM, src, self.rank * out.size, out)
        self._finish(call)

    def _all_gather_direct(self, src: np.ndarray, out: np.ndarray) -> None:
        """``all_gather`` by direct reads: every peer's input straight into its block."""
        call = self._announce(src, out)
        nbytes = src.nbytes
        out[self.rank * nbytes : (self.rank + 1) * nbytes] = src
        for q in self._peers:
            self._read(q, _SRC, 0, out[q * nbytes : (q + 1) * nbytes])
        self._finish(call)

    # -- the collectives; inputs and outputs are flat and C-contiguous --

    def all_reduce(self, kind: str, src: np.ndarray, out: np.ndarray) -> None:
        """``out = src (kind) over the ranks``: each rank reduces one slice of every chunk.

        A rank's own slice never leaves its private input: peers only read the other slices of
        its slot, and it reduces its slice straight from ``src`` into that slice of its slot.
        From ``direct_from["all_reduce"]`` bytes, when the ranks read each other: by direct
        reads instead (``_all_reduce_direct``). The same holds for the two collectives below.
        """
        if self.single_copy and src.nbytes >= self.direct_from["all_reduce"]:
            self._all_reduce_direct(kind, src, out)
            return
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
        if self.single_copy and nbytes >= self.direct_from["all_gather"]:
            self._all_gather_direct(src, out)
            return
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
        if self.single_copy and src.nbytes >= self.direct_from["sum_scatter"]:
            self._sum_scatter_direct(src, out)
            return
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


def run(move: Callable[[], None], on_stall: Callable[[float, str], Exception]) -> None:
    """Run ``move`` (a Segment method call); peers that made it stop raise
    ``on_stall(seconds, which ranks did what)``."""
    try:
        move()
    except Stalled as stalled:
        raise on_stall(stalled.seconds, str(stalled)) from None
