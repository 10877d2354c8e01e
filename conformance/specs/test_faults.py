"""Robust spec, faults tier: one rank killed or stalled mid-operation.

SEMANTICS.md, "Dead and stalled peers (robust)"; manifest entry ``[ops.faults]``. The last rank
is the victim. A killed rank cannot be survived inside one MPI job (the suite's control plane is
MPI, and MPICH's and Open MPI's launchers end every rank when one dies), so the kill tests check
the job-level outcome the contract names: each announces the kill (``faults.announce_job_end``),
and the runner records the test as passed when the job ended within one deadline, hung when it
had to end it, crashed when it ended unannounced. The stall test runs inside the job: the peers
must raise TimeoutError in time, and the resumed rank must not block forever either.
"""

from __future__ import annotations

import time

import pytest

from conformance.specs import data, exchanges, faults
from conformance.specs.calls import attempt, call, describe_error, settle
from conformance.specs.groups import require_size
from conformance.specs.tolerance import mismatch

pytestmark = [pytest.mark.robust, pytest.mark.faults]

DEADLINE = 1.0
# Generous: two oversubscribed cores can stall a rank for a while.
SLACK = 10.0
# A survivor waits this long for the launcher to end the job; past it the plugin's watchdog
# records the test as hung (the contract's "within one deadline" is the plugin's deadline).
WAIT_FOR_LAUNCHER = 3600.0


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


def _collective(backend, world):
    # Contributions by rank in this group (the stall test's expected sum is built alike).
    x = backend.asarray(data.contribution(world.rank(), (8,), "float32"))
    out = backend.all_sum(x, group=world)
    backend.evaluate(out)
    return backend.to_numpy(out)


@pytest.mark.spec("faults", rule="killed-peer")
@pytest.mark.parametrize("when", ["before-collective", "during-collective", "during-recv"])
def test_killed_rank_ends_the_job_in_time(request, backend, world, short_deadline, when):
    """The victim is SIGKILLed before or during a collective, or while its peer waits in recv;
    the others must not block forever.

    SEMANTICS.md, Dead and stalled peers: "When a rank dies (SIGKILL) before or during a
    collective or a send/recv, no other rank blocks forever: under an MPI launcher the launcher
    ends the whole job, and the run records that end within one deadline."
    """
    require_size(world, 2)
    rank, victim = world.rank(), faults.victim(world.size())
    faults.announce_job_end(request.node)
    if rank == victim:
        if when == "before-collective":
            faults.kill_self()
        faults.kill_self(after=1.0)
        if when == "during-collective":
            attempt(_collective, backend, world)
    elif when == "before-collective":
        time.sleep(0.5)
        attempt(_collective, backend, world)
    elif when == "during-collective":
        attempt(_collective, backend, world)
    elif rank == 0:
        attempt(exchanges.recv, backend, (4,), "int32", victim, world)
    # The launcher ends this rank; if it does not, the plugin's watchdog records a hang.
    time.sleep(WAIT_FOR_LAUNCHER)


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
    if elapsed > DEADLINE + SLACK:
        problems.append(f"{who}: returned only after {elapsed:.1f} s (deadline {DEADLINE} s)")
    settle(problems)
