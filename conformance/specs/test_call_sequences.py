"""Spec of long call sequences: results must not depend on the calls that came before.

SEMANTICS.md, "Sizes, groups and call sequences"; manifest entry ``[ops.sequences]``. Backends
keep state between calls: sequence numbers and tags (which wrap after 256 or 65536 calls),
buffers and plans cached by shape or size, subgroup communicators, p2p channels. Each test here
makes hundreds of calls with small arrays, every input different (the salt is the call's index)
and every result checked, so a stale or wrapped state gives a wrong value, not a pass.

The default run makes a few thousand calls per rank count; the opt-in ``soak`` tier repeats a
mixed sequence many times and reports the failure and hang rate per rank count.

Collective-safe: every rank makes the same calls in the same order whatever happens (an error is
a finding, not an early exit), and every ``SYNC_EVERY`` steps the ranks agree whether anyone
has seen an error, to stop together. An op or dtype of the sequences the backend declares
unsupported is checked, once per test, to raise as the manifest names (``declared_mix``), and the
sequence goes on without it.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from conformance.harness.collective import expect_unsupported
from conformance.specs import data, exchanges, reductions
from conformance.specs.calls import attempt, call, describe_error, settle
from conformance.specs.declared import collective_dtypes, p2p_dtypes
from conformance.specs.groups import require_size
from conformance.specs.tolerance import mismatch

pytestmark = [pytest.mark.core]

OP = "sequences"
SYNC_EVERY = 64
# Past 256 calls in a row with one shape: an 8-bit sequence number or tag has wrapped.
SAME_SHAPE_CALLS = 300
# (op, shape, dtype) the mixed sequences cycle through; runs of each repeat.
MIX = (
    ("all_sum", (5,), "int32"),
    ("all_gather", (3, 2), "float32"),
    ("all_max", (7,), "int16"),
    ("all_sum", (5,), "float64"),
    ("all_min", (4,), "uint8"),
    ("all_gather", (1,), "int64"),
    ("all_sum", (2, 3), "bfloat16"),
)
RUN_LENGTHS = (1, 3, 1, 50, 2, 200, 1)
SOAK_ROUNDS = int(os.environ.get("CONFORMANCE_SOAK_ROUNDS", 20))
SOAK_WRAP_CALLS = 65536 + 300

Step = Callable[[], "str | None"]
Entry = tuple[str, tuple[int, ...], str]  # (op, shape, dtype)


def run_steps(control: Any, steps: Iterator[Step]) -> tuple[list[str], int]:
    """Run every step on every rank; the findings and how many steps ran.

    A step returns a finding or None; an exception is a finding too. Every ``SYNC_EVERY`` steps
    the ranks agree over the control plane whether any has met an error and, if so, all stop
    there (a failed call may leave the group unusable; going on would only repeat the error).
    """
    problems: list[str] = []
    errored = False
    done = 0
    for index, step in enumerate(steps):
        found, error = attempt(step)
        if error is not None:
            errored = True
            problems.append(f"call {index} raised {describe_error(error)}")
        elif found:
            problems.append(f"call {index}: {found}")
        done += 1
        if done % SYNC_EVERY == 0 and _anyone(control, errored):
            break
    _anyone(control, errored)
    return problems, done


def _anyone(control: Any, flag: bool) -> bool:
    return any(control.allgather(control.next_label("sequence-errors"), flag))


def _run(backend: Any, op: str, x: np.ndarray, group: Any) -> np.ndarray:
    out = getattr(backend, op)(backend.asarray(x), group=group)
    backend.evaluate(out)
    return backend.to_numpy(out)


def collective_step(backend: Any, op: str, group: Any, mates: list[int], shape, dtype, salt):
    """One call of ``op`` on ``group``, whose members are ``mates`` (world ranks in group-rank
    order; this rank is ``mates[me]``, ``me`` fixed when the step is made)."""
    me = group.rank()

    def step() -> str | None:
        blocks = data.contributions(mates, shape, dtype, salt)
        got = _run(backend, op, blocks[me], group)
        return reductions.verdict(op, got, blocks, me, f"{op} {dtype} {shape} salt {salt}")

    return step


def mixed(
    backend: Any, group: Any, mates: list[int], salt0: int, calls: int, mix: Sequence[Entry]
) -> Iterator[Step]:
    """``calls`` collective steps cycling through ``mix`` in runs of ``RUN_LENGTHS``."""
    runs = itertools.cycle(zip(itertools.cycle(mix), RUN_LENGTHS, strict=False))
    made = 0
    for (op, shape, dtype), length in runs:
        for _ in range(length):
            if made == calls:
                return
            yield collective_step(backend, op, group, mates, shape, dtype, salt0 + made)
            made += 1


def declared_mix(
    backend: Any,
    world: Any,
    capabilities: Any,
    entries: Sequence[Entry] = MIX,
    collective: str | None = None,
    p2p: bool = False,
) -> list[Entry]:
    """The entries a sequence may use: those whose collective (``collective``, else the entry's
    own op; "" for none) and, with ``p2p``, send/recv/recv_like, the backend declares supported
    on the entry's dtype. Each of the others is checked, once, to raise as the manifest names
    (``declared``): nothing declared unsupported is dropped silently."""
    kept = []
    for entry in entries:
        op, _, dtype = entry
        op = op if collective is None else collective
        if op and not collective_dtypes(backend, capabilities, op, world, [dtype]):
            continue
        if p2p and not p2p_dtypes(backend, capabilities, world, [dtype]):
            continue
        kept.append(entry)
    return kept


@pytest.mark.sequences
@pytest.mark.spec(OP, rule="repeated")
def test_same_shape_hundreds_of_times(backend, world, control, capabilities):
    """300 all_sum calls in a row with one shape and dtype, then a mixed sequence of 200 calls
    whose runs repeat (runs of 1 to 200 calls of one op, shape and dtype).

    SEMANTICS.md, Sizes, groups and call sequences: "Results do not depend on earlier calls:
    thousands of calls in a row on one group, the same shape hundreds of times in a row or
    shapes and dtypes changing, ... each give the result the rules above say."
    """
    mix = declared_mix(backend, world, capabilities)
    if not mix:
        return  # every entry declared unsupported: each raised as the manifest names
    mates = list(range(world.size()))
    op, shape, dtype = mix[0]  # all_sum of int32, unless declared unsupported
    same = (
        collective_step(backend, op, world, mates, shape, dtype, salt)
        for salt in range(SAME_SHAPE_CALLS)
    )
    steps = itertools.chain(same, mixed(backend, world, mates, SAME_SHAPE_CALLS, 200, mix))
    problems, _ = run_steps(control, steps)
    settle(problems, "calls in a row on the world")


def _p2p_step(backend: Any, group: Any, mates: list[int], shape, dtype, salt) -> Step:
    """A ring exchange inside ``group``: send to group rank + 1, receive from group rank - 1."""

    me = group.rank()

    def step() -> str | None:
        rank = mates[me]
        src = mates[(me - 1) % len(mates)]
        mine = data.contribution(rank, shape, dtype, salt)
        theirs = data.contribution(src, shape, dtype, salt)
        found = exchanges.ring_exchange(backend, group, mine, theirs, use_recv_like=salt % 2 == 0)
        found = [f for f in found if f]
        return "; ".join(found) if found else None

    return step


def interleaved(
    backend: Any, world: Any, calls: int, salt0: int, mix: Sequence[Entry]
) -> Iterator[Step]:
    """World collectives, odd/even subgroup collectives, a reversed world and p2p rings, in
    turn, cycling through ``mix`` (the subgroups are made first, collectively)."""
    rank, size = world.rank(), world.size()
    parity = call("world.split(rank % 2)", world.split, rank % 2)
    parity_mates = [r for r in range(size) if r % 2 == rank % 2]
    reverse = call("world.split(0, reversed)", world.split, 0, size - 1 - rank)
    reverse_mates = list(range(size))[::-1]
    targets = itertools.cycle(
        [
            ("world", world, list(range(size))),
            ("odd/even", parity, parity_mates),
            ("p2p", world, list(range(size))),
            ("reversed", reverse, reverse_mates),
            ("p2p", reverse, reverse_mates),
        ]
    )
    shapes = itertools.cycle(mix)
    for index, (kind, group, mates) in zip(range(calls), targets, strict=False):
        op, shape, dtype = next(shapes)
        if kind == "p2p":
            yield _p2p_step(backend, group, mates, shape, dtype, salt0 + index)
        else:
            yield collective_step(backend, op, group, mates, shape, dtype, salt0 + index)


def _can_split(world: Any, capabilities: Any) -> bool:
    """Whether the interleaved sequences can run; a split declared unsupported must raise."""
    require_size(world, 2)
    return not expect_unsupported(capabilities, "split", world.split, 0)


@pytest.mark.sequences
@pytest.mark.spec(OP, rule="interleaved")
def test_interleaved_groups_and_p2p(backend, world, control, capabilities):
    """200 calls alternating world collectives, odd/even subgroup collectives, the world split
    with reversed keys, and send/recv rings on the world and on the reversed group.

    SEMANTICS.md, Sizes, groups and call sequences: "Results do not depend on earlier calls:
    ... interleaved with calls on other groups and with send/recv, each give the result the
    rules above say."
    """
    if not _can_split(world, capabilities):
        return
    mix = declared_mix(backend, world, capabilities, p2p=True)
    if not mix:
        return  # every entry declared unsupported: each raised as the manifest names
    problems, _ = run_steps(control, interleaved(backend, world, 200, 0, mix))
    settle(problems, "interleaved groups and p2p")


def _pipeline_step(backend: Any, world: Any, shape, dtype, salt) -> Step:
    """Rank 0's array passed down the chain 0 -> 1 -> ... -> N-1 (recv_like, then send on),
    then all_gather of what every rank holds: N copies of rank 0's array."""

    def step() -> str | None:
        rank, size = world.rank(), world.size()
        x = data.contribution(0, shape, dtype, salt)
        held = x if rank == 0 else exchanges.recv_like(backend, np.zeros_like(x), rank - 1, world)
        problems = [] if rank == 0 else [mismatch(held, x, None, f"received from {rank - 1}")]
        if rank + 1 < size:
            exchanges.send(backend, held, rank + 1, world)
        gathered = _run(backend, "all_gather", held, world)
        problems.append(mismatch(gathered, data.expected_gather([x] * size), None, "gathered"))
        found = [p for p in problems if p]
        return f"pipeline {dtype} {shape}: " + "; ".join(found) if found else None

    return step


