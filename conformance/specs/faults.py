"""Injecting faults into one rank of a running spec test (runs inside every rank).

``kill_self`` ends this rank with SIGKILL; ``stall_self`` stops it with SIGSTOP and has a helper
process resume it later. Before a test kills a rank it calls ``announce_job_end`` on every rank:
under an MPI launcher the launcher then ends the whole job, and the runner reads the mark to tell
that expected end from a crash (``conformance.harness.isolation``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conformance.harness import isolation, levels
from conformance.harness.control import active as active_control


def victim(size: int) -> int:
    """The rank a fault test breaks: the last one (rank 0 writes the records and must live)."""
    return size - 1


def require_faults(config: pytest.Config, capabilities: object) -> None:
    """Skip unless the backend declares timeouts or the run asked for the faults tier (-m)."""
    asked = "faults" in str(config.getoption("markexpr", "") or "")
    if not getattr(capabilities, "timeouts", False) and not asked:
        pytest.skip("backend declares no timeouts; fault tests are opt-in (-m faults)")


def announce_job_end(item: pytest.Item) -> None:
    """Print the runner's job-end mark (rank 0) and wait until every rank is past this point,
    so the mark is out before any rank dies."""
    plane = active_control()
    if plane is None or plane.rank == 0:
        cited = levels.spec_of(item)
        line = isolation.job_end_line(
            item.nodeid,
            time.time(),
            level=levels.level_of(item),
            tier=levels.tier_of(item),
            rule="/".join(cited) if cited else None,  # the runner's record cites the rule too
        )
        sys.__stdout__.write(line + "\n")
        sys.__stdout__.flush()
    if plane is not None:
        plane.barrier(("faults", "job end announced", item.nodeid))
    # Let the launcher forward the mark before the job is torn down.
    time.sleep(0.5)


def kill_self(after: float = 0.0) -> None:
    """SIGKILL this rank, ``after`` seconds from now (the caller goes on meanwhile when > 0)."""
    if after <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
        return
    subprocess.Popen(["sh", "-c", f"sleep {after}; kill -KILL {os.getpid()}"])


def stall_self(seconds: float) -> None:
    """Stop this rank (SIGSTOP) for ``seconds``; a child process resumes it with SIGCONT."""
    subprocess.Popen(["sh", "-c", f"sleep {seconds}; kill -CONT {os.getpid()}"])
    os.kill(os.getpid(), signal.SIGSTOP)
