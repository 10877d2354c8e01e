"""Spec of ``send``, ``recv`` and ``recv_like``: point-to-point messages between two ranks.

SEMANTICS.md, "send / recv / recv_like" and "Size-1 groups"; manifest entries ``[ops.send]``,
``[ops.recv]``, ``[ops.recv_like]``. Patterns come from ``exchanges.py`` (deadlock-free for lazy
backends); a backend with ``neighbours`` topology is only asked for rank +-1 messages.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.harness.collective import collective_raises, raises_as_declared
from conformance.specs import data, exchanges
from conformance.specs.calls import attempt, describe_error, settle
from conformance.specs.groups import require_size, singleton_group
from conformance.specs.tolerance import mismatch

P2P_SHAPES = ((), (0,), (1,), (7,), (3, 5), (2, 0, 3))


def _message(src: int, dst: int, shape, dtype: str, salt: int = 0) -> np.ndarray:
    """What ``src`` sends ``dst``: depends on both ends, so a misrouted message shows."""
    return data.contribution(src, shape, dtype, salt=salt * 1000 + dst)


@pytest.mark.core
@pytest.mark.spec("recv", rule="shape-dtype")
@pytest.mark.parametrize("dtype", data.DTYPE_NAMES)
def test_recv_exact_shape_and_dtype(backend, world, capabilities, dtype):
    """recv returns exactly the shape and dtype asked for, holding what the source sent.

    SEMANTICS.md, send / recv / recv_like: "`recv(shape, dtype, src)` returns an array of
    exactly that shape and dtype holding what `src` sent." Ring exchange to rank + 1, every
    shape incl. 0-d and empty.
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    problems: list[str | None] = []
    for i, shape in enumerate(P2P_SHAPES):
        mine = _message(rank, (rank + 1) % size, shape, dtype, salt=i)
        theirs = _message((rank - 1) % size, rank, shape, dtype, salt=i)
        problems += exchanges.ring_exchange(backend, world, mine, theirs)
    settle(problems)


