"""Spec of ``Group``: not constructible; ``rank()`` and ``size()`` of the world group.

SEMANTICS.md, "Signatures"; manifest entries ``[ops.Group]``, ``[ops."Group.rank"]``,
``[ops."Group.size"]``. Splitting is in test_split.py.
"""

from __future__ import annotations

import pytest

from conformance.harness.collective import collective_raises
from conformance.specs.calls import settle

pytestmark = pytest.mark.core


@pytest.mark.spec("Group", rule="not-constructible")
def test_group_cannot_be_constructed(backend, world):
    """Users cannot make a Group directly: TypeError, with or without arguments.

    SEMANTICS.md, Signatures: "`Group()` cannot be constructed by users (TypeError)."
    """
    collective_raises(TypeError, backend.Group)
    collective_raises(TypeError, type(world))


@pytest.mark.spec("Group.rank", rule="in-range-distinct")
def test_rank_in_range_and_distinct(world, control):
    """Each process has an int rank in [0, size), and no two processes share one.

    SEMANTICS.md, Signatures: "Group.rank() -> int".
    """
    rank, size = world.rank(), world.size()
    ranks = control.allgather(control.next_label("ranks"), rank)
    problems = [
        None if isinstance(rank, int) else f"rank() is {type(rank).__name__}",
        None if 0 <= rank < size else f"rank {rank} outside [0, {size})",
        None if len(set(ranks)) == len(ranks) else f"ranks repeat across processes: {ranks}",
    ]
    settle(problems)


@pytest.mark.spec("Group.size", rule="agreed")
def test_size_agreed(world, control):
    """Every process reports the same int size, equal to the number of processes.

    SEMANTICS.md, Signatures: "Group.size() -> int".
    """
    size = world.size()
    sizes = control.allgather(control.next_label("sizes"), size)
    problems = [
        None if isinstance(size, int) else f"size() is {type(size).__name__}",
        None if len(set(sizes)) == 1 else f"sizes differ across processes: {sizes}",
        None if size == len(sizes) else f"size {size} but {len(sizes)} processes",
    ]
    settle(problems)
