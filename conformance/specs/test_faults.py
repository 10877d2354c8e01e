"""Robust spec, faults tier: one rank killed or stalled mid-operation.

SEMANTICS.md, "Dead and stalled peers (robust)"; manifest entry ``[ops.faults]``. The last rank
is the victim (rank 0 writes the records and must live). A kill test runs only where the survivors
of a killed rank can be observed: ``python -m conformance run`` gives it a job of its own whose
launcher keeps them alive (``conformance.harness.survivors``); elsewhere it skips, saying so. Each
survivor's backend call is watched for the deadline plus the allowance
(``conformance.specs.timing``): it must raise within that time, naming the dead rank. The stall
test runs in any job: the peers must raise TimeoutError in time, and the resumed rank must not
block forever either.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from conformance.harness import survivors
from conformance.specs import data, exchanges, faults, timing
from conformance.specs.calls import attempt, call, describe_error, settle
from conformance.specs.groups import require_size
from conformance.specs.tolerance import mismatch

pytestmark = [pytest.mark.robust, pytest.mark.faults, pytest.mark.timed]

DEADLINE = timing.DEADLINE
#: Elements of the collective a victim is killed in the middle of: large enough (16 MiB of
#: float32) that the collective is still moving data when the kill lands.
DURING_ELEMENTS = 4 * 1024 * 1024
#: Elements of the large send: past the reference's 16 KiB eager limit (rendezvous path).
LARGE_SEND_ELEMENTS = 64 * 1024
#: Seconds after which the victim is killed while its peer waits in recv or send.
KILL_DELAY = 0.3
#: Seconds after the victim enters the large collective that it is killed.
DURING_KILL_DELAY = 0.05


@pytest.fixture
def short_deadline(request, backend, capabilities):
    """Fault tests only where the backend can time out (else opt-in), with a short deadline."""
    faults.require_faults(request.config, capabilities)
    if not capabilities.timeouts:
        yield None
        return
    previous = backend.set_timeout(DEADLINE)
    yield DEADLINE
    backend.set_timeout(previous)


def _collective(backend, world, count=8):
    # Contributions by rank in this group (the stall test's expected sum is built alike).
    return _all_sum(backend, world, data.contribution(world.rank(), (count,), "float32"))


def _all_sum(backend, world, contribution):
    out = backend.all_sum(backend.asarray(contribution), group=world)
    backend.evaluate(out)
    return backend.to_numpy(out)


def _victim(backend, world, when):
    """The victim's part: die at the moment ``when`` names (never returns)."""
    if when == "before-collective":
        faults.kill_self()
    if when == "during-collective":
        mine = data.contribution(world.rank(), (DURING_ELEMENTS,), "float32")
        faults.kill_self(after=DURING_KILL_DELAY)
        attempt(_all_sum, backend, world, mine)
    else:
        faults.kill_self(after=KILL_DELAY)
    time.sleep(3600)  # the kill lands first


def _survivor_call(backend, world, when, victim):
    """This survivor's call in the test, or None when it has none; its inputs are made before
    (only the backend's call is timed)."""
    rank = world.rank()
    if when == "before-collective":
        time.sleep(0.2)  # the victim is dead before the call
        mine = data.contribution(rank, (8,), "float32")
        return lambda: _all_sum(backend, world, mine)
    if when == "during-collective":
        mine = data.contribution(rank, (DURING_ELEMENTS,), "float32")
        return lambda: _all_sum(backend, world, mine)
    if rank != 0:
        return None
    if when == "during-recv":
        return lambda: exchanges.recv(backend, (4,), "int32", victim, world)
    payload = data.contribution(0, (LARGE_SEND_ELEMENTS,), "float32")
    return lambda: exchanges.send(backend, payload, victim, world)