@pytest.mark.core
@pytest.mark.spec("send", rule="returns-x")
def test_send_returns_x(backend, world, capabilities):
    """send returns an array equal to its input (same shape, dtype and values).

    SEMANTICS.md, send / recv / recv_like: "`send` returns an array equal to `x`."
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    problems: list[str | None] = []
    for dtype in ("bool", "int8", "uint64", "bfloat16", "float64", "complex64"):
        mine = _message(rank, (rank + 1) % size, (4, 3), dtype)
        theirs = _message((rank - 1) % size, rank, (4, 3), dtype)
        found = exchanges.ring_exchange(backend, world, mine, theirs)
        problems += [p for p in found if (p and "returned value" in p) or (p and "raised" in p)]
    settle(problems)


@pytest.mark.core
@pytest.mark.spec("recv_like", rule="like-recv")
@pytest.mark.parametrize("dtype", ["bool", "int16", "uint32", "float16", "bfloat16", "complex64"])
def test_recv_like_takes_shape_and_dtype_of_x(backend, world, dtype):
    """recv_like(x, src) receives an array shaped and typed like x.

    SEMANTICS.md, send / recv / recv_like: "`recv_like(x, src)` is `recv(x.shape, x.dtype,
    src)`."
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    problems: list[str | None] = []
    for i, shape in enumerate(((), (5,), (2, 3, 2), (0, 4))):
        mine = _message(rank, (rank - 1) % size, shape, dtype, salt=i)
        theirs = _message((rank + 1) % size, rank, shape, dtype, salt=i)
        problems += exchanges.ring_exchange(
            backend, world, mine, theirs, shift=-1, use_recv_like=True
        )
    settle(problems)


@pytest.mark.core
@pytest.mark.spec("send", rule="ring-exchange")
def test_ring_both_directions(backend, world):
    """Messages to rank + 1 and to rank - 1 (mod N) arrive, the topology every backend allows.

    SEMANTICS.md, send / recv / recv_like: "MLX's ring backend sends only to direct neighbours
    (rank ± 1 mod N); a backend may declare that topology, and the suite must then test only
    neighbours plus the clean error for the others."
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    problems: list[str | None] = []
    for shift in (1, -1):
        mine = _message(rank, (rank + shift) % size, (16,), "int32", salt=shift)
        theirs = _message((rank - shift) % size, rank, (16,), "int32", salt=shift)
        problems += exchanges.ring_exchange(backend, world, mine, theirs, shift=shift)
    settle(problems)


@pytest.mark.core
@pytest.mark.spec("send", rule="every-pair")
def test_every_allowed_ordered_pair(backend, world, capabilities):
    """Every ordered pair (src, dst) the topology allows delivers src's message to dst only.

    SEMANTICS.md, send / recv / recv_like: "`recv(shape, dtype, src)` returns an array of
    exactly that shape and dtype holding what `src` sent." Pairs run one at a time, so no
    pattern can deadlock.
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    problems: list[str | None] = []
    for src in range(size):
        for dst in range(size):
            if src == dst or not capabilities.p2p_allowed(src, dst, size):
                continue
            message = _message(src, dst, (3, 2), "int64")
            if rank == src:
                _, error = attempt(exchanges.send, backend, message, dst, world)
                problems.append(error and f"send {src}->{dst} raised {describe_error(error)}")
            elif rank == dst:
                got, error = attempt(exchanges.recv, backend, (3, 2), "int64", src, world)
                problems.append(
                    f"recv {src}->{dst} raised {describe_error(error)}"
                    if error
                    else mismatch(got, message, None, f"message {src}->{dst}")
                )
    settle(problems)


@pytest.mark.core
@pytest.mark.spec("send", rule="order")
def test_messages_arrive_in_order(backend, world, capabilities):
    """Many messages from one rank to another arrive in the order they were sent.

    SEMANTICS.md, send / recv / recv_like: "messages between the same pair arrive in the order
    sent." Pairs (2k, 2k+1), neighbours in any topology.
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    rounds = 20
    partner = rank + 1 if rank % 2 == 0 else rank - 1
    problems: list[str | None] = []
    if partner < size:
        for i in range(rounds):
            # Both ends of the pair take turns sending a burst, so each direction is checked.
            for burst_sender in (min(rank, partner), max(rank, partner)):
                message = _message(burst_sender, rank + partner - burst_sender, (5,), "int32", i)
                if rank == burst_sender:
                    _, error = attempt(exchanges.send, backend, message, partner, world)
                    problems.append(error and f"send #{i} raised {describe_error(error)}")
    if partner < size:
        for i in range(rounds):
            for burst_sender in (min(rank, partner), max(rank, partner)):
                if rank == burst_sender:
                    continue
                message = _message(burst_sender, rank, (5,), "int32", i)
                got, error = attempt(exchanges.recv, backend, (5,), "int32", partner, world)
                problems.append(
                    f"recv #{i} raised {describe_error(error)}"
                    if error
                    else mismatch(got, message, None, f"message #{i} from {partner}")
                )
    settle(problems)


@pytest.mark.core
@pytest.mark.spec("recv", rule="ping-pong")
def test_ping_pong_many_rounds(backend, world):
    """A pair bounces a message back and forth for many rounds; each hop transforms it.

    SEMANTICS.md, send / recv / recv_like: "messages between the same pair arrive in the order
    sent." and "`recv(...)` returns ... what `src` sent". Pairs (2k, 2k+1).
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    partner = rank + 1 if rank % 2 == 0 else rank - 1
    problems: list[str | None] = []
    if partner < size:
        # Both ends know the pair's starting value; each hop adds its number before sending on.
        ball = np.arange(6, dtype=np.int64) * (min(rank, partner) + 3)
        for hop in range(40):
            # Even hops go from the even rank, odd hops back. Nobody leaves the loop early: a
            # rank that stopped would leave its partner waiting on a message never sent.
            if (hop % 2 == 0) == (rank % 2 == 0):
                _, error = attempt(exchanges.send, backend, ball, partner, world)
                problems.append(error and f"hop {hop} send raised {describe_error(error)}")
            else:
                got, error = attempt(exchanges.recv, backend, (6,), "int64", partner, world)
                if error:
                    problems.append(f"hop {hop} recv raised {describe_error(error)}")
                else:
                    problems.append(mismatch(got, ball, None, f"hop {hop}"))
            ball = ball + hop + 1
    settle(problems)


@pytest.mark.core
@pytest.mark.spec("send", rule="large")
def test_large_messages(backend, world):
    """Messages of tens of MiB arrive intact (every element checked).

    SEMANTICS.md, send / recv / recv_like: "`recv(shape, dtype, src)` returns an array of
    exactly that shape and dtype holding what `src` sent." 24 MiB per message in a ring.
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    count = 24 * 2**20 // 4

    def big(src: int) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.arange(count, dtype=np.uint32) * np.uint32(2654435761) + np.uint32(src)

    problems = exchanges.ring_exchange(backend, world, big(rank), big((rank - 1) % size))
    settle(problems)


@pytest.mark.core
@pytest.mark.spec("send", rule="invalid-dst")
def test_invalid_destination(backend, world):
    """A destination outside [0, N) is a ValueError at call time naming it and the size.

    SEMANTICS.md, send / recv / recv_like: "`dst`/`src` outside `[0, N)` raise ValueError at call
    time: `Invalid destination=5 for a group of size 4`".
    """
    require_size(world, 2)
    size = world.size()
    x = data.contribution(world.rank(), (3,), "float32")
    for dst in (size, size + 3, -1):
        with collective_raises(ValueError, match=rf"Invalid destination={dst} .*size {size}"):
            backend.evaluate(backend.send(backend.asarray(x), dst, group=world))


@pytest.mark.core
@pytest.mark.spec("recv", rule="invalid-src")
def test_recv_invalid_source(backend, world):
    """A source outside [0, N) is a ValueError at call time naming it and the size.

    SEMANTICS.md, send / recv / recv_like: "`dst`/`src` outside `[0, N)` raise ValueError at call
    time: ... `Invalid source=5 for a group of size 4`."
    """
    require_size(world, 2)
    size = world.size()
    for src in (size, size + 3, -1):
        with collective_raises(ValueError, match=rf"Invalid source={src} .*size {size}"):
            backend.evaluate(backend.recv((3,), backend.dtype("float32"), src, group=world))


@pytest.mark.core
@pytest.mark.spec("recv_like", rule="invalid-src")
def test_recv_like_invalid_source(backend, world):
    """recv_like validates its source like recv.

    SEMANTICS.md, send / recv / recv_like: "`dst`/`src` outside `[0, N)` raise ValueError at call
    time".
    """
    require_size(world, 2)
    size = world.size()
    like = backend.asarray(np.zeros(3, np.int16))
    for src in (size, -1):
        with collective_raises(ValueError, match=rf"Invalid source={src} .*size {size}"):
            backend.evaluate(backend.recv_like(like, src, group=world))


@pytest.mark.core
@pytest.mark.spec("send", rule="singleton-raises")
def test_send_on_size_one_group(backend, world, capabilities):
    """send on a group of one process raises ValueError.

    SEMANTICS.md, Size-1 groups: "`send` raises ValueError `Cannot send to a singleton group`".
    """
    group = singleton_group(world, capabilities)
    x = backend.asarray(data.contribution(world.rank(), (2,), "int32"))
    with collective_raises(ValueError, match="Cannot send to a singleton group"):
        backend.evaluate(backend.send(x, 0, group=group))


@pytest.mark.core
@pytest.mark.spec("recv", rule="singleton-raises")
def test_recv_on_size_one_group(backend, world, capabilities):
    """recv on a group of one process raises ValueError.

    SEMANTICS.md, Size-1 groups: "`recv`/`recv_like` raise ValueError `Cannot recv from a
    singleton group`".
    """
    group = singleton_group(world, capabilities)
    with collective_raises(ValueError, match="Cannot recv from a singleton group"):
        backend.evaluate(backend.recv((2,), backend.dtype("int32"), 0, group=group))


@pytest.mark.core
@pytest.mark.spec("recv_like", rule="singleton-raises")
def test_recv_like_on_size_one_group(backend, world, capabilities):
    """recv_like on a group of one process raises ValueError.

    SEMANTICS.md, Size-1 groups: "`recv`/`recv_like` raise ValueError `Cannot recv from a
    singleton group`".
    """
    group = singleton_group(world, capabilities)
    like = backend.asarray(np.zeros(2, np.int32))
    with collective_raises(ValueError, match="Cannot recv from a singleton group"):
        backend.evaluate(backend.recv_like(like, 0, group=group))


@pytest.mark.impl_defined
@pytest.mark.spec("send", rule="non-neighbour")
def test_non_neighbour_send_raises_cleanly(backend, world, capabilities):
    """With ``neighbours`` topology a send to a non-neighbour raises on the sender.

    SEMANTICS.md, send / recv / recv_like: "a backend may declare that topology, and the suite
    must then test only neighbours plus the clean error for the others."
    """
    if capabilities.p2p_topology == "any":
        pytest.skip("backend declares any-to-any topology (test_every_allowed_ordered_pair)")
    require_size(world, 4)
    rank, size = world.rank(), world.size()
    x = backend.asarray(data.contribution(rank, (2,), "int32"))
    raises_as_declared(
        "send:neighbours", lambda: backend.evaluate(backend.send(x, (rank + 2) % size, group=world))
    )


@pytest.mark.impl_defined
@pytest.mark.spec("send", rule="self")
def test_send_to_self(backend, world, capabilities):
    """Send to oneself either delivers to one's own recv, or raises cleanly, as declared.

    SEMANTICS.md, send / recv / recv_like: "impl-defined: sending to oneself (MLX mpi allows it,
    ring raises)." Checked against the backend's ``send_to_self`` capability.
    """
    require_size(world, 2)
    rank = world.rank()
    message = _message(rank, rank, (4,), "float32")
    if not capabilities.send_to_self:
        raises_as_declared("send:self", lambda: exchanges.send(backend, message, rank, world))
        return
    _, error = attempt(exchanges.send, backend, message, rank, world)
    if error:
        settle([f"send to self raised {describe_error(error)}"])
        return
    got, error = attempt(exchanges.recv, backend, (4,), "float32", rank, world)
    settle([describe_error(error) if error else mismatch(got, message, None, "message to self")])


@pytest.mark.core
@pytest.mark.spec("send", rule="keyword-only")
def test_default_group_is_world_for_p2p(backend, world, capabilities):
    """A message sent with ``group=world`` is received by a recv without ``group``, and back.

    SEMANTICS.md, Signatures: "`group=None` means the global group (`init()`)." So the default
    group and the world are one channel, not two. With a backend deadline the check cannot hang
    on a backend that gets this wrong, and a message the default group missed is read back on
    the world, so later tests find no stray message.
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    previous = backend.set_timeout(10.0) if capabilities.timeouts else None
    mine = _message(rank, (rank + 1) % size, (5,), "uint16")
    theirs = _message((rank - 1) % size, rank, (5,), "uint16")
    problems: list[str | None] = []

    def send_explicit():
        _, error = attempt(exchanges.send, backend, mine, (rank + 1) % size, world)
        problems.append(error and f"send(group=world) raised {describe_error(error)}")

    def recv_default():
        def go():
            out = backend.recv((5,), backend.dtype("uint16"), (rank - 1) % size)
            backend.evaluate(out)
            return backend.to_numpy(out)

        got, error = attempt(go)
        problems.append(
            f"recv without group raised {describe_error(error)}"
            if error
            else mismatch(got, theirs, None, "recv without group")
        )
        if error:  # read the message back on the world, where it was sent: none left astray
            attempt(exchanges.recv, backend, (5,), "uint16", (rank - 1) % size, world)

    try:
        for step in (
            (send_explicit, recv_default) if rank % 2 == 0 else (recv_default, send_explicit)
        ):
            step()
    finally:
        if previous is not None:
            backend.set_timeout(previous)
    settle(problems)


@pytest.mark.core
@pytest.mark.spec("recv", rule="shape-dtype")
def test_recv_takes_src_among_pending_messages(backend, world, control, capabilities):
    """With messages from several senders pending (itself included), recv(src) takes src's.

    SEMANTICS.md, send / recv / recv_like: "`recv(shape, dtype, src)` returns an array of
    exactly that shape and dtype holding what `src` sent." Every rank first sends a small
    message to every rank the topology allows (itself too when ``send_to_self``), then all
    messages are pending; each rank then receives from each allowed sender in turn, peers in
    ascending order and itself last, so a recv that takes whichever message is pending (the
    highest or lowest sender, or its own) gets a wrong one. Run under a short backend deadline
    when the backend has one, and last in this module: a wrong pick leaves a message unread.
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    senders = [s for s in range(size) if capabilities.p2p_allowed(s, rank, size)]
    targets = [d for d in range(size) if capabilities.p2p_allowed(rank, d, size)]
    previous = backend.set_timeout(10.0) if capabilities.timeouts else None
    problems: list[str | None] = []
    try:
        for dst in targets:  # small messages: sent eagerly, none waits for its recv
            message = _message(rank, dst, (3,), "int32", salt=7)
            _, error = attempt(exchanges.send, backend, message, dst, world)
            problems.append(error and f"send to {dst} raised {describe_error(error)}")
        control.barrier(control.next_label("all-sent"))  # every message is now on its way
        for src in sorted(senders, key=lambda s: (s == rank, s)):
            got, error = attempt(exchanges.recv, backend, (3,), "int32", src, world)
            problems.append(
                f"recv from {src} raised {describe_error(error)}"
                if error
                else mismatch(got, _message(src, rank, (3,), "int32", salt=7), None, f"from {src}")
            )
    finally:
        if previous is not None:
            backend.set_timeout(previous)
    settle(problems)
