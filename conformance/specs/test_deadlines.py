"""Robust spec: a blocking call whose peer never comes raises TimeoutError instead of hanging.

SEMANTICS.md, "Hangs (robust)"; manifest entry ``[ops.deadlines]``. Needs a backend with
``set_timeout`` (capability ``timeouts``) and split: a group whose collective timed out is
unusable afterwards, so each hang is staged on a fresh ``world.split(0)`` subgroup that is then
dropped. Only rank 0 calls; the others stay out, then every rank meets at the final check.
"""

from __future__ import annotations

import re
import time

import pytest

from conformance.specs import data, exchanges, timing
from conformance.specs.calls import attempt, call, describe_error, settle
from conformance.specs.groups import require_size
from conformance.specs.tolerance import mismatch

pytestmark = [pytest.mark.robust, pytest.mark.timed]

DEADLINE = timing.DEADLINE


@pytest.fixture
def short_deadline(backend, capabilities):
    """The backend's deadline set to ``DEADLINE`` seconds for one test, then restored."""
    if not capabilities.timeouts:
        pytest.skip("backend declares no set_timeout (capability timeouts)")
    previous = backend.set_timeout(DEADLINE)
    yield DEADLINE
    backend.set_timeout(previous)


def _timeout_findings(error, elapsed, op, missing):
    if not isinstance(error, TimeoutError):
        got = describe_error(error) if error else "no error"
        return [f"{op} with absent peers: expected TimeoutError, got {got}"]
    text = str(error)
    problems = []
    if elapsed > timing.limit():
        problems.append(
            f"{op} raised only after {elapsed:.2f} s (deadline {DEADLINE:g} s "
            f"+ allowance {timing.ALLOWANCE:g} s)"
        )
    if op not in text:
        problems.append(f"TimeoutError does not name the operation {op!r}: {text}")
    absent = [r for r in missing if not re.search(rf"\b{r}\b", text)]
    if absent:
        problems.append(f"TimeoutError does not name absent rank(s) {absent}: {text}")
    return problems


@pytest.mark.spec("deadlines", rule="collective-timeout")
@pytest.mark.parametrize("op", ["all_sum", "all_gather"])
def test_collective_with_absent_peers_times_out(backend, world, capabilities, short_deadline, op):
    """Rank 0 alone in a collective raises TimeoutError naming the op and the absent ranks.

    SEMANTICS.md, Hangs: "A blocking operation whose peer never arrives raises TimeoutError after
    a configurable deadline (naming the operation, the group and the peers not heard from)
    instead of blocking forever."
    """
    require_size(world, 2)
    if not capabilities.split:
        pytest.skip("backend declares split unsupported: no throwaway group to hang")
    group = call("world.split(0)", world.split, 0)
    problems: list[str | None] = []
    if group.rank() == 0:
        x = backend.asarray(data.contribution(0, (4,), "float32"))
        start = time.monotonic()
        _, error = attempt(lambda: backend.evaluate(getattr(backend, op)(x, group=group)))
        elapsed = time.monotonic() - start
        problems += _timeout_findings(error, elapsed, op, range(1, group.size()))
    settle(problems)


@pytest.mark.spec("deadlines", rule="recv-timeout")
def test_recv_from_silent_peer_times_out(backend, world, capabilities, short_deadline):
    """A recv from a rank that sends nothing raises TimeoutError naming the source; a message
    sent afterwards still arrives.

    SEMANTICS.md, Hangs: "A blocking operation whose peer never arrives raises TimeoutError after
    a configurable deadline ... instead of blocking forever." (The reference's contract adds
    that a recv that timed out leaves the channel usable.)
    """
    require_size(world, 2)
    if not capabilities.split:
        pytest.skip("backend declares split unsupported: no throwaway group to hang")
    group = call("world.split(0)", world.split, 0)
    rank = group.rank()
    problems: list[str | None] = []
    if rank == 0:
        start = time.monotonic()
        _, error = attempt(exchanges.recv, backend, (3,), "int32", 1, group)
        problems += _timeout_findings(error, time.monotonic() - start, "recv", [1])
    # Everyone meets here, so rank 1 sends only after rank 0's recv has given up.
    settle(problems, "recv timeout")
    message = data.contribution(1, (3,), "int32", salt=5)
    later: list[str | None] = []
    if rank == 1:
        _, error = attempt(exchanges.send, backend, message, 0, group)
        later.append(error and f"send after the timeout raised {describe_error(error)}")
    elif rank == 0:
        got, error = attempt(exchanges.recv, backend, (3,), "int32", 1, group)
        later.append(
            f"recv after the timeout raised {describe_error(error)}"
            if error
            else mismatch(got, message, None, "message after the timeout")
        )
    settle(later, "after the timeout")
