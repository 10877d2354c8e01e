"""Spec of ``init(strict=False, backend="any")`` and ``is_available(backend="any")``.

SEMANTICS.md, "init / is_available"; manifest entries ``[ops.init]`` and ``[ops.is_available]``.
Only backends the implementation says are *not* available are initialised here (a backend that is
available could start a second transport next to the world's).
"""

from __future__ import annotations

import pytest

from conformance.harness.collective import collective_raises
from conformance.specs import data, exchanges
from conformance.specs.calls import attempt, call, describe_error, settle
from conformance.specs.groups import require_size
from conformance.specs.tolerance import mismatch

VALID_NAMES = ("any", "mpi", "ring", "nccl", "jaccl")
INVALID_NAMES = ("bogus", "MPI", "", "ring ")
_NAMES_ALL = r"(?s)(?=.*\bany\b)(?=.*\bmpi\b)(?=.*\bring\b)(?=.*\bnccl\b)(?=.*\bjaccl\b)"

pytestmark = pytest.mark.core


def _unavailable(backend) -> list[str]:
    return [
        name for name in VALID_NAMES if call("is_available", backend.is_available, name) is False
    ]


@pytest.mark.spec("init", rule="invalid-backend")
@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_backend_name_raises(backend, name):
    """An unknown backend name is a ValueError that names the valid values.

    SEMANTICS.md, init / is_available: "valid backend names are `any`, `mpi`, `ring`, `nccl`,
    `jaccl`; any other string raises ValueError naming the valid values".
    """
    collective_raises(ValueError, backend.init, backend=name, match=_NAMES_ALL)


@pytest.mark.spec("init", rule="non-strict-singleton")
def test_non_strict_without_backend_gives_singleton(backend, world):
    """A backend that cannot form a group gives a singleton group (rank 0, size 1) when not strict.

    SEMANTICS.md, init / is_available: "`strict=False` and no backend can form a group: a
    singleton group (rank 0, size 1)." Tried with every valid backend name that is_available
    reports missing, and with the world itself when it has one process.
    """
    problems: list[str | None] = []
    names = _unavailable(backend)
    for name in names:
        group, error = attempt(backend.init, strict=False, backend=name)
        if error:
            problems.append(f"init(backend={name!r}) raised {describe_error(error)}")
        elif (group.rank(), group.size()) != (0, 1):
            problems.append(f"init(backend={name!r}) gave rank {group.rank()} of {group.size()}")
    if world.size() == 1:
        problems.append(None if world.rank() == 0 else f"world of one has rank {world.rank()}")
    elif not names:
        pytest.skip("every backend name is available and the world has several processes")
    settle(problems)


@pytest.mark.spec("init", rule="strict-raises")
def test_strict_without_backend_raises(backend, world):
    """``strict=True`` with a backend that cannot form a group is a RuntimeError.

    SEMANTICS.md, init / is_available: "`strict=True`: RuntimeError (`[distributed] Couldn't
    initialize any backend`)." With one process, ``init(strict=True)`` itself; else each backend
    name that is_available reports missing.
    """
    names = _unavailable(backend)
    if world.size() == 1:
        collective_raises(RuntimeError, backend.init, strict=True, match=r"(?i)initiali[sz]e")
    elif not names:
        pytest.skip("every backend name is available and the world has several processes")
    for name in names:
        collective_raises(RuntimeError, backend.init, strict=True, backend=name)


@pytest.mark.spec("init", rule="cached")
def test_init_again_gives_same_group(backend, world):
    """Calling init() again gives a group with the same rank and size, that works.

    SEMANTICS.md, init / is_available: "calling `init()` again returns a group with the same rank
    and size (cached)."
    """
    again = call("init() again", backend.init)
    same = (again.rank(), again.size()) == (world.rank(), world.size())
    settle([None if same else f"init() again: rank {again.rank()} of {again.size()}"])


@pytest.mark.spec("init", rule="launch-size")
def test_world_spans_every_launched_process(world, control):
    """Under an MPI launcher, init() forms one group of all launched processes.

    SEMANTICS.md, init / is_available: "`any` picks it when launched under mpiexec with more than
    one process". Compared with the size of the suite's own MPI control plane.
    """
    ok = world.size() == control.size
    settle([None if ok else f"world has {world.size()} ranks, {control.size} were launched"])