@pytest.mark.sequences
@pytest.mark.spec(OP, rule="pipeline")
def test_pipeline_recv_send_gather(backend, world, control, capabilities):
    """60 rounds of recv_like -> send on -> all_gather down the chain of ranks, shapes and
    dtypes changing every round.

    SEMANTICS.md, Sizes, groups and call sequences: "A rank may receive (`recv_like`), send what
    it received on, then join a collective ... and each message arrives intact."
    """
    require_size(world, 2)
    mix = declared_mix(backend, world, capabilities, collective="all_gather", p2p=True)
    if not mix:
        return  # every entry declared unsupported: each raised as the manifest names
    shapes = itertools.cycle(mix)
    steps = (_pipeline_step(backend, world, *next(shapes)[1:], salt) for salt in range(60))
    problems, _ = run_steps(control, steps)
    settle(problems, "pipeline")


def _fan_step(backend: Any, world: Any, capabilities: Any, shape, dtype, salt) -> Step:
    """Rank 0 sends each other rank its own message in turn; then each sends one back."""

    def step() -> str | None:
        rank, size = world.rank(), world.size()
        peers = [r for r in range(1, size) if capabilities.p2p_allowed(0, r, size)]
        problems: list[str | None] = []
        for r in peers:
            out = data.contribution(r, shape, dtype, salt)  # the message meant for rank r
            if rank == 0:
                exchanges.send(backend, out, r, world)
            elif rank == r:
                got = exchanges.recv(backend, shape, dtype, 0, world)
                problems.append(mismatch(got, out, None, f"rank {r} from rank 0"))
        for r in peers:
            back = data.contribution(r, shape, dtype, salt + 1)
            if rank == r:
                exchanges.send(backend, back, 0, world)
            elif rank == 0:
                got = exchanges.recv_like(backend, np.zeros_like(back), r, world)
                problems.append(mismatch(got, back, None, f"rank 0 from rank {r}"))
        found = [p for p in problems if p]
        return f"fan-out {dtype} {shape}: " + "; ".join(found) if found else None

    return step


