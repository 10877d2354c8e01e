"""Project tests: pytester is declared here, where pytest accepts ``pytest_plugins``; the longer
deadline of ``slow`` tests (end-to-end runs of the runner and of documented commands)."""

from __future__ import annotations

import pytest

# An end-to-end runner test (or a documented command) runs collection plus several small MPI jobs
# (some hang on purpose); on two loaded cores that exceeds the plugin's default per-test deadline
# of this outer session.
SLOW_DEADLINE = 600.0


@pytest.fixture(autouse=True)
def slow_test_deadline(request: pytest.FixtureRequest) -> None:
    """Re-arm the conformance plugin's watchdog with a longer deadline for ``slow`` tests."""
    if request.node.get_closest_marker("slow") is None:
        return
    try:
        from conformance.harness.plugin import HARNESS
    except ImportError:
        return
    harness = request.config.stash.get(HARNESS, None)
    if harness is not None:
        harness.watchdog.arm(request.node.nodeid, max(SLOW_DEADLINE, harness.timeout))


pytest_plugins = ["pytester"]
