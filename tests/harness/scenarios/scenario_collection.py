"""Ranks that collect different tests cannot run in step (run with N >= 2)."""

import pytest
from mpi4py import MPI

pytestmark = pytest.mark.core

if MPI.COMM_WORLD.Get_rank() == 1:

    def test_only_on_rank_1():
        pass


def test_everywhere():
    pass