@pytest.mark.sequences
@pytest.mark.spec(OP, rule="one-to-many")
def test_one_to_many_sends(backend, world, control, capabilities):
    """60 rounds of rank 0 sending every other rank its own message, then each answering.

    SEMANTICS.md, Sizes, groups and call sequences: "one rank may send to every other rank in
    turn, and each message arrives intact."
    """
    require_size(world, 2)
    entries = [*MIX, ("", (4096,), "float32"), ("", (5000,), "int64")]
    mix = declared_mix(backend, world, capabilities, entries, collective="", p2p=True)
    if not mix:
        return  # every entry declared unsupported: each raised as the manifest names
    shapes = itertools.cycle(mix)
    steps = (
        _fan_step(backend, world, capabilities, *next(shapes)[1:], 2 * salt) for salt in range(60)
    )
    problems, _ = run_steps(control, steps)
    settle(problems, "one-to-many")


# -- soak --------------------------------------------------------------------------------------
def soak_summary(size: int, rounds: int, ran: int, wrong: int, errors: int, hangs: int) -> str:
    """The line reports show: failure and hang rate of the soak at this rank count."""
    rate = (wrong + errors + hangs) / max(ran, 1)
    return (
        f"soak np={size}: {ran} of {rounds} rounds ran, {wrong} gave wrong results, "
        f"{errors} raised, {hangs} timed out (hang rate {hangs / max(ran, 1):.1%}, "
        f"failure rate {rate:.1%})"
    )


