"""conformance.bench.machine.Footprint: each side is charged the memory it adds, not the other's."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conformance.bench.machine import Footprint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

MIB = 2**20


def test_each_side_is_charged_its_own_resident_memory():
    """A side that keeps 64 MiB peaks 64 MiB above the base; a side that only allocates and
    frees 32 MiB per run peaks about 32 MiB above it, however often it runs after the first."""
    footprint = Footprint()
    kept = []

    def keep():
        kept.append(np.ones(64 * MIB, np.uint8))

    def churn():
        scratch = np.ones(32 * MIB, np.uint8)
        del scratch

    footprint.run("keeper", keep)
    for _ in range(3):
        footprint.run("churner", churn)
        footprint.run("keeper", lambda: None)
    keeper = footprint.peak("keeper") - footprint.base
    churner = footprint.peak("churner") - footprint.base
    assert 60 * MIB <= keeper <= 72 * MIB
    assert 28 * MIB <= churner <= 40 * MIB
    assert footprint.peak("never ran") is None
