"""Spec of every collective and send/recv on several groups: groups as an axis of the suite.

SEMANTICS.md, "Sizes, groups and call sequences"; manifest rule ``groups`` of all_sum, all_max,
all_min, all_gather, sum_scatter and send. Each op runs on the world, on the halves (split by
rank < N/2), on the world split with reversed keys, on odd/even ranks, and on several groups of
the same size used alternately from the same rank (a world in order and reversed; from 3 ranks,
two different pairs), the shapes of ``groups.GROUP_SHAPES``. A backend that caches subgroup
communicators by size, mixes up group ranks and world ranks, or runs a call on the wrong members
gets a wrong result here. Inputs of world rank w are ``data.contribution(w, ...)``, so each rank
knows what its group must return. An op, dtype or split the backend declares unsupported is
checked to raise as the manifest names (``declared``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from conformance.harness.collective import expect_unsupported
from conformance.specs import data, exchanges, reductions
from conformance.specs.calls import settle
from conformance.specs.declared import collective_dtypes, p2p_dtypes
from conformance.specs.groups import GROUP_SHAPES, form_groups, largest_group

pytestmark = [pytest.mark.core, pytest.mark.groups]

COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")
RULE = "groups"
# (dtype, elements per group rank): a small message and one past a 16 KiB eager limit.
CASES = (("int64", 13), ("float32", 5003))
# The alternating shape goes round its groups this many times.
ROUNDS = 2
# Seconds a backend with deadlines gets per call here: small calls, far below the harness's.
GROUP_DEADLINE = 20.0


def _ops() -> list[Any]:
    return [
        pytest.param(op, marks=pytest.mark.spec(op, rule=RULE), id=op)
        for op in (*COLLECTIVES, "send")
    ]


def _cases(dtypes: list[str]) -> list[tuple[str, int]]:
    return [(dtype, count) for dtype, count in CASES if dtype in dtypes]


def _rows(op: str, group_size: int, per_rank: int) -> int:
    return per_rank * group_size if op == "sum_scatter" else per_rank


def collective_on(
    backend: Any, op: str, group: Any, mates: list[int], rank: int, salt: int, dtypes: list[str]
):
    """``op`` on ``group`` (members ``mates``, world ranks in group-rank order) for each case of
    ``CASES`` whose dtype is in ``dtypes``; the findings."""
    me = mates.index(rank)
    problems: list[str | None] = []
    if (group.rank(), group.size()) != (me, len(mates)):
        problems.append(f"group of {mates}: rank/size {group.rank()}/{group.size()}")
    for dtype, per_rank in _cases(dtypes):
        shape = (_rows(op, len(mates), per_rank),)
        blocks = data.contributions(mates, shape, dtype, salt)
        what = f"{op} {dtype} {shape} on the group of world ranks {mates}"
        got = reductions.run(backend, op, blocks[me], group)
        problems.append(reductions.verdict(op, got, blocks, me, what))
    return problems


def ring_on(backend: Any, group: Any, mates: list[int], rank: int, salt: int, dtypes: list[str]):
    """send to group rank + 1, recv from group rank - 1 inside ``group`` for each case of
    ``CASES`` whose dtype is in ``dtypes``; the findings."""
    if len(mates) == 1:
        return []  # a group of one has no peer (its send raising is test_send_recv's)
    me = mates.index(rank)
    src = mates[(me - 1) % len(mates)]
    problems: list[str | None] = []
    for dtype, count in _cases(dtypes):
        mine = data.contribution(rank, (count,), dtype, salt)
        theirs = data.contribution(src, (count,), dtype, salt)
        found = exchanges.ring_exchange(backend, group, mine, theirs, use_recv_like=salt % 2 == 1)
        problems += [f"group of world ranks {mates}: {p}" for p in found if p]
    return problems


@pytest.mark.parametrize("shape", list(GROUP_SHAPES))
@pytest.mark.parametrize("op", _ops())
def test_op_on_group(backend, world, control, capabilities, op, shape):
    """The op on the world, halves, reversed keys, odd/even and alternating same-size groups.

    SEMANTICS.md, Sizes, groups and call sequences: "Every collective, and send/recv, behaves
    the same on any group: the world, halves, a split with reversed keys, odd/even ranks. A rank
    may hold several subgroups, even of the same size, and use them alternately; each call
    involves exactly the members of the group it is given, in that group's rank order."
    """
    rank, size = world.rank(), world.size()
    if shape != "world":
        if size == 1:
            pytest.skip(f"{shape}: a group of one cannot be split (the world is its only group)")
        if expect_unsupported(capabilities, "split", world.split, 0):
            return
    names = [dtype for dtype, _ in CASES]
    if op == "send":
        if size == 1:
            pytest.skip("send needs a peer; the world has one rank")
        if largest_group(shape, size) == 1:
            # Nothing would be checked: a rank alone in its group has no peer to send to.
            pytest.skip(f"every {shape} group of {size} ranks is a single rank: no peer to send to")
        dtypes = p2p_dtypes(backend, capabilities, world, names)
    else:
        dtypes = collective_dtypes(backend, capabilities, op, world, names)
    if not dtypes:
        return  # declared unsupported: it raised as the manifest names
    with bounded(backend, capabilities):
        groups = form_groups(world, shape)
        problems: list[str | None] = []
        rounds = ROUNDS if len(groups) > 1 else 1
        for round_ in range(rounds):
            for i, (group, mates) in enumerate(groups):
                salt = 1000 + 10 * round_ + i
                if op == "send":
                    problems += ring_on(backend, group, mates, rank, salt, dtypes)
                else:
                    problems += collective_on(backend, op, group, mates, rank, salt, dtypes)
    settle(problems, f"{op} on {shape} groups")


@contextmanager
def bounded(backend: Any, capabilities: Any) -> Iterator[None]:
    """A backend with deadlines (``set_timeout``) gets ``GROUP_DEADLINE`` for the test: a call
    on a group whose members do not all take part (a wrong communicator) then raises
    TimeoutError, a failure naming the call, rather than hanging the job."""
    if not capabilities.timeouts:
        yield
        return
    previous = backend.set_timeout(GROUP_DEADLINE)
    try:
        yield
    finally:
        backend.set_timeout(previous)
