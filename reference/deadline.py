"""Waiting on MPI requests with a deadline, so no call blocks forever.

SEMANTICS.md, "Hangs (robust)": a blocking operation whose peer never arrives raises TimeoutError
after a configurable deadline, naming the operation, the group and the peers not heard from.

The deadline is ``REFERENCE_TIMEOUT`` (seconds, default 300) or ``set_timeout(seconds)``.
Waiting spins on ``MPI_Test`` first (MPI's progress engine only runs inside MPI calls, so a large
transfer needs frequent calls to go at full speed), then yields the core, then sleeps in growing
steps so that oversubscribed ranks (more ranks than cores) leave the CPU to the peers they wait for.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpi4py import MPI

TIMEOUT_ENV = "REFERENCE_TIMEOUT"
DEFAULT_TIMEOUT = 300.0

# Tuned on a 2-core machine: pure spinning for the first ~50 ms keeps large transfers at full
# speed; after that a waiting rank costs its peers almost nothing.
_SPIN_SECONDS = 0.05
_MAX_SLEEP = 0.002
# Peers that are already there answer within a few polls: check before reading any clock.
_FAST_SPINS = 200
_yield = getattr(os, "sched_yield", lambda: time.sleep(0))


def _oversubscribed() -> bool:
    """Whether this node runs more ranks of the job than this process has cores (as the
    launcher tells: MPICH's Hydra and Open MPI export the node's rank count)."""
    local = os.environ.get("MPI_LOCALNRANKS") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    try:
        ranks = int(local or 0)
    except ValueError:
        return False
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    return ranks > cores


# With more ranks than cores, a rank that spins takes the core from the peer it waits for: then
# every poll yields (measured at 3 ranks on 2 cores: a 4 KiB all_gather 173 -> 77 us, 256 KiB
# 569 -> 215 us). Otherwise spinning is cheapest; the clock is read every 64 polls.
OVERSUBSCRIBED = _oversubscribed()
_SPINS_FIRST = 0 if OVERSUBSCRIBED else _FAST_SPINS
_SPIN_MASK = 0 if OVERSUBSCRIBED else 63


def _parse_timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    _check_timeout(seconds, TIMEOUT_ENV)
    return seconds


def _check_timeout(seconds: float, what: str) -> None:
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{what} must be a positive, finite number of seconds, got {seconds!r}")


_timeout = _parse_timeout(os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT)))


def get_timeout() -> float:
    """The deadline, in seconds, of every blocking call of the reference."""
    return _timeout


def set_timeout(seconds: float) -> float:
    """Set the deadline of every blocking call; returns the previous one."""
    global _timeout
    _check_timeout(seconds, "the timeout")
    previous, _timeout = _timeout, float(seconds)
    return previous


def _wait_until(done: Callable[[Any], bool], argument: Any) -> bool:
    """Call ``done(argument)`` until true (returns True) or past the deadline (returns False)."""
    for _ in range(_SPINS_FIRST):
        if done(argument):
            return True
    start = time.monotonic()
    deadline = start + _timeout
    spins = 0
    sleep = 1e-5
    while not done(argument):
        spins += 1
        if spins & _SPIN_MASK:
            continue
        now = time.monotonic()
        if now >= deadline:
            return False
        if now - start < _SPIN_SECONDS:
            _yield()
        else:
            time.sleep(sleep)
            sleep = min(sleep * 2, _MAX_SLEEP)
    return True


_testall: Callable[[Sequence[MPI.Request]], bool] | None = None
_test: Callable[[MPI.Request], bool] | None = None


def _import_tests() -> None:
    """Bind ``_test`` and ``_testall`` on first use: importing mpi4py.MPI initialises MPI, which a
    singleton process never needs."""
    global _testall, _test
    from mpi4py import MPI

    _testall, _test = MPI.Request.Testall, MPI.Request.Test


def wait_all(
    requests: Sequence[MPI.Request],
    on_timeout: Callable[[list[int], float], Exception],
    *,
    cancel: bool = True,
) -> None:
    """Complete every request, or raise ``on_timeout(pending_indices, seconds)`` at the deadline.

    Pending requests are cancelled before raising (unless ``cancel`` is false: then the caller's
    ``on_timeout`` keeps them and their buffers alive), so their buffers are not written later.
    """
    if _test is None:
        _import_tests()
    # One request (a collective's data phase) is polled with Test: Testall converts the list
    # on every poll, which measured 7% slower at 64 KiB.
    if len(requests) == 1:
        if _wait_until(_test, requests[0]):
            return
    else:
        # The first request alone is polled 3x cheaper; it is usually what the rest wait on
        # (the first peer's receive of an exchange).
        first = requests[0]
        for _ in range(_SPINS_FIRST):
            if _test(first):
                break
        if _wait_until(_testall, requests):
            return
    pending = [index for index, request in enumerate(requests) if not request.Test()]
    if cancel:
        cancel_requests(requests, pending)
    raise on_timeout(pending, _timeout)


def cancel_requests(requests: Sequence[MPI.Request], indices: Sequence[int]) -> None:
    """Cancel ``requests[i]`` for each index, best effort (a timeout is what the caller reports).

    Only for receives and persistent requests: MPICH cannot cancel a one-off send.
    """
    for index in indices:
        try:
            requests[index].Cancel()
        except Exception:  # cancelling is best effort; the caller's TimeoutError is what matters
            pass


def wait_or_cancel(request: MPI.Request, on_timeout: Callable[[float], Exception]) -> None:
    """Complete a receive, or cancel it at the deadline and raise ``on_timeout(seconds)``.

    A receive that MPI matched before the cancel completes normally instead: the message is
    delivered and nothing is raised, so a raised timeout always means nothing was consumed.
    """
    if _test is None:
        _import_tests()
    if _wait_until(_test, request):
        return
    if cancel_receive(request):
        raise on_timeout(_timeout)


def cancel_receive(request: MPI.Request) -> bool:
    """Cancel a pending receive and complete it: True if it was cancelled (nothing written),
    False if MPI had already matched it (it completed normally, its buffer written)."""
    from mpi4py import MPI

    request.Cancel()
    status = MPI.Status()
    request.Wait(status)
    return status.Is_cancelled()


def poll(probe: Callable[[], object], on_timeout: Callable[[float], Exception]) -> object:
    """Call ``probe`` until it returns something other than None, or raise at the deadline."""
    found = probe()
    if found is not None:
        return found
    box: list[object] = []

    def arrived(_: None) -> bool:
        item = probe()
        if item is None:
            return False
        box.append(item)
        return True

    if not _wait_until(arrived, None):
        raise on_timeout(_timeout)
    return box[0]