@pytest.mark.spec("faults", rule="killed-peer")
@pytest.mark.kills_rank
@pytest.mark.parametrize(
    "when", ["before-collective", "during-collective", "during-recv", "during-large-send"]
)
def test_survivors_of_a_killed_rank_raise_in_time(request, backend, world, short_deadline, when):
    """The victim is SIGKILLed before or during a collective, while a peer waits in recv, or
    while a peer sends it a large message; every survivor's call must raise within the deadline
    plus the allowance, naming the dead rank where it waited on it directly.

    SEMANTICS.md, Dead and stalled peers: "When a rank dies (SIGKILL) before or during a
    collective or a send/recv, no other rank blocks forever: every survivor's call raises within
    the deadline (plus the allowance); a survivor that waited on the dead rank directly names it."
    """
    require_size(world, 2)
    survivors.require()
    rank, victim = world.rank(), faults.victim(world.size())
    if when == "during-collective":
        # The first large collective on a group also sets up its data plane (the reference maps
        # shared memory, which MPI cannot bound by a deadline): done here, so the kill lands in
        # the data movement this test is about.
        mine = data.contribution(rank, (DURING_ELEMENTS,), "float32")
        call("a first large all_sum", _all_sum, backend, world, mine)
    comm = survivors.prepare(victim)
    if rank == victim:
        _victim(backend, world, when)
    limit = timing.limit()
    job = _survivor_call(backend, world, when, victim)
    mine = survivors.observe(job, limit, rank) if job else survivors.idle(rank)
    if when == "during-collective" and mine.kind == "returned":
        # The victim may have contributed in full before it died: then the sum must be right.
        expected = sum(
            data.contribution(r, (DURING_ELEMENTS,), "float32") for r in range(world.size())
        )
        got = np.asarray(mine.result)
        problem = mismatch(got, expected, None, "all_sum result")
        if problem:
            mine.kind, mine.detail = "late", problem
    survivors.finish(
        request.config,
        request.node,
        comm,
        mine,
        victim,
        limit,
        accept_result=when == "during-collective",
        # Mid-collective a survivor may be waiting on a live peer, not on the dead rank.
        must_name=when != "during-collective",
    )


@pytest.mark.spec("faults", rule="stalled-peer")
def test_stalled_rank_makes_peers_time_out(backend, world, capabilities, short_deadline):
    """The victim is stopped (SIGSTOP) past the deadline, then resumed (SIGCONT), while the
    others run all_sum on a throwaway group.

    SEMANTICS.md, Dead and stalled peers: "A rank stalled (SIGSTOP) past the deadline makes the
    others raise TimeoutError within the deadline; once resumed, it does not block forever
    either: it raises TimeoutError or returns the correct result."
    """
    require_size(world, 2)
    if not capabilities.timeouts:
        pytest.skip("backend declares no set_timeout (capability timeouts)")
    if not capabilities.split:
        pytest.skip("backend declares split unsupported: no throwaway group to stall")
    group = call("world.split(0)", world.split, 0)
    rank, victim = group.rank(), faults.victim(group.size())
    problems: list[str | None] = []
    if rank == victim:
        faults.stall_self(DEADLINE + 2.0)
    start = time.monotonic()
    got, error = attempt(_collective, backend, group)
    elapsed = time.monotonic() - start
    who = "the resumed rank" if rank == victim else f"rank {rank}"
    if error is None and rank == victim:
        # It may have received every contribution before its peers gave up.
        expected = sum(data.contribution(r, (8,), "float32") for r in range(group.size()))
        problems.append(mismatch(got, expected, None, f"{who}: all_sum result"))
    elif not isinstance(error, TimeoutError):
        got_text = describe_error(error) if error else "no error"
        problems.append(
            f"{who}: all_sum with a stalled peer: expected TimeoutError, got {got_text}"
        )
    if elapsed > timing.limit():
        problems.append(
            f"{who}: returned only after {elapsed:.2f} s (deadline {DEADLINE:g} s "
            f"+ allowance {timing.ALLOWANCE:g} s)"
        )
    settle(problems)
