"""Injecting faults into one rank of a running spec test (runs inside every rank).

``kill_self`` ends this rank with SIGKILL; ``stall_self`` stops it with SIGSTOP and has a helper
process resume it later. The survivors of a kill are observed by ``conformance.harness.survivors``.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest


def victim(size: int) -> int:
    """The rank a fault test breaks: the last one (rank 0 writes the records and must live)."""
    return size - 1


def require_faults(config: pytest.Config, capabilities: object) -> None:
    """Skip unless the backend declares timeouts or the run asked for the faults tier (-m)."""
    asked = "faults" in str(config.getoption("markexpr", "") or "")
    if not getattr(capabilities, "timeouts", False) and not asked:
        pytest.skip("backend declares no timeouts; fault tests are opt-in (-m faults)")


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
