"""A job that hangs in its second test (run with ``--backend fake_hanging``, N >= 2)."""

import numpy as np
import pytest

pytestmark = pytest.mark.core


def test_before(world):
    assert world.size() >= 2


def test_hangs_on_rank_1(backend, world):
    backend.all_sum(np.ones(3, dtype=np.float32), group=world)


def test_never_reached(world):
    pass
