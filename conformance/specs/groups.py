"""Groups the specs run on besides the world: subgroups by colour scheme, size-1 groups.

Colour schemes are written once for any world size (as in mpi4py's tests): ``rank % k``,
``rank // k``, one colour for all, each rank its own colour. Every helper is collective: every
rank of ``world`` must call it, with the same arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


# -- groups as an axis: the shapes every collective runs on (test_group_axis.py) -----------------
@dataclass(frozen=True)
class Split:
    """One ``world.split(colour(rank, size), key(rank, size))``."""

    colour: Callable[[int, int], int]
    key: Callable[[int, int], int]

    def members(self, rank: int, size: int) -> list[int]:
        """World ranks of ``rank``'s subgroup in new-rank order: by key (a negative key is the
        rank itself), ties by world rank."""
        mine = self.colour(rank, size)
        same = [r for r in range(size) if self.colour(r, size) == mine]
        return sorted(same, key=lambda r: (_effective_key(self.key(r, size), r), r))


def _effective_key(key: int, rank: int) -> int:
    return key if key >= 0 else rank


_OWN_RANK = -1
_IN_ORDER = Split(lambda r, n: 0, lambda r, n: r)
_REVERSED = Split(lambda r, n: 0, lambda r, n: n - 1 - r)
_PAIRS = Split(lambda r, n: r // 2, lambda r, n: _OWN_RANK)
# The pairs shifted by one: with 3 or more ranks some rank is in a pair of _PAIRS and a different
# pair here, two subgroups of the same size.
_SHIFTED_PAIRS = Split(lambda r, n: ((r - 1) % n) // 2, lambda r, n: _OWN_RANK)

# name -> the splits whose groups a test uses in turn (empty: the world itself)
GROUP_SHAPES: dict[str, tuple[Split, ...]] = {
    "world": (),
    "halves": (Split(lambda r, n: int(r >= n / 2), lambda r, n: _OWN_RANK),),
    "reversed-keys": (_REVERSED,),
    "odd-even": (Split(lambda r, n: r % 2, lambda r, n: _OWN_RANK),),
    # Two groups of the same size used alternately from the same rank: the world in order and
    # reversed (same members, other order), and from 3 ranks on two different pairs.
    "alternating": (_IN_ORDER, _REVERSED, _PAIRS, _SHIFTED_PAIRS),
}


def form_groups(world: Any, shape: str) -> list[tuple[Any, list[int]]]:
    """The groups of ``shape`` for this rank, each with its members' world ranks in group-rank
    order. Collective over ``world`` (every rank calls it with the same ``shape``); the caller
    has checked that ``world`` can split (more than one rank, split supported)."""
    rank, size = world.rank(), world.size()
    splits = _splits(shape, size)
    if not splits:
        return [(world, list(range(size)))]
    formed = []
    for split in splits:
        colour, key = split.colour(rank, size), split.key(rank, size)
        group = call(f"world.split({colour}, {key}) for {shape}", world.split, colour, key)
        formed.append((group, split.members(rank, size)))
    return formed


def _splits(shape: str, size: int) -> tuple[Split, ...]:
    splits = GROUP_SHAPES[shape]
    if shape == "alternating" and size < 3:
        return splits[:2]  # at 2 ranks every pair is the world
    return splits


def largest_group(shape: str, size: int) -> int:
    """The size of the largest group of ``shape`` in a world of ``size`` (the same on every rank,
    so a test can decide on it without a collective): 1 means every group is a single rank, and a
    point-to-point test on that shape would move no message."""
    splits = _splits(shape, size)
    if not splits:
        return size
    return max(len(split.members(rank, size)) for split in splits for rank in range(size))