@pytest.mark.spec("is_available", rule="returns-bool")
def test_is_available_returns_bool(backend, world):
    """is_available returns a bool for every valid name; True for the default when a group formed.

    SEMANTICS.md, init / is_available: "`is_available(backend)` says whether the backend is built
    in, not whether a group can form".
    """
    problems: list[str | None] = []
    for name in VALID_NAMES:
        answer, error = attempt(backend.is_available, name)
        if error or not isinstance(answer, bool):
            problems.append(f"is_available({name!r}) gave {answer!r} {error or ''}")
    default, error = attempt(backend.is_available)
    if error or not isinstance(default, bool):
        problems.append(f"is_available() gave {default!r} {error or ''}")
    elif world.size() > 1 and default is not True:
        problems.append("is_available() is False although init() formed a group")
    settle(problems)


@pytest.mark.spec("is_available", rule="unknown-false")
@pytest.mark.parametrize("name", INVALID_NAMES)
def test_unknown_name_is_not_available(backend, name):
    """is_available of an unknown name is False, without raising.

    SEMANTICS.md, init / is_available: "unknown names return False (no raise)."
    """
    answer, error = attempt(backend.is_available, name)
    settle([None if answer is False and not error else f"gave {answer!r} {error or ''}"])


#: Backend deadline of the mixed-handle test: a handle that is another group never delivers.
MIXED_DEADLINE = 4.0


def _mixed_round(backend, rank, size, sender, receiver, label, salt):
    """Send to rank + 1 on ``sender`` and receive from rank - 1 on ``receiver``: the findings.

    Even ranks send first, odd ranks receive first (no cycle of lazy sends). When the recv fails
    and the message went out on a real handle (not ``None``), it is read there afterwards, so a
    handle that is another group leaves no stray message behind in the world.
    """
    dst, src = (rank + 1) % size, (rank - 1) % size
    mine = data.contribution(rank, (4,), "int32", salt=salt * 1000 + dst)
    theirs = data.contribution(src, (4,), "int32", salt=salt * 1000 + rank)
    problems: list[str | None] = []

    def do_send():
        _, error = attempt(exchanges.send, backend, mine, dst, sender)
        problems.append(error and f"{label}: send to {dst} raised {describe_error(error)}")

    def do_recv():
        got, error = attempt(exchanges.recv, backend, (4,), "int32", src, receiver)
        if error is None:
            problems.append(mismatch(got, theirs, None, f"{label}: message from {src}"))
            return
        problems.append(f"{label}: recv from {src} raised {describe_error(error)}")
        if sender is not None:
            attempt(exchanges.recv, backend, (4,), "int32", src, sender)  # drain

    for step in (do_send, do_recv) if rank % 2 == 0 else (do_recv, do_send):
        step()
    return problems


@pytest.mark.spec("init", rule="cached")
def test_init_again_is_the_world_group(backend, world, capabilities):
    """init() again is the world group itself: ranks may mix it with ``world`` and ``group=None``.

    SEMANTICS.md, init / is_available: "calling `init()` again returns a group with the same rank
    and size (cached)." and Signatures: "`group=None` means the global group (`init()`)." A
    backend that forms a new group on every init() passes the rank/size check but its groups do
    not talk to each other. First messages (rank -> rank + 1) sent on one handle and received on
    another: world -> init(), init() -> None, None -> world; under a short backend deadline when
    the backend has one, and a message that went astray on the world is read back, so a failure
    here leaves the world usable. Only when every message arrived, all_sum with the handles
    mixed across ranks (odd ranks one, even ranks the other). Last in this module.
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    previous = backend.set_timeout(MIXED_DEADLINE) if capabilities.timeouts else None
    try:
        again = call("init() again", backend.init)
        handles = {"world": world, "init()": again, "None": None}
        problems: list[str | None] = []
        pairs = (("world", "init()"), ("init()", "None"), ("None", "world"))
        for salt, (sent_on, read_on) in enumerate(pairs):
            label = f"sent with group={sent_on}, received with group={read_on}"
            problems += _mixed_round(
                backend, rank, size, handles[sent_on], handles[read_on], label, salt
            )
        settle(problems, "point to point")
        blocks = data.contributions(size, (5,), "int64")
        want = data.expected_sum(blocks)

        def total(group):
            out = backend.all_sum(backend.asarray(blocks[rank]), group=group)
            backend.evaluate(out)
            return backend.to_numpy(out)

        problems = []
        for even, odd in pairs:
            what = f"all_sum with group={even} on even ranks, group={odd} on odd ranks"
            got, error = attempt(total, handles[odd if rank % 2 else even])
            problems.append(
                f"{what} raised {describe_error(error)}"
                if error
                else mismatch(got, want, None, what)
            )
        settle(problems, "collectives")
    finally:
        if previous is not None:
            backend.set_timeout(previous)
