"""Rank 1 never finishes importing this module: the job hangs in collection (N >= 2)."""

import time

import pytest
from mpi4py import MPI

pytestmark = pytest.mark.core

if MPI.COMM_WORLD.Get_rank() == 1:
    while True:  # the hang under test
        time.sleep(0.05)


def test_never_runs():
    pass
