"""Fixtures for the tests of the reference transport.

The tests run in one process and under ``mpiexec -n N python -m pytest --with-mpi tests/reference``.
Cross-rank checks go over ``comm``, a duplicate of COMM_WORLD owned by these tests, never over the
reference's own groups: a broken reference must not be able to fake agreement.
"""

from __future__ import annotations

import pytest
from mpi4py import MPI

import reference

# Short enough that a fault in the reference raises TimeoutError well inside the harness watchdog,
# long enough for four ranks sharing two loaded cores.
TEST_TIMEOUT = 20.0


@pytest.fixture(scope="session")
def comm():
    """The tests' own bookkeeping communicator (a duplicate of COMM_WORLD)."""
    dup = MPI.COMM_WORLD.Dup()
    yield dup
    dup.Free()


@pytest.fixture(autouse=True)
def short_deadline():
    """Every test runs with a short reference deadline, restored afterwards."""
    previous = reference.set_timeout(TEST_TIMEOUT)
    yield TEST_TIMEOUT
    reference.set_timeout(previous)


@pytest.fixture(scope="session")
def world():
    """The reference's global group (a singleton in a one-process run)."""
    return reference.init()