@pytest.mark.soak
@pytest.mark.spec(OP, rule="repeated")
def test_soak_wrapped_sequence_numbers(backend, world, control, capabilities):
    """65836 all_sum calls in a row on the world with one small shape: past a 16-bit wrap.

    SEMANTICS.md, Sizes, groups and call sequences: "Results do not depend on earlier calls:
    thousands of calls in a row on one group, the same shape hundreds of times in a row".
    Opt-in: ``CONFORMANCE_TIERS=soak`` (minutes; raise ``--timeout``).
    """
    if not collective_dtypes(backend, capabilities, "all_sum", world, ["int32"]):
        return  # declared unsupported: it raised as the manifest names
    mates = list(range(world.size()))
    steps = (
        collective_step(backend, "all_sum", world, mates, (2,), "int32", salt)
        for salt in range(SOAK_WRAP_CALLS)
    )
    problems, _ = run_steps(control, steps)
    settle(problems, f"{SOAK_WRAP_CALLS} calls in a row")


@pytest.mark.soak
@pytest.mark.spec(OP, rule="interleaved")
def test_soak_failure_and_hang_rate(backend, world, control, capabilities, request):
    """``CONFORMANCE_SOAK_ROUNDS`` (default 20) rounds of 1000 interleaved calls: collectives on
    the world, on odd/even ranks and on the reversed world, and p2p rings. Reports how many
    rounds gave wrong results, raised or timed out (the hang rate, when the backend has
    ``set_timeout``), in the failure message and the report's ``soak_summary`` user property.

    SEMANTICS.md, Sizes, groups and call sequences: "Results do not depend on earlier calls".
    Opt-in: ``CONFORMANCE_TIERS=soak``.
    """
    if not _can_split(world, capabilities):
        return
    mix = declared_mix(backend, world, capabilities, p2p=True)
    if not mix:
        return  # every entry declared unsupported: each raised as the manifest names
    previous = backend.set_timeout(10.0) if capabilities.timeouts else None
    wrong = errors = hangs = ran = 0
    first: list[str] = []
    started = time.monotonic()
    try:
        for round_ in range(SOAK_ROUNDS):
            steps = interleaved(backend, world, 1000, 1000 * round_, mix)
            problems, _ = run_steps(control, steps)
            ran += 1
            kinds = _agree_kinds(control, problems)
            wrong, errors, hangs = wrong + kinds[0], errors + kinds[1], hangs + kinds[2]
            first += problems[:1]
            if kinds[1] or kinds[2]:
                break  # a group that raised may be unusable: stop counting
    finally:
        if previous is not None:
            backend.set_timeout(previous)
    summary = soak_summary(world.size(), SOAK_ROUNDS, ran, wrong, errors, hangs)
    summary += f", {time.monotonic() - started:.0f} s"
    # A user property: JUnit XML and anything reading the test report can show it.
    request.node.user_properties.append(("soak_summary", summary))
    settle([f"{summary}; first: {first[0]}" if first else None], "soak")


def _agree_kinds(control: Any, problems: list[str]) -> tuple[int, int, int]:
    """(wrong result, raised, timed out) for the round, 0 or 1 each, agreed over every rank."""
    mine = (
        any("raised" not in p for p in problems),
        any("raised" in p and "TimeoutError" not in p for p in problems),
        any("TimeoutError" in p for p in problems),
    )
    everyone = control.allgather(control.next_label("soak-round"), mine)
    return tuple(int(any(flags[i] for flags in everyone)) for i in range(3))  # type: ignore[return-value]
