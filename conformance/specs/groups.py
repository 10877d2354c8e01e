"""Groups the specs run on besides the world: subgroups by colour scheme, size-1 groups.

Colour schemes are written once for any world size (as in mpi4py's tests): ``rank % k``,
``rank // k``, one colour for all, each rank its own colour. Every helper is collective: every
rank of ``world`` must call it, with the same arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conformance.specs.calls import call

# name -> colour of ``rank`` in a world of ``size``
COLOUR_SCHEMES: dict[str, Callable[[int, int], int]] = {
    "one-colour": lambda rank, size: 0,
    "own-colour": lambda rank, size: rank,
    "rank-mod-2": lambda rank, size: rank % 2,
    "rank-div-2": lambda rank, size: rank // 2,
    "rank-mod-3": lambda rank, size: rank % 3,
}


def members(scheme: str, rank: int, size: int) -> list[int]:
    """The world ranks that share ``rank``'s colour under ``scheme``, in world-rank order."""
    colour = COLOUR_SCHEMES[scheme]
    return [r for r in range(size) if colour(r, size) == colour(rank, size)]


def require_split(capabilities: Any) -> None:
    if not capabilities.split:
        pytest.skip("backend declares Group.split unsupported (tested in test_split.py)")


def singleton_group(world: Any, capabilities: Any) -> Any:
    """A group of size 1: the world itself at one rank, else each rank's own colour."""
    if world.size() == 1:
        return world
    require_split(capabilities)
    return call("world.split(rank)", world.split, world.rank())


def require_size(world: Any, minimum: int) -> None:
    if world.size() < minimum:
        pytest.skip(f"needs a group of at least {minimum} ranks, world has {world.size()}")
