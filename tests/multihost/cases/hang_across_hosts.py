"""A job for ci/multihost-check.sh (not collected by the project's own test run): one rank
stalls in test code while the others wait for it, so the watchdog must report every rank's stack,
including those of ranks on other hosts.
"""

from __future__ import annotations

import time


def test_passes_first(control) -> None:
    """Something finishes before the hang, so the job's logs have content on every host."""
    assert control.allgather(("hang-case", "warm-up"), control.rank) == list(range(control.size))


def test_last_rank_stalls(control) -> None:
    """The last rank sleeps far past the deadline; the others wait at the outcome exchange."""
    if control.rank == control.size - 1:
        stall_on_the_last_rank()


def stall_on_the_last_rank() -> None:
    time.sleep(3600)
