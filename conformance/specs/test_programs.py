"""Random call programs, in lockstep over the ranks: a Hypothesis state machine.

SEMANTICS.md, "Sizes, groups and call sequences" and "Inputs: layouts and ownership". Each
program is a sequence of steps drawn by Hypothesis (every rank draws the same, derandomized, and
each step is compared across ranks before it runs): collectives (any op, any of the 14 dtypes,
1-d, 2-d or 0-d, from one element to past 4 MiB per rank) on the world or on split groups (halves,
odd/even, random colours; reversed, equal or random keys; splits of splits, so a rank holds
several subgroups of one size), and send/recv rings and pipelines on them, received with ``recv``
or ``recv_like``. Every result and input is kept and re-checked after each later step and at the
end; every step is checked against numpy at once (``sizes.check_result``: bit for bit except the
tolerance of float sums). Inputs are ``programs.program_input``'s.

A failing program shrinks to a minimal one; the failure then carries it as a standalone script
(``programs.script``) that replays it with plain API calls under ``mpiexec``, without the suite.
The default run draws a few short programs per rank count; the ``soak`` tier many longer ones.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from conformance.harness.collective import collective_assert
from conformance.specs import data, ownership, programs, sizes
from conformance.specs.calls import attempt, call, call_everywhere, describe_error, local, settle
from conformance.specs.declared import collective_dtypes
from conformance.specs.test_call_sequences import collective_step, run_steps

pytestmark = pytest.mark.core

KI, MI = sizes.KI, sizes.MI
COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")
# Bytes per rank a step's input is near (then an odd number of elements past it): small and
# odd, and just past 64 KiB, 1 MiB and 4 MiB, where transports change paths.
BYTES = (1, 3, 7, 61, 1021, 64 * KI, MI, 4 * MI)
FAMILIES_MOST = 6  # groups (the world and split families) a program may hold at once

DEFAULT = settings(
    max_examples=int(os.environ.get("CONFORMANCE_PROGRAMS", "4")), stateful_step_count=8
)
SOAK = settings(max_examples=60, stateful_step_count=25)


class _Family:
    """A split of a parent family: this rank's group, and every subgroup's members (world ranks
    in group order)."""

    def __init__(self, name: str, group: Any, subgroups: list[list[int]]) -> None:
        self.name, self.group, self.subgroups = name, group, subgroups

    def mine(self, world_rank: int) -> list[int]:
        return next(s for s in self.subgroups if world_rank in s)

    def lcm(self) -> int:
        return math.lcm(*(len(s) for s in self.subgroups))


def _split_members(parent: list[int], colours: list[int], keys: list[int]) -> list[list[int]]:
    """The subgroups ``parent.split(colours[i], keys[i])`` forms (i: the group rank): ordered by
    key, ties by the parent rank, as SEMANTICS.md's Group.split says."""
    found: dict[int, list[int]] = {}
    for i, w in enumerate(parent):
        found.setdefault(colours[i], []).append(w)
    return [
        sorted(ws, key=lambda w: (keys[parent.index(w)], parent.index(w)))
        for _, ws in sorted(found.items())
    ]


