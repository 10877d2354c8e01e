"""The agreement round every collective of a group starts with.

SEMANTICS.md, "Cross-rank agreement (robust)": all ranks of a group must call the same collective
with the same shape and dtype; the reference checks before moving data, every rank learns of a
disagreement or of an invalid argument on any rank, and all raise the same error naming the ranks
and what each passed. No rank is left blocked.

Each rank sends every peer one slot: a header (error flag, call number, op, dtype, shape, byte
count, two op arguments) followed by the payload itself when it fits (``inline_limit``). So a
small collective costs exactly one exchange: once the headers agree, every rank already holds
every block and reduces them locally. Slots travel short (up to ``SHORT_BYTES`` of payload),
long (up to ``LONG_BYTES``) or at their exact size; the receives always take a full one. The
header exchange is point to point so that a deadline can name exactly the peers that never
arrived.

Only when something is wrong does a second exchange follow, carrying each rank's description of
its call and its error text; every rank saw the same headers, so every rank takes that path.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from reference import deadline
from reference.dtypes import DTYPE_CODES, describe

if TYPE_CHECKING:
    from mpi4py import MPI

    from reference.group import Group

# error, call number, op, dtype code, ndim, nbytes, shape hash, argument 0, argument 1
HEADER = struct.Struct("<9q")
_AGREED_FIELDS = slice(1, 7)
_AGREED_END = 8 * _AGREED_FIELDS.stop
# Up to INLINE_BYTES a payload rides with the header: one exchange instead of two rounds, and no
# MPI collective, whose mid-size algorithms are slow on one node (measured at 2 ranks, MPICH
# wheel, idle: Allreduce of 32 KiB 29 us where an exchange of 32 KiB takes ~7 us; the data
# phase made all_sum 0.33x raw at 8 KiB and 0.58x at 64 KiB). Slots travel short (payload up to
# SHORT_BYTES) or long (up to LONG_BYTES) on persistent requests, so tiny calls do not copy 4 KiB;
# larger inline payloads go in one send of their exact size.
# all_gather keeps LONG_BYTES: MPI's allgather is fast at mid sizes (32 KiB in 9 us) and the
# gathered result would be copied out of the slots once more.
INLINE_BYTES = 65536
SHORT_BYTES = 512
LONG_BYTES = 4096
GATHER_INLINE_BYTES = LONG_BYTES


def inline_limit(op: str) -> int:
    """The largest payload (bytes a rank) of ``op`` that rides in the agreement round."""
    return GATHER_INLINE_BYTES if op == "all_gather" else INLINE_BYTES


SLOT_BYTES = HEADER.size + INLINE_BYTES

TAG_HEADER = 11
TAG_DETAILS = 12

OP_CODES = {"all_sum": 1, "all_max": 2, "all_min": 3, "all_gather": 4, "sum_scatter": 5, "split": 6}


class Agreement(NamedTuple):
    """What every rank learned from the round: the same on every rank."""

    # When the payloads fit inline: every rank's array, stacked in rank order along a new axis 0.
    # A view into the group's slots, valid until the group's next round.
    inline: np.ndarray | None
    exchange: HeaderExchange

    @property
    def headers(self) -> list[tuple[int, ...]]:
        """Each rank's header (fields 7 and 8: the op's arguments), valid until the next round."""
        return [HEADER.unpack_from(row) for row in self.exchange.rows]


class HeaderExchange:
    """One group's slot buffers and persistent requests for the header round.

    Persistent requests are set up once per group, so a round costs one ``Startall`` and the
    polling, not the creation of 2 (N - 1) requests: that is most of a small collective's time.
    """

    def __init__(self, comm: MPI.Comm, rank: int, size: int) -> None:
        from mpi4py import MPI

        # Row r holds rank r's slot; this rank's own row is what it sends, so after the round
        # every rank's header and payload sit side by side, ready to be reduced in one call.
        self.slots = np.zeros((size, SLOT_BYTES), np.uint8)
        self.send_slot = self.slots[rank]
        self.send_view = memoryview(self.send_slot)
        self.rows = list(self.slots)
        # The agreed fields of every header, error flag included, as one strided view: a round
        # is agreed when its bytes are this rank's header repeated (one bytes comparison).
        self.agreed_bytes = self.slots[:, :_AGREED_END]
        self.own_agreed = slice(rank * _AGREED_END, (rank + 1) * _AGREED_END)
        self.size = size
        self.peers = [peer for peer in range(size) if peer != rank]
        short_slot = self.send_slot[: HEADER.size + SHORT_BYTES]
        long_slot = self.send_slot[: HEADER.size + LONG_BYTES]
        # Per peer [receive, send]: index // 2 is the peer, an even index a receive.
        self.short: list[MPI.Prequest] = []
        self.long: list[MPI.Prequest] = []
        for peer in self.peers:
            receive = comm.Recv_init([self.slots[peer], MPI.BYTE], peer, TAG_HEADER)
            self.short += [receive, comm.Send_init([short_slot, MPI.BYTE], peer, TAG_HEADER)]
            self.long += [receive, comm.Send_init([long_slot, MPI.BYTE], peer, TAG_HEADER)]
        self.receives = self.short[::2]
        self.comm = comm
        self.byte = MPI.BYTE
        self.start = MPI.Prequest.Startall
        self._stacked: dict[tuple[np.dtype, tuple[int, ...]], np.ndarray] = {}

    def sized(self, nbytes: int) -> list[MPI.Request]:
        """Start a round whose slot is sent as its first ``nbytes``: the requests, paired as
        ``short`` and ``long`` are (the persistent receives take any slot up to the full one)."""
        self.start(self.receives)
        slot = [self.send_slot[:nbytes], self.byte]
        requests: list[MPI.Request] = []
        for receive, peer in zip(self.receives, self.peers, strict=True):
            requests += [receive, self.comm.Isend(slot, peer, TAG_HEADER)]
        return requests

    def stacked(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """Every rank's inline payload as one (size, *shape) array viewing the slots.

        Views are kept per (dtype, shape): a loop of small collectives builds its view once.
        """
        key = (dtype, shape)
        view = self._stacked.get(key)
        if view is None:
            if len(self._stacked) > 64:
                self._stacked.clear()
            nbytes = math.prod(shape) * dtype.itemsize
            payloads = self.slots[:, HEADER.size : HEADER.size + nbytes]
            view = self._stacked[key] = payloads.view(dtype).reshape((len(self.slots), *shape))
        return view


def agree(
    group: Group,
    op: str,
    array: np.ndarray | None,
    error: Exception | None,
    arguments: tuple[int, int] = (0, 0),
) -> Agreement:
    """Run the agreement round for ``op`` on ``group``; raise on every rank if anything is off.

    ``error`` is this rank's own argument error (raised by nobody yet): it is shared with the
    peers, and every rank then raises an error of its type naming each failing rank.
    """
    exchange = group._header_exchange()
    rank = group._rank
    group._calls += 1
    limit = inline_limit(op)
    nbytes = _pack(exchange.send_view, group._calls, op, array, error, arguments, limit)
    if nbytes <= SHORT_BYTES or nbytes > limit:  # a header alone is short
        requests = exchange.short
        exchange.start(requests)
    elif nbytes <= LONG_BYTES:
        requests = exchange.long
        exchange.start(requests)
    else:
        requests = exchange.sized(HEADER.size + nbytes)

    def never_arrived(pending: list[int], seconds: float) -> Exception:
        missing = sorted({exchange.peers[index // 2] for index in pending if index % 2 == 0})
        # Receives are cancelled; sends are not (MPICH cannot cancel a one-off send, and crashes
        # trying): they and the slot they read stay with the retired group.
        deadline.cancel_requests(requests, [index for index in pending if index % 2 == 0])
        group._orphans.append(requests)
        return group._break(
            f"{op} on {group._label} timed out after {seconds:g} s waiting for rank(s) "
            f"{_names(missing)} to call {op} (rank {rank} of {group._size} was waiting)"
        )

    deadline.wait_all(requests, never_arrived, cancel=False)
    agreed = exchange.agreed_bytes.tobytes()
    if error is not None or agreed != agreed[exchange.own_agreed] * exchange.size:
        headers = [HEADER.unpack_from(row) for row in exchange.rows]
        raise _shared_failure(group, op, array, error, headers)
    inline = None
    if 0 <= nbytes <= limit:  # negative: no array (split) or an error
        inline = exchange.stacked(array.dtype, array.shape)
    return Agreement(inline, exchange)


def _pack(
    slot: memoryview,
    call: int,
    op: str,
    array: np.ndarray | None,
    error: Exception | None,
    arguments: tuple[int, int],
    limit: int,
) -> int:
    if array is None or error is not None:
        failed = int(error is not None)
        HEADER.pack_into(slot, 0, failed, call, OP_CODES[op], -1, -1, -1, 0, *arguments)
        return -1
    nbytes = array.nbytes
    shape = array.shape
    HEADER.pack_into(
        slot,
        0,
        0,
        call,
        OP_CODES[op],
        DTYPE_CODES[array.dtype],
        len(shape),
        nbytes,
        hash(shape),  # ints and tuples of ints hash the same in every process
        *arguments,
    )
    if 0 < nbytes <= limit:
        # Through bytes: for a few hundred bytes this is several times cheaper than numpy views.
        slot[HEADER.size : HEADER.size + nbytes] = array.tobytes()
    return nbytes


def _names(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in ranks)


def _describe_call(op: str, array: np.ndarray | None, call: int) -> str:
    what = op if array is None else f"{op} with {describe(array.dtype, array.shape)}"
    return f"{what} (call #{call} on this group)"


def _shared_failure(
    group: Group,
    op: str,
    array: np.ndarray | None,
    error: Exception | None,
    headers: list[tuple[int, ...]],
) -> Exception:
    """Exchange the details of a failed round and build the error every rank raises.

    The text is built from the exchanged details only, so it is the same on every rank.
    """
    mine = (
        op,
        _describe_call(op, array, group._calls),
        type(error).__name__ if error else None,
        str(error) if error else None,
    )
    details = exchange_objects(group, mine, TAG_DETAILS, op)
    ops = "/".join(sorted({d[0] for d in details}))
    failing = [r for r, d in enumerate(details) if d[2] is not None]
    if failing:
        kind = TypeError if details[failing[0]][2] == "TypeError" else ValueError
        reasons = "; ".join(f"rank {r}: {details[r][3]}" for r in failing)
        return kind(
            f"{ops} failed on every rank of {group._label} because of invalid arguments on "
            f"rank(s) {_names(failing)}: {reasons}"
        )
    by_call: dict[str, list[int]] = {}
    for r, d in enumerate(details):
        by_call.setdefault(d[1], []).append(r)
    listing = "; ".join(f"rank(s) {_names(ranks)} called {d}" for d, ranks in by_call.items())
    return ValueError(
        f"{ops}: the ranks of {group._label} disagree on the collective call, so no data was "
        f"moved: {listing}"
    )


def exchange_objects(group: Group, obj: object, tag: int, op: str) -> list[object]:
    """Every rank's ``obj`` in rank order (pickled point to point, under the deadline)."""
    comm = group._comm
    rank, size = group._rank, group._size
    sends = [comm.isend(obj, peer, tag) for peer in range(size) if peer != rank]
    results: list[object] = [None] * size
    results[rank] = obj
    for peer in range(size):
        if peer == rank:
            continue

        def silent(seconds: float, peer: int = peer) -> Exception:
            return group._break(
                f"{op} on {group._label}: rank {peer} stopped answering for {seconds:g} s"
            )

        message = deadline.poll(lambda peer=peer: comm.improbe(peer, tag), silent)
        results[peer] = message.recv()
    deadline.wait_all(sends, lambda pending, seconds: group._break(f"{op}: details not delivered"))
    return results
