"""Spec of ``Group.split(color, key=-1)``: subgroups by colour, ordered by key.

SEMANTICS.md, "Group.split" and "Size-1 groups"; manifest entry ``[ops."Group.split"]``. A
backend may declare split unsupported (MLX ring, jaccl); then only
``test_unsupported_split_raises`` applies and the others skip, saying so.

Membership is checked through the data plane too: the subgroup all_gathers its members' world
ranks, so a subgroup that talks to the wrong processes shows even if rank() and size() look right.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.harness.collective import collective_raises, raises_as_declared
from conformance.specs import data, exchanges, reductions
from conformance.specs.calls import attempt, call, describe_error, settle
from conformance.specs.groups import (
    COLOUR_SCHEMES,
    members,
    require_size,
    require_split,
    singleton_group,
)
from conformance.specs.tolerance import mismatch

OP = "Group.split"


def _ordered(world_size: int, colour_of, key_of, rank: int) -> list[int]:
    """World ranks of ``rank``'s subgroup, in new-rank order: by key (negative: own rank), then
    by old rank."""
    mine = colour_of(rank)
    same = [r for r in range(world_size) if colour_of(r) == mine]
    return sorted(same, key=lambda r: (key_of(r) if key_of(r) >= 0 else r, r))


def _membership_findings(backend, sub, expected: list[int], world_rank: int, what: str):
    """rank(), size() and an all_gather of world ranks on ``sub`` against ``expected``."""
    problems: list[str | None] = []
    if sub.size() != len(expected):
        problems.append(f"{what}: size {sub.size()}, expected {len(expected)}")
    elif sub.rank() != expected.index(world_rank):
        problems.append(f"{what}: rank {sub.rank()}, expected {expected.index(world_rank)}")
    gathered = reductions.run(backend, "all_gather", np.array([world_rank], np.int32), sub)
    want = np.array(expected, np.int32)
    problems.append(mismatch(gathered, want, None, f"{what}: world ranks gathered"))
    return problems


@pytest.mark.core
@pytest.mark.spec(OP, rule="colors")
@pytest.mark.parametrize("scheme", list(COLOUR_SCHEMES))
def test_same_colour_same_subgroup(backend, world, capabilities, scheme):
    """Processes passing the same colour form one subgroup, in old-rank order by default.

    SEMANTICS.md, Group.split: "Processes with the same `color` form a subgroup"; "new ranks
    are ordered by `key`, ties by old rank". Colours rank % k, rank // k, one colour, own colour.
    """
    require_size(world, 2)
    require_split(capabilities)
    rank, size = world.rank(), world.size()
    colour = COLOUR_SCHEMES[scheme](rank, size)
    sub = call(f"split({colour})", world.split, colour)
    settle(_membership_findings(backend, sub, members(scheme, rank, size), rank, scheme))


@pytest.mark.core
@pytest.mark.spec(OP, rule="key-order")
@pytest.mark.parametrize("keys", ["reversed", "tied", "negative", "mixed", "negative-last"])
def test_key_orders_new_ranks(backend, world, capabilities, keys):
    """New ranks follow the key, ties broken by old rank; a negative key means the old rank.

    SEMANTICS.md, Group.split: "new ranks are ordered by `key`, ties by old rank; a negative key
    means "use my current rank"."
    """
    require_size(world, 2)
    require_split(capabilities)
    rank, size = world.rank(), world.size()
    key_of = {
        "reversed": lambda r: size - 1 - r,
        "tied": lambda r: (size - r) // 2,  # pairs share a key, in reverse order of pairs
        "negative": lambda r: -1,
        "mixed": lambda r: -1 if r % 2 else size - r,
        # The last rank's -1 means key size-1 (after everyone else), not "first".
        "negative-last": lambda r: -1 if r == size - 1 else r + 1,
    }[keys]
    colour_of = lambda r: r % 2 if size > 3 else 0  # noqa: E731
    sub = call("split", world.split, colour_of(rank), key_of(rank))
    expected = _ordered(size, colour_of, key_of, rank)
    settle(_membership_findings(backend, sub, expected, rank, f"{keys} keys"))


@pytest.mark.core
@pytest.mark.spec(OP, rule="nested")
def test_split_of_split(backend, world, capabilities):
    """A subgroup splits again, by subgroup ranks, and the result talks to the right processes.

    SEMANTICS.md, Group.split: "Split of a split works".
    """
    require_size(world, 2)
    require_split(capabilities)
    rank, size = world.rank(), world.size()
    # First reverse the whole world, then split that by parity of the reversed rank.
    sub = call("split(0, reversed)", world.split, 0, size - 1 - rank)
    reversed_ranks = list(range(size))[::-1]
    colour = sub.rank() % 2
    subsub = call("split of split", sub.split, colour)
    expected = [w for i, w in enumerate(reversed_ranks) if i % 2 == colour]
    settle(_membership_findings(backend, subsub, expected, rank, "split of split"))


@pytest.mark.core
@pytest.mark.spec(OP, rule="subgroup-collectives")
@pytest.mark.parametrize("scheme", ["rank-mod-2", "rank-div-2", "own-colour"])
def test_collectives_on_subgroups(backend, world, capabilities, scheme):
    """all_sum, all_max, all_gather on a subgroup combine its members' inputs only.

    SEMANTICS.md, Group.split: "collectives and p2p on a subgroup use subgroup ranks and involve
    only its members."
    """
    require_size(world, 2)
    require_split(capabilities)
    rank, size = world.rank(), world.size()
    sub = call("split", world.split, COLOUR_SCHEMES[scheme](rank, size))
    mates = members(scheme, rank, size)
    problems: list[str | None] = []
    for op in ("all_sum", "all_max", "all_gather"):
        blocks = [data.contribution(w, (3, 2), "int32", salt=7) for w in mates]
        got = reductions.run(backend, op, blocks[mates.index(rank)], sub)
        want = reductions.expected(op, blocks, sub.rank())
        problems.append(mismatch(got, want, None, f"{op} on {scheme} subgroup"))
    settle(problems)


@pytest.mark.core
@pytest.mark.spec(OP, rule="subgroup-p2p")
def test_point_to_point_on_subgroups(backend, world, capabilities):
    """send/recv on a subgroup address subgroup ranks: a ring in subgroup-rank order.

    SEMANTICS.md, Group.split: "collectives and p2p on a subgroup use subgroup ranks and involve
    only its members." With 4 or more ranks, a ring inside each parity subgroup; with fewer, a
    ring in the whole world reversed by key (subgroup rank r is world rank N-1-r).
    """
    require_size(world, 2)
    require_split(capabilities)
    rank, size = world.rank(), world.size()
    if size >= 4:
        sub = call("split(rank % 2)", world.split, rank % 2)
        mates = members("rank-mod-2", rank, size)
    else:
        sub = call("split(0, reversed)", world.split, 0, size - 1 - rank)
        mates = list(range(size))[::-1]
    me = mates.index(rank)
    src_world = mates[(me - 1) % len(mates)]
    mine = data.contribution(rank, (5,), "float32", salt=3)
    theirs = data.contribution(src_world, (5,), "float32", salt=3)
    settle(exchanges.ring_exchange(backend, sub, mine, theirs))


@pytest.mark.core
@pytest.mark.spec(OP, rule="concurrent")
def test_subgroups_operate_concurrently(backend, world, capabilities):
    """Disjoint subgroups run different collectives at the same time without mixing them up.

    SEMANTICS.md, Group.split: "collectives and p2p on a subgroup use subgroup ranks and involve
    only its members." Even ranks all_sum float32 (7,) while odd ranks all_gather int64 (2, 3),
    for several rounds.
    """
    require_size(world, 2)
    require_split(capabilities)
    rank, size = world.rank(), world.size()
    sub = call("split(rank % 2)", world.split, rank % 2)
    mates = members("rank-mod-2", rank, size)
    op, shape, dtype = (
        ("all_sum", (7,), "float32") if rank % 2 == 0 else ("all_gather", (2, 3), "int64")
    )
    problems: list[str | None] = []
    for round_ in range(10):
        blocks = [data.contribution(w, shape, dtype, salt=round_) for w in mates]
        # Failures are collected rather than raised: the other subgroup must not be left waiting.
        got, error = attempt(reductions._runner(backend, op, blocks[mates.index(rank)], sub))
        if error:
            problems.append(f"{op} round {round_} raised {describe_error(error)}")
            continue
        problems.append(reductions.verdict(op, got, blocks, sub.rank(), f"{op} round {round_}"))
    settle(problems)


@pytest.mark.core
@pytest.mark.spec(OP, rule="singleton-raises")
def test_split_of_size_one_group_raises(backend, world, capabilities):
    """Splitting a group of one process is a RuntimeError.

    SEMANTICS.md, Size-1 groups: "`split` raises RuntimeError `Cannot split the distributed group
    further.`"
    """
    group = singleton_group(world, capabilities)
    collective_raises(RuntimeError, group.split, 0, match="Cannot split the distributed group")


@pytest.mark.core
@pytest.mark.spec(OP, rule="unsupported-raises")
def test_unsupported_split_raises(world, capabilities):
    """A backend without split raises RuntimeError on every rank instead of hanging.

    SEMANTICS.md, Group.split: "MLX's ring and jaccl backends do not support split (RuntimeError
    `[ring] Group split not supported.`)".
    """
    if capabilities.split:
        pytest.skip("backend declares split supported (the other split specs check it)")
    require_size(world, 2)
    raises_as_declared("Group.split", lambda: world.split(world.rank() % 2))


@pytest.mark.impl_defined
@pytest.mark.spec(OP, rule="negative-color")
def test_negative_colour_consistent(backend, world, capabilities, control):
    """A negative colour on every rank: every rank raises, or every rank gets a working group.

    SEMANTICS.md, Group.split: "impl-defined: negative colors (MLX mpi aborts the job; the
    reference raises ValueError on every rank)." Bound checked: the same outcome on every rank.
    """
    require_size(world, 2)
    require_split(capabilities)
    sub, error = attempt(world.split, -1)
    outcome = type(error).__name__ if error else "group"
    outcomes = control.allgather(control.next_label("negative-colour"), outcome)
    problems: list[str | None] = []
    if len(set(outcomes)) != 1:
        problems.append(f"ranks disagree: {outcomes}")
    elif outcomes[0] == "group":
        # Every rank passed the same colour, so the group is the whole world again.
        x = data.contribution(world.rank(), (3,), "int32")
        got = reductions.run(backend, "all_sum", x, sub)
        blocks = [data.contribution(r, (3,), "int32") for r in range(world.size())]
        problems.append(mismatch(got, data.expected_sum(blocks), None, "all_sum on split(-1)"))
    settle(problems)
