"""Point-to-point framing: header + inline payload or header + payload message (reference.p2p).

Messages go between every ordered pair (or ring neighbours), one pair at a time in the same global
order on every rank, so large sends that wait for their receiver cannot deadlock. Received arrays
are checked after all communication, against data that encodes sender, receiver and position.
"""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np
import pytest
from transport_helpers import DTYPES, allgather, attempt, encode, sync

import reference
from reference import p2p
from reference.dtypes import NUMPY_DTYPES, describe

pytestmark = pytest.mark.mpi(min_size=2)

INLINE = p2p.INLINE_BYTES


def all_pairs(size: int) -> list[tuple[int, int]]:
    return [(s, d) for s in range(size) for d in range(size) if s != d]


def ring_pairs(size: int) -> list[tuple[int, int]]:
    return sorted({(r, (r + 1) % size) for r in range(size)})


def payload(src: int, dst: int, shape, dtype, index: int) -> np.ndarray:
    return encode(src, shape, dtype, salt=dst * 101 + index * 13)


def message_plan() -> list[tuple[tuple[int, ...], str]]:
    """Shapes and dtypes around the inline limit, plus 0-d, empty and large messages."""
    return [
        ((INLINE - 1,), "uint8"),
        ((INLINE,), "uint8"),
        ((INLINE + 1,), "uint8"),
        ((INLINE // 4,), "float32"),
        ((INLINE // 4 + 1,), "float32"),
        ((INLINE // 8, 1), "complex64"),
        ((3, INLINE // 24 + 1, 1), "int64"),
        ((), "float64"),
        ((0,), "int16"),
        ((2, 0), "bfloat16"),
        ((70000,), "float32"),
    ]


def test_messages_around_the_inline_limit_arrive_intact(world, comm):
    """Messages just below, at and just above p2p.INLINE_BYTES, 0-d, empty and large ones, arrive
    between every pair with the asked shape, dtype and exact bytes."""
    received = []
    for src, dst in all_pairs(comm.size):
        for index, (shape, name) in enumerate(message_plan()):
            dtype = NUMPY_DTYPES[name]
            if comm.rank == src:
                reference.send(payload(src, dst, shape, dtype, index), dst, group=world)
            elif comm.rank == dst:
                received.append((src, index, reference.recv(shape, dtype, src, group=world)))
    assert len(received) == (comm.size - 1) * len(message_plan())
    for src, index, array in received:
        shape, name = message_plan()[index]
        expected = payload(src, comm.rank, shape, NUMPY_DTYPES[name], index)
        assert array.dtype == expected.dtype and array.shape == shape
        assert array.tobytes() == expected.tobytes()
        assert array.flags.writeable


@pytest.mark.parametrize("count", [3, 5000], ids=["inline", "large"])
def test_every_dtype_and_every_spelling_of_it(world, comm, count):
    """All 14 dtypes travel bit for bit; recv takes a name, a numpy dtype or a scalar type, and
    recv_like takes an array."""
    spellings = {
        "name": lambda name: name,
        "dtype": lambda name: NUMPY_DTYPES[name],
        "type": lambda name: ml_dtypes.bfloat16 if name == "bfloat16" else NUMPY_DTYPES[name].type,
        "like": None,
    }
    received = []
    for src, dst in ring_pairs(comm.size):
        for index, name in enumerate(DTYPES):
            for how, spell in spellings.items():
                dtype = NUMPY_DTYPES[name]
                if comm.rank == src:
                    reference.send(payload(src, dst, (count,), dtype, index), dst, group=world)
                elif comm.rank == dst:
                    if spell is None:
                        like = np.zeros((count,), dtype)
                        got = reference.recv_like(like, src, group=world)
                    else:
                        got = reference.recv((count,), spell(name), src, group=world)
                    received.append((src, index, name, how, got))
    for src, index, name, how, got in received:
        expected = payload(src, comm.rank, (count,), NUMPY_DTYPES[name], index)
        assert (got.dtype, got.shape, how) == (expected.dtype, expected.shape, how)
        assert got.tobytes() == expected.tobytes(), (name, how)


MISMATCHES = {
    "inline-shape": (((10,), "float32"), ((5,), "float32")),
    "inline-dtype-same-bytes": (((8,), "int32"), ((8,), "float32")),
    "inline-ndim": (((4, 3), "int16"), ((12,), "int16")),
    "large-smaller": (((5000,), "float32"), ((2000,), "float32")),
    "large-larger": (((5000,), "float32"), ((10000,), "float32")),
    "large-dtype": (((3000,), "int64"), ((3000,), "float64")),
    "large-sent-inline-asked": (((5000,), "float32"), ((4,), "float32")),
    "inline-sent-large-asked": (((4,), "float32"), ((5000,), "float32")),
    "bfloat16-vs-float16": (((2000, 2), "bfloat16"), ((2000, 2), "float16")),
}


# Who reaches the message first: a receiver that is waiting has offered its receive for a large
# message before the header came (reference.p2p); a late one answers the header.
ARRIVALS = {"receiver-first": (0.05, 0.0), "sender-first": (0.0, 0.05)}


@pytest.mark.parametrize("arrival", list(ARRIVALS))
@pytest.mark.parametrize("follow", ["inline", "large"])
@pytest.mark.parametrize("case", list(MISMATCHES))
def test_recv_mismatch_names_both_sides_and_the_next_message_arrives(
    world, comm, case, follow, arrival
):
    """A recv whose shape or dtype differs from the message raises ValueError naming both sides;
    the message is consumed whole, so the next message between the pair arrives intact."""
    (sent_shape, sent_name), (asked_shape, asked_name) = MISMATCHES[case]
    next_shape = (6,) if follow == "inline" else (INLINE,)
    sender_delay, receiver_delay = ARRIVALS[arrival]
    outcomes = []
    for src, dst in ring_pairs(comm.size):
        time.sleep(sender_delay if comm.rank == src else receiver_delay)
        if comm.rank == src:
            wrong = payload(src, dst, sent_shape, NUMPY_DTYPES[sent_name], 0)
            reference.send(wrong, dst, group=world)
            reference.send(payload(src, dst, next_shape, np.float64, 1), dst, group=world)
        elif comm.rank == dst:
            first = attempt(reference.recv, asked_shape, asked_name, src, group=world)
            second = reference.recv(next_shape, np.float64, src, group=world)
            outcomes.append((src, first, second))
    for src, (kind, message), second in outcomes:
        assert kind == "ValueError"
        sent = describe(NUMPY_DTYPES[sent_name], sent_shape)
        asked = describe(NUMPY_DTYPES[asked_name], asked_shape)
        assert message == f"recv expected {asked} from rank {src} but rank {src} sent {sent}"
        expected = payload(src, comm.rank, next_shape, np.float64, 1)
        assert second.tobytes() == expected.tobytes()


def test_send_to_self_is_queued_in_order(world, comm):
    """Messages a rank sends itself come back in order, as copies made at send time."""
    x = encode(comm.rank, (5,), np.int32)
    sent = []
    for index in range(3):
        x[...] = index * 10 + np.arange(5)
        sent.append(x.copy())
        reference.send(x, comm.rank, group=world)
    x[...] = -1
    got = [reference.recv((5,), np.int32, comm.rank, group=world) for _ in range(3)]
    big = encode(comm.rank, (9000,), np.float32)
    reference.send(big, comm.rank, group=world)
    got_big = reference.recv_like(big, comm.rank, group=world)
    for expected, array in zip(sent, got, strict=True):
        assert array.tolist() == expected.tolist()
    assert got_big.tobytes() == big.tobytes()
    assert not np.shares_memory(got_big, big)


def test_send_to_self_mismatch_and_empty_queue(world, comm):
    """A mismatched recv from oneself is ValueError naming both sides (the message is consumed);
    a recv from oneself with nothing queued is ValueError at once, not a wait."""
    reference.send(np.zeros(4, np.float32), comm.rank, group=world)
    reference.send(np.ones(2, np.int8), comm.rank, group=world)
    mismatch = attempt(reference.recv, (5,), "float32", comm.rank, group=world)
    following = reference.recv((2,), "int8", comm.rank, group=world)
    empty = attempt(reference.recv, (2,), "int8", comm.rank, group=world)
    assert mismatch == (
        "ValueError",
        f"recv expected float32 (5,) from rank {comm.rank} but rank {comm.rank} sent float32 (4,)",
    )
    assert following.tolist() == [1, 1]
    assert empty[0] == "ValueError" and "nothing was sent" in empty[1]


@pytest.mark.parametrize("count", [7, 9000], ids=["inline", "large"])
def test_send_returns_an_equal_read_only_array_and_x_may_be_reused(world, comm, count):
    """send returns an array equal to x that cannot be written; once send returns, changing x
    does not change what the receiver gets."""
    results = []
    for src, dst in ring_pairs(comm.size):
        if comm.rank == src:
            x = payload(src, dst, (count,), np.float32, 0)
            original = x.copy()
            out = reference.send(x, dst, group=world)
            results.append(("sent", out.copy(), out.flags.writeable, original))
            x[...] = -5
        elif comm.rank == dst:
            results.append(("got", reference.recv((count,), np.float32, src, group=world), src))
    for result in results:
        if result[0] == "sent":
            _, out, writeable, original = result
            assert out.tobytes() == original.tobytes() and writeable is False
        else:
            _, got, src = result
            assert got.tobytes() == payload(src, comm.rank, (count,), np.float32, 0).tobytes()


def test_send_result_is_a_read_only_view_of_the_input(world, comm):
    """send returns x itself as a read-only view (the contract in docs/contracts.md: MLX arrays
    are immutable, and a copy would double the cost of a large send): equal to x, sharing its
    memory, and not writable through the result."""
    results = []
    for src, dst in ring_pairs(comm.size):
        if comm.rank == src:
            x = np.arange(4, dtype=np.float32)
            out = reference.send(x, dst, group=world)
            results.append((out.tolist(), np.shares_memory(out, x), out.flags.writeable))
        elif comm.rank == dst:
            reference.recv((4,), np.float32, src, group=world)
    assert all(r == ([0.0, 1.0, 2.0, 3.0], True, False) for r in results), results


@pytest.mark.parametrize("count", [7, 9000], ids=["inline", "large"])
def test_recv_timeout_leaves_the_channel_usable(world, comm, count):
    """A recv that times out raises TimeoutError naming its source and consumes nothing: the
    message sent afterwards arrives intact, and the group still works."""
    src, dst = 0, comm.size - 1
    outcome = None
    got = None
    if comm.rank == dst:
        previous = reference.set_timeout(0.3)
        try:
            outcome = attempt(reference.recv, (count,), np.int32, src, group=world)
        finally:
            reference.set_timeout(previous)
    sync(comm)
    if comm.rank == src:
        reference.send(payload(src, dst, (count,), np.int32, 4), dst, group=world)
    elif comm.rank == dst:
        got = reference.recv((count,), np.int32, src, group=world)
    total = reference.all_sum(np.int32(1), group=world)
    if comm.rank == dst:
        kind, message = outcome
        assert kind == "TimeoutError"
        assert f"from rank {src}" in message
        assert got.tobytes() == payload(src, dst, (count,), np.int32, 4).tobytes()
    assert int(total) == comm.size


SIZES = [1, 5000, 0, 1024, 3, 20000, INLINE // 8, 2, INLINE // 4, INLINE // 4 + 1, INLINE + 1]
KINDS = ["int32", "float64", "uint8", "complex64", "bool", "int64", "float16", "bfloat16"]


def sequence(count: int):
    for index in range(count):
        size = SIZES[index % len(SIZES)]
        name = KINDS[index % len(KINDS)]
        yield index, (size,), NUMPY_DTYPES[name]


def test_many_mixed_messages_between_a_pair_keep_their_order(world, comm):
    """Forty messages of mixed sizes (inline and large interleaved) and dtypes arrive in order."""
    received = []
    for src, dst in ring_pairs(comm.size):
        for index, shape, dtype in sequence(40):
            if comm.rank == src:
                reference.send(payload(src, dst, shape, dtype, index), dst, group=world)
            elif comm.rank == dst:
                received.append((src, index, reference.recv(shape, dtype, src, group=world)))
    for src, index, array in received:
        _, shape, dtype = next(m for m in sequence(40) if m[0] == index)
        assert array.tobytes() == payload(src, comm.rank, shape, dtype, index).tobytes(), index


def test_messages_from_several_senders_do_not_mix(world, comm):
    """Every other rank sends rank 0 a mixed sequence; rank 0 receives them round-robin and each
    message comes from the sender it was asked from, intact."""
    received = []
    count = 12
    if comm.rank != 0:
        for index, shape, dtype in sequence(count):
            reference.send(payload(comm.rank, 0, shape, dtype, index), 0, group=world)
    else:
        for index, shape, dtype in sequence(count):
            for src in range(1, comm.size):
                received.append((src, index, reference.recv(shape, dtype, src, group=world)))
    for src, index, array in received:
        _, shape, dtype = next(m for m in sequence(count) if m[0] == index)
        assert array.tobytes() == payload(src, 0, shape, dtype, index).tobytes()
    assert len(received) == (count * (comm.size - 1) if comm.rank == 0 else 0)


def test_invalid_peers_are_rejected_at_call_time(world, comm):
    """dst/src outside [0, N) are ValueError with MLX's text; non-int peers are TypeError."""
    n = comm.size
    x = np.zeros(2, np.float32)
    outcomes = {
        "send": attempt(reference.send, x, n, group=world),
        "send-negative": attempt(reference.send, x, -1, group=world),
        "recv": attempt(reference.recv, (2,), "float32", n + 3, group=world),
        "recv_like": attempt(reference.recv_like, x, -2, group=world),
        "send-float": attempt(reference.send, x, 1.0, group=world),
        "recv-bool": attempt(reference.recv, (2,), "float32", True, group=world),
    }
    everyone = allgather(comm, outcomes)
    assert outcomes["send"] == ("ValueError", f"Invalid destination={n} for a group of size {n}")
    assert outcomes["send-negative"] == (
        "ValueError",
        f"Invalid destination=-1 for a group of size {n}",
    )
    assert outcomes["recv"] == ("ValueError", f"Invalid source={n + 3} for a group of size {n}")
    assert outcomes["recv_like"] == ("ValueError", f"Invalid source=-2 for a group of size {n}")
    assert outcomes["send-float"][0] == "TypeError"
    assert outcomes["recv-bool"][0] == "TypeError"
    assert all(other == outcomes for other in everyone)


def test_payload_rides_in_the_header_up_to_the_inline_limit(world, comm, monkeypatch):
    """Up to INLINE_BYTES a message is one MPI message; one byte more adds a payload message."""
    waits = []
    original = p2p.deadline.wait_all
    monkeypatch.setattr(
        p2p.deadline,
        "wait_all",
        lambda requests, why, **options: (
            waits.append(len(requests)) or original(requests, why, **options)
        ),
    )
    got = []
    for src, dst in ring_pairs(comm.size):
        for nbytes in (INLINE, INLINE + 1):
            if comm.rank == src:
                reference.send(payload(src, dst, (nbytes,), np.uint8, nbytes), dst, group=world)
            elif comm.rank == dst:
                got.append((src, reference.recv((nbytes,), np.uint8, src, group=world)))
    monkeypatch.undo()
    # Each rank sends on one ring pair and receives on one. Sender: inline, at most one wait (none
    # when MPI has sent it by the first test); with a payload, one wait for the payload and its
    # header (the wait for the receiver's offer is not a wait_all). Receiver: the header's receive
    # is not a wait_all; with a payload, one wait for the payload and its offer together.
    assert sorted(waits) in ([2, 2], [1, 2, 2])
    for src, array in got:
        assert (
            array.tobytes() == payload(src, comm.rank, array.shape, np.uint8, array.size).tobytes()
        )


def test_callers_own_mpi_traffic_does_not_reach_the_reference(world, comm):
    """A message the caller sends on COMM_WORLD with the reference's own tags is not taken for a
    reference message (every group has its own communicator)."""
    from mpi4py import MPI

    got = None
    stray = None
    for src, dst in ring_pairs(comm.size):
        if comm.rank == src:
            decoy = np.full(64, 255, np.uint8)
            requests = [
                MPI.COMM_WORLD.Isend(decoy, dst, p2p.TAG_HEADER),
                MPI.COMM_WORLD.Isend(decoy, dst, p2p._payload_tag(1)),
            ]
            reference.send(payload(src, dst, (5000,), np.float32, 9), dst, group=world)
            MPI.Request.Waitall(requests)
        elif comm.rank == dst:
            got = (src, reference.recv((5000,), np.float32, src, group=world))
            stray = np.zeros((2, 64), np.uint8)
            MPI.COMM_WORLD.Recv(stray[0], src, p2p.TAG_HEADER)
            MPI.COMM_WORLD.Recv(stray[1], src, p2p._payload_tag(1))
    src, array = got
    assert array.tobytes() == payload(src, comm.rank, (5000,), np.float32, 9).tobytes()
    assert (stray == 255).all()


def test_large_received_arrays_stay_valid_while_held(world, comm):
    """Large received arrays (recycled buffers) keep their values while held, and a buffer freed
    by dropping one result is reused without corrupting what is still held."""
    count = 40000  # 160 KB of float32, above the buffer cache's threshold
    kept = []
    for src, dst in ring_pairs(comm.size):
        for index in range(4):
            if comm.rank == src:
                reference.send(payload(src, dst, (count,), np.float32, index), dst, group=world)
            elif comm.rank == dst:
                got = reference.recv((count,), np.float32, src, group=world)
                if index != 1:
                    kept.append((src, index, got))
                del got
    for src, index, array in kept:
        assert array.tobytes() == payload(src, comm.rank, (count,), np.float32, index).tobytes()
