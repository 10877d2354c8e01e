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

import struct
from typing import TYPE_CHECKING

import numpy as np

from reference import buffers, deadline
from reference.dtypes import DTYPE_CODES, describe

if TYPE_CHECKING:
    from mpi4py import MPI

    from reference.group import Group

# error, call number, op, dtype code, ndim, nbytes, shape hash, argument 0, argument 1
HEADER = struct.Struct("<9q")
# The call number alone, rewritten into a plan's packed header on every round.
_CALL = struct.Struct("<q")
_CALL_OFFSET = 8
_AGREED_FIELDS = slice(1, 7)
_AGREED_END = 8 * _AGREED_FIELDS.stop
# Up to INLINE_BYTES a payload rides with the header: one exchange instead of two rounds, and no
# MPI collective, whose mid-size algorithms are slow on one node (measured at 2 ranks, MPICH
# wheel, idle: Allreduce of 32 KiB 29 us where an exchange of 32 KiB takes ~7 us; the data
# phase made all_sum 0.33x raw at 8 KiB and 0.58x at 64 KiB). Slots travel short (payload up to
# SHORT_BYTES) or long (up to LONG_BYTES) on persistent requests, so tiny calls do not copy 4 KiB;
# larger inline payloads go in one send of their exact size.
# all_gather stops at 32 KiB a rank: its result is copied out of the slots once more, and past
# 32 KiB that copy ate the gain (2 ranks, buffers on pages of their own: results of 16-64 KiB
# 0.36-0.44x raw with the agreement round then MPI's allgather, 0.49-0.51x inline; results of
# 128 KiB 0.54-0.60x either way).
INLINE_BYTES = 65536
SHORT_BYTES = 512
LONG_BYTES = 4096
GATHER_INLINE_BYTES = 32768


def inline_limit(op: str) -> int:
    """The largest payload (bytes a rank) of ``op`` that rides in the agreement round."""
    return GATHER_INLINE_BYTES if op == "all_gather" else INLINE_BYTES


SLOT_BYTES = HEADER.size + INLINE_BYTES
# Plans a group keeps (one per op, dtype and shape it has seen); past this, they start over.
_MOST_PLANS = 64

TAG_HEADER = 11
TAG_DETAILS = 12

OP_CODES = {"all_sum": 1, "all_max": 2, "all_min": 3, "all_gather": 4, "sum_scatter": 5, "split": 6}


class InlinePlan:
    """One (op, dtype, shape) of one group: its packed header and its views of the slots.

    Built on a group's first round of that kind and reused, so a loop of small collectives packs
    one call number and copies its payload, and nothing else. ``stacked`` holds every rank's
    payload in rank order along a new axis 0 and ``rows`` each of them; both view the group's
    slots and are valid until the group's next round. Both are None when the payload does not
    travel inline. ``derived`` is free for the op's own view of them, made on its first call.
    """

    __slots__ = ("derived", "nbytes", "own_payload", "prefix", "requests", "rows", "stacked")

    def __init__(self, exchange: HeaderExchange, op: str, array: np.ndarray) -> None:
        nbytes = array.nbytes
        shape = array.shape
        fields = (OP_CODES[op], DTYPE_CODES[array.dtype], len(shape), nbytes)
        # hash(): ints and tuples of ints hash the same in every process.
        self.prefix = HEADER.pack(0, 0, *fields, hash(shape), 0, 0)
        self.nbytes = nbytes
        inline = 0 <= nbytes <= inline_limit(op)
        if not inline or nbytes <= SHORT_BYTES:
            self.requests = exchange.short
        elif nbytes <= LONG_BYTES:
            self.requests = exchange.long
        else:
            self.requests = None  # sent at its exact size: exchange.sized()
        self.own_payload = self.stacked = self.rows = self.derived = None
        if inline:
            payloads = exchange.slots[:, HEADER.size : HEADER.size + nbytes]
            self.stacked = payloads.view(array.dtype).reshape((exchange.size, *shape))
            # [r, ...]: a 0-d view even for 0-d payloads, which iteration would make scalars.
            self.rows = [self.stacked[r, ...] for r in range(exchange.size)]
            self.own_payload = self.rows[exchange.rank]