def _shape(kind: str, count: int, rows_multiple: int) -> tuple[int, ...]:
    if kind == "0-d":
        return ()
    if kind == "2-d":
        rows = max(1, count // 2)
        return (rows_multiple * max(1, rows // rows_multiple), 2)
    return (rows_multiple * max(1, count // rows_multiple),)


def machine(backend: Any, world: Any, control: Any, capabilities: Any) -> type:
    """The state machine class for this backend and world (a class per test: Hypothesis runs
    it as a test)."""
    size, rank = world.size(), world.rank()

    class Programs(RuleBasedStateMachine):
        steps: ClassVar[list[dict[str, Any]]] = []

        def __init__(self) -> None:
            super().__init__()
            self.families = [_Family("world", world, [list(range(size))])]
            self.held = ownership.Holdings()
            Programs.steps = self.steps = []

        # -- lockstep ------------------------------------------------------------------------
        def _agree(self, step: dict[str, Any]) -> str:
            """Record ``step`` and check every rank drew it (collectively)."""
            self.steps.append(step)
            text = json.dumps(step, sort_keys=True)
            drawn = control.allgather(control.next_label("program-step"), text)
            collective_assert(
                len(set(drawn)) == 1, f"ranks drew different program steps: {sorted(set(drawn))}"
            )
            return f"step {len(self.steps) - 1} {text}"

        # -- groups --------------------------------------------------------------------------
        @precondition(lambda self: size > 1 and capabilities.split)
        @precondition(lambda self: len(self.families) < FAMILIES_MOST)
        @rule(
            pick=st.data(),
            colouring=st.sampled_from(["halves", "odd-even", "random", "one"]),
            keying=st.sampled_from(["reversed", "equal", "random"]),
            seed=st.integers(0, 2**16),
        )
        def split(self, pick, colouring, keying, seed):
            splittable = [f for f in self.families if min(len(s) for s in f.subgroups) > 1]
            if not splittable:
                return
            parent = splittable[pick.draw(st.integers(0, len(splittable) - 1), label="parent")]
            longest = max(len(s) for s in parent.subgroups)
            rng = np.random.default_rng(seed)
            colours = {
                "halves": [int(2 * i >= longest) for i in range(longest)],
                "odd-even": [i % 2 for i in range(longest)],
                "random": [int(c) for c in rng.integers(0, 3, size=longest)],
                "one": [0] * longest,
            }[colouring]
            keys = {
                "reversed": [longest - 1 - i for i in range(longest)],
                "equal": [0] * longest,
                "random": [int(k) for k in rng.integers(0, 4, size=longest)],
            }[keying]
            name = f"g{len(self.families)}"
            step = {"do": "split", "parent": parent.name, "name": name}
            step.update(colours=colours, keys=keys)
            self._agree(step)
            me = parent.mine(rank).index(rank)
            group = call(f"split of {parent.name}", parent.group.split, colours[me], keys[me])
            subgroups = []
            for members in parent.subgroups:
                n = len(members)
                subgroups += _split_members(members, colours[:n], keys[:n])
            self.families.append(_Family(name, group, subgroups))
            mine = next(s for s in subgroups if rank in s)
            settle(
                [
                    None
                    if (group.size(), group.rank()) == (len(mine), mine.index(rank))
                    else f"{name}: size/rank {group.size()}/{group.rank()}, expected "
                    f"{len(mine)}/{mine.index(rank)} (members {mine})"
                ],
                "split",
            )

        # -- collectives ---------------------------------------------------------------------
        @rule(
            pick=st.data(),
            op=st.sampled_from(COLLECTIVES),
            dtype=st.sampled_from(data.DTYPE_NAMES),
            nbytes=st.sampled_from(BYTES),
            kind=st.sampled_from(["1-d", "2-d", "0-d"]),
            seed=st.integers(0, 2**16),
        )
        def collective(self, pick, op, dtype, nbytes, kind, seed):
            family = self.families[pick.draw(st.integers(0, len(self.families) - 1), "group")]
            if not capabilities.supports(op, dtype):
                return
            if op == "sum_scatter" and kind == "0-d":
                kind = "1-d"  # sum_scatter needs an axis 0
            count = nbytes // data_itemsize(dtype) + (1 if nbytes > 1021 else 0)
            multiple = family.lcm() if op == "sum_scatter" else 1
            shape = _shape(kind, max(count, 1), multiple)
            step = {"do": op, "group": family.name, "dtype": dtype, "shape": list(shape)}
            self._collective(step | {"seed": seed})

        @precondition(lambda self: bool(self.steps))
        @rule(pick=st.data(), seed=st.integers(0, 2**16))
        def again(self, pick, seed):
            """An earlier call once more, same op, group, shape and dtype, new values: where a
            pool or cache hands out what an earlier call returned."""
            calls = [s for s in self.steps if s["do"] != "split"]
            if not calls:
                return
            step = calls[pick.draw(st.integers(0, len(calls) - 1), "earlier call")]
            if step["do"] in COLLECTIVES:
                self._collective(step | {"seed": seed})
            else:
                self._p2p_step(step | {"seed": seed})

        def _collective(self, step: dict[str, Any]) -> None:
            op, dtype, shape, seed = step["do"], step["dtype"], tuple(step["shape"]), step["seed"]
            family = next(f for f in self.families if f.name == step["group"])
            what = self._agree(step)
            members = family.mine(rank)
            me = members.index(rank)
            dt = data.np_dtype(dtype)
            xs = [programs.program_input(programs.KINDS[op], seed, w, shape, dt) for w in members]
            arg = backend.asarray(xs[me].copy())

            def go() -> np.ndarray:
                out = getattr(backend, op)(arg, group=family.group)
                backend.evaluate(out)
                return backend.to_numpy(out)

            got, digests = call_everywhere(control, what, go)
            flat = [np.ascontiguousarray(x).reshape(-1) for x in xs]
            want_shape = _result_shape(op, shape, len(members))

            def result() -> str | None:
                if not isinstance(got, np.ndarray) or got.shape != want_shape:
                    shown = getattr(got, "shape", type(got).__name__)
                    return f"{what}: result shape {shown}, expected {want_shape}"
                return sizes.check_result(op, got.reshape(-1), flat, me, what)

            def given() -> str | None:
                now = np.asarray(backend.to_numpy(arg)).reshape(-1)
                return sizes.same_bits(now, flat[me], f"{what}: its input")

            problems = [local(result), local(given)]
            if op != "sum_scatter":
                theirs = {digests[w] for w in members}
                problems.append(None if len(theirs) == 1 else f"{what}: differs within its group")
            self._finish(what, problems, [("result", got, result), ("input", arg, given)])

        # -- send / recv ---------------------------------------------------------------------
        @precondition(lambda self: size > 1)
        @rule(
            pick=st.data(),
            pattern=st.sampled_from(["ring", "pipeline"]),
            dtype=st.sampled_from(data.DTYPE_NAMES),
            nbytes=st.sampled_from(BYTES),
            like=st.booleans(),
            seed=st.integers(0, 2**16),
        )
        def p2p(self, pick, pattern, dtype, nbytes, like, seed):
            family = self.families[pick.draw(st.integers(0, len(self.families) - 1), "group")]
            if not all(capabilities.supports(op, dtype) for op in ("send", "recv", "recv_like")):
                return
            count = max(1, nbytes // data_itemsize(dtype) + (1 if nbytes > 1021 else 0))
            step = {"do": pattern, "group": family.name, "dtype": dtype, "shape": [count]}
            self._p2p_step(step | {"seed": seed, "like": like})

        def _p2p_step(self, step: dict[str, Any]) -> None:
            family = next(f for f in self.families if f.name == step["group"])
            what = self._agree(step)
            members = family.mine(rank)
            me, n = members.index(rank), len(members)
            dt, count = data.np_dtype(step["dtype"]), step["shape"][0]
            xs = [programs.program_input("bits", step["seed"], w, (count,), dt) for w in members]
            problems: list[str | None] = []
            holds: list[tuple[str, Any, ownership.Check]] = []
            if n > 1:
                args = (step["do"], family.group, xs, me, step["like"], what, holds)
                problems += self._p2p(*args)
            self._finish(what, problems, holds)

        def _p2p(self, pattern, group, xs, me, like, what, holds) -> list[str | None]:
            n = len(xs)
            problems: list[str | None] = []
            mine = backend.asarray(xs[me].copy())
            found: dict[str, Any] = {}

            def forced(out: Any) -> np.ndarray:
                backend.evaluate(out)
                return backend.to_numpy(out)

            def send(payload: Any, dst: int) -> None:
                _, error = attempt(lambda: forced(backend.send(payload, dst, group=group)))
                if error is not None:
                    problems.append(f"{what}: send to {dst} raised {describe_error(error)}")

            def receive(src: int) -> None:
                if like:
                    template = backend.asarray(np.ascontiguousarray(xs[me][::-1]))
                    fn = lambda: forced(backend.recv_like(template, src, group=group))  # noqa: E731
                else:
                    dt = backend.dtype(data.dtype_name(xs[me].dtype))
                    fn = lambda: forced(backend.recv(xs[me].shape, dt, src, group=group))  # noqa: E731
                found["got"], error = attempt(fn)
                if error is not None:
                    problems.append(f"{what}: receive from {src} raised {describe_error(error)}")

            if pattern == "ring":
                src = (me - 1) % n
                steps = [lambda: send(mine, (me + 1) % n), lambda: receive(src)]
                for step in steps if me % 2 == 0 else steps[::-1]:
                    step()
                expected = xs[src]
            else:  # pipeline: group rank 0 sends, every next rank receives and sends it on
                src = 0
                if me > 0:
                    receive(me - 1)
                if me + 1 < n:
                    onward = mine if me == 0 else found.get("got")
                    if onward is not None:
                        send(backend.asarray(onward) if me else onward, me + 1)
                expected = xs[0]
            got = found.get("got")
            if got is not None:
                label = f"{what}: received from group rank {src}"
                check = lambda: sizes.received(got, expected, label)  # noqa: E731
                problems.append(local(check))
                holds.append(("received", got, check))
            given_label = f"{what}: its send input"
            given = lambda: sizes.same_bits(  # noqa: E731
                np.asarray(backend.to_numpy(mine)).reshape(-1), xs[me], given_label
            )
            problems.append(local(given))
            holds.append(("send input", mine, given))
            return problems

        # -- holding everything --------------------------------------------------------------
        def _finish(self, what: str, problems: list, holds: list) -> None:
            """Re-check what earlier steps returned (the byte sizes this step used), hold what
            this one returned, and settle the step's findings on every rank."""
            arrays = [
                backend.to_numpy(a) if not isinstance(a, np.ndarray) else a for _, a, _ in holds
            ]
            problems += self.held.recheck(what, {a.nbytes for a in arrays if a is not None})
            for (label, _, check), array in zip(holds, arrays, strict=True):
                self.held.hold(f"{what}: its {label}", array, check)
            settle(problems, what)

        def teardown(self) -> None:
            settle(self.held.recheck("the end of the program"), "program teardown")

    return Programs


def data_itemsize(dtype: str) -> int:
    return data.np_dtype(dtype).itemsize


def _result_shape(op: str, shape: tuple[int, ...], n: int) -> tuple[int, ...]:
    if n == 1:
        return shape
    if op == "all_gather":
        return (n,) if not shape else (n * shape[0], *shape[1:])
    if op == "sum_scatter":
        return (shape[0] // n, *shape[1:])
    return shape


def _run(backend, world, control, capabilities, budget: settings) -> None:
    Programs = machine(backend, world, control, capabilities)
    try:
        run_state_machine_as_test(Programs, settings=budget)
    except Exception as error:
        name = f"conformance-program-np{world.size()}.py"
        text = programs.script(Programs.steps, world.size(), backend.name, str(error), name)
        path = os.path.join(tempfile.gettempdir(), name)
        if world.rank() == 0:
            with open(path, "w") as out:
                out.write(text)
        raise AssertionError(
            f"a random call program failed; the minimal program ({len(Programs.steps)} steps) "
            f"as a standalone script (also in {path} on rank 0's host):\n{text}\n\n"
            f"the failure: {error}"
        ) from None


@pytest.mark.spec("sequences", rule="interleaved")
def test_random_call_programs(backend, world, control, capabilities):
    """A few random programs of up to 8 steps: collectives and send/recv on the world and on
    split groups, every dtype, sizes to past 4 MiB; every result and input kept and re-checked.

    SEMANTICS.md, Sizes, groups and call sequences: "Results do not depend on earlier calls:
    thousands of calls in a row on one group, the same shape hundreds of times in a row or shapes
    and dtypes changing, interleaved with calls on other groups and with send/recv, each give the
    result the rules above say."
    """
    _run(backend, world, control, capabilities, DEFAULT)


@pytest.mark.soak
@pytest.mark.spec("sequences", rule="interleaved")
def test_random_call_programs_long(backend, world, control, capabilities):
    """60 random programs of up to 25 steps (the ``soak`` tier).

    SEMANTICS.md, Sizes, groups and call sequences: "Results do not depend on earlier calls".
    """
    _run(backend, world, control, capabilities, SOAK)


# Past 512 calls in a row: a 9-bit counter or a 512-entry table has wrapped.
REPEATED_CALLS = 520
REPEATED = (
    ("all_gather", (3,), "int32"),
    ("all_max", (2,), "float32"),
    ("sum_scatter", (), "int16"),
)


@pytest.mark.sequences
@pytest.mark.spec("sequences", rule="repeated")
def test_all_gather_hundreds_of_times(backend, world, control, capabilities):
    """all_gather 520 times in a row, one small shape and dtype, new values every call (all_sum
    has its own run of 300 in test_call_sequences.py; each call costs about 10 ms at 4 ranks on
    two cores, so the other ops are left to the soak's sequences).

    SEMANTICS.md, Sizes, groups and call sequences: "Results do not depend on earlier calls:
    thousands of calls in a row on one group, the same shape hundreds of times in a row".
    """
    size = world.size()
    mates = list(range(size))
    problems: list[str] = []
    for op, shape, dtype in REPEATED:
        if not collective_dtypes(backend, capabilities, op, world, [dtype]):
            continue  # declared unsupported: it raised as the manifest names
        shape = (2 * size,) if op == "sum_scatter" else shape
        steps = (
            collective_step(backend, op, world, mates, shape, dtype, salt)
            for salt in range(REPEATED_CALLS)
        )
        found, _ = run_steps(control, steps)
        problems += [f"{op}: {p}" for p in found]
    settle(problems, f"{REPEATED_CALLS} calls in a row")