class HeaderExchange:
    """One group's slot buffers and persistent requests for the header round.

    Persistent requests are set up once per group, so a round costs one ``Startall`` and the
    polling, not the creation of 2 (N - 1) requests: that is most of a small collective's time.
    """

    def __init__(self, comm: MPI.Comm, rank: int, size: int) -> None:
        from mpi4py import MPI

        # Row r holds rank r's slot; this rank's own row is what it sends, so after the round
        # every rank's header and payload sit side by side, ready to be reduced in one call.
        # On pages of their own: MPI moves malloc'd memory slower (reference.buffers).
        self.slots = buffers.mapped(size * SLOT_BYTES).reshape(size, SLOT_BYTES)
        self.send_slot = self.slots[rank]
        self.send_view = memoryview(self.send_slot)
        self.rows = list(self.slots)
        # The agreed fields of every header, error flag included, as words: a round is agreed
        # when every peer's words equal this rank's (a memoryview comparison, in C).
        agreed = [memoryview(row[:_AGREED_END]).cast("Q") for row in self.slots]
        self.own_agreed = agreed[rank]
        self.peer_agreed = [agreed[peer] for peer in range(size) if peer != rank]
        # The plan whose header the send slot holds: the next round of it rewrites the call
        # number alone.
        self.packed: InlinePlan | None = None
        self.size = size
        self.rank = rank
        self.plans: dict[tuple[str, np.dtype, tuple[int, ...]], InlinePlan] = {}
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

    def sized(self, nbytes: int) -> list[MPI.Request]:
        """Start a round whose slot is sent as its first ``nbytes``: the requests, paired as
        ``short`` and ``long`` are (the persistent receives take any slot up to the full one)."""
        self.start(self.receives)
        slot = [self.send_slot[:nbytes], self.byte]
        requests: list[MPI.Request] = []
        for receive, peer in zip(self.receives, self.peers, strict=True):
            requests += [receive, self.comm.Isend(slot, peer, TAG_HEADER)]
        return requests

    def plan(self, op: str, array: np.ndarray) -> InlinePlan:
        """The plan of ``op`` on arrays like ``array`` (kept: at most ``_MOST_PLANS``)."""
        key = (op, array.dtype, array.shape)
        plan = self.plans.get(key)
        if plan is None:
            if len(self.plans) >= _MOST_PLANS:
                self.plans.clear()
            plan = self.plans[key] = InlinePlan(self, op, array)
        return plan

    def headers(self) -> list[tuple[int, ...]]:
        """Each rank's header of the last round (fields 7 and 8: the op's arguments)."""
        return [HEADER.unpack_from(row) for row in self.rows]


def agree(
    group: Group,
    op: str,
    array: np.ndarray | None,
    error: Exception | None,
    arguments: tuple[int, int] = (0, 0),
) -> InlinePlan | None:
    """Run the agreement round for ``op`` on ``group``; raise on every rank if anything is off.

    ``error`` is this rank's own argument error (raised by nobody yet): it is shared with the
    peers, and every rank then raises an error of its type naming each failing rank. Returns the
    round's plan when the payloads travelled inline (its ``stacked`` and ``rows`` hold them),
    else None.
    """
    exchange = group._exchange or group._header_exchange()
    group._calls += 1
    send_view = exchange.send_view
    if array is None or error is not None:
        plan = None
        failed = int(error is not None)
        code = OP_CODES[op]
        HEADER.pack_into(send_view, 0, failed, group._calls, code, -1, -1, -1, 0, *arguments)
        exchange.packed = None
        requests = exchange.short
        exchange.start(requests)
    else:
        plan = exchange.plan(op, array)
        if exchange.packed is not plan:
            send_view[: HEADER.size] = plan.prefix
            exchange.packed = plan
        _CALL.pack_into(send_view, _CALL_OFFSET, group._calls)
        if plan.own_payload is not None:
            plan.own_payload[...] = array
        requests = plan.requests
        if requests is None:
            requests = exchange.sized(HEADER.size + plan.nbytes)
        else:
            exchange.start(requests)

    def never_arrived(pending: list[int], seconds: float) -> Exception:
        missing = sorted({exchange.peers[index // 2] for index in pending if index % 2 == 0})
        # Receives are cancelled; sends are not (MPICH cannot cancel a one-off send, and crashes
        # trying): they and the slot they read stay with the retired group.
        deadline.cancel_requests(requests, [index for index in pending if index % 2 == 0])
        group._orphans.append(requests)
        return group._break(
            f"{op} on {group._label} timed out after {seconds:g} s waiting for rank(s) "
            f"{_names(missing)} to call {op} (rank {group._rank} of {group._size} was waiting)"
        )

    deadline.wait_all(requests, never_arrived, cancel=False)
    own = exchange.own_agreed
    agreed = error is None
    for peer in exchange.peer_agreed:
        if peer != own:
            agreed = False
            break
    if not agreed:
        raise _shared_failure(group, op, array, error, exchange.headers())
    return plan if plan is not None and plan.stacked is not None else None


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
