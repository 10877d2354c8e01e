"""Spec of every collective and send/recv across element counts: algorithm and chunk thresholds.

SEMANTICS.md, "Sizes, groups and call sequences"; manifest rule ``sizes`` of all_sum, all_max,
all_min, all_gather, sum_scatter and send. The counts are in ``sizes.py``: the default run takes
every threshold region up to 256 Ki elements plus 1 Mi + 1 and 4 Mi + 3, and all 14 dtypes at
one count; the opt-in ``soak`` tier takes the rest of the sweep up to 16 Mi elements (64 MiB
per rank in float32) and the dtypes at larger counts; the opt-in ``huge`` tier moves more than 2 GiB
(INT_MAX bytes) in one call. Every element of every result is checked against numpy. An op or
dtype the backend declares unsupported is checked to raise as the manifest names (``declared``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import pytest

from conformance.specs import data, exchanges, ownership, sizes
from conformance.specs.calls import (
    attempt,
    call_everywhere,
    describe_error,
    differing,
    local,
    settle,
)
from conformance.specs.declared import collective_dtypes, p2p_dtypes
from conformance.specs.groups import require_size

pytestmark = pytest.mark.core

COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")
RULE = "sizes"

# Bytes per rank of the huge tier's transfers: past INT_MAX, the 32-bit byte-count boundary.
HUGE_BYTES = int(os.environ.get("CONFORMANCE_HUGE_BYTES", 2**31 + 64))


def _per_op(ops: Sequence[str]) -> list[Any]:
    return [pytest.param(op, marks=pytest.mark.spec(op, rule=RULE), id=op) for op in ops]


def _runner(backend: Any, op: str, x: np.ndarray, group: Any) -> Any:
    def go() -> np.ndarray:
        out = getattr(backend, op)(backend.asarray(x), group=group)
        backend.evaluate(out)
        return backend.to_numpy(out)

    return go


def _given(backend: Any, op: str, arg: Any, group: Any) -> Any:
    """``op`` on ``arg``, a backend array already (so the caller can look at it afterwards)."""

    def go() -> np.ndarray:
        out = getattr(backend, op)(arg, group=group)
        backend.evaluate(out)
        return backend.to_numpy(out)

    return go


def _nbytes(*arrays: object) -> set[int]:
    return {a.nbytes for a in arrays if isinstance(a, np.ndarray)}


def _one_call(backend, world, control, op, dtype, count, salt, held) -> list[str | None]:
    """``op`` at ``count`` on a writable copy of this rank's input; the findings: the result,
    the input after the call, then every result and input ``held`` from earlier calls (the
    caller still holds them). The result and the input are then held too."""
    size, rank = world.size(), world.rank()
    family = sizes.FAMILIES[op]
    # sum_scatter takes the largest multiple of the group size not above the count.
    rows = sizes.scatter_rows(size, count) if op == "sum_scatter" else count
    pristine = sizes.rank_input(family, rank, count, dtype, salt)[:rows]
    # Writable, as the backend holds it (``asarray`` may copy): a backend writing into its
    # input has the chance to, and the check reads what the backend was given.
    arg = backend.asarray(pristine.copy())
    x = backend.to_numpy(arg)
    what = sizes.label(op, dtype, x.shape[0])
    got, digests = call_everywhere(control, what, _given(backend, op, arg, world))
    same = op != "sum_scatter" and len(set(digests)) == 1
    problems = [differing(digests, what)] if op != "sum_scatter" else []

    # Checked now in shares when every rank returned the same; the held checks check the whole
    # result (only when it changed on this rank, which no other rank's check covers).
    def result(same_everywhere: bool = False) -> str | None:
        args = (op, got, family, size, rank, count, dtype, salt, what)
        return sizes.check_swept(*args, same_everywhere=same_everywhere)

    def given() -> str | None:
        return sizes.same_bits(backend.to_numpy(arg), pristine, f"{what}: its input")

    problems += [local(partial(result, same)), local(given)]
    problems += held.recheck(what, _nbytes(got, x))
    held.hold(f"{what}: its result", got, result)
    held.hold(f"{what}: its input", x, given, like=pristine)
    return problems


def sweep_collective(
    backend: Any,
    world: Any,
    control: Any,
    op: str,
    dtype: str,
    counts: Sequence[int],
    salt: int,
    held: ownership.Holdings,
) -> list[str | None]:
    """``op`` at each count on the world, the counts of ``sizes.REPEATED_COUNTS`` twice (fresh
    inputs the second time); the findings (collective-safe: exceptions fail every rank at the
    call, comparisons never raise). Every result and input stays in ``held`` and is re-checked
    after every later call."""
    size = world.size()
    problems: list[str | None] = []
    for count in counts:
        if op == "sum_scatter" and sizes.scatter_rows(size, count) == 0:
            continue  # fewer elements than ranks: the other counts cover the small end
        again = (salt + 1000,) if count in sizes.REPEATED_COUNTS else ()
        for s in (salt, *again):
            problems += _one_call(backend, world, control, op, dtype, count, s, held)
    return problems


def _sweep_or_unsupported(backend, world, control, capabilities, op, dtypes, counts, salt):
    """The sweep on every dtype of ``dtypes`` declared supported (``counts``: a list, or a
    function of the dtype); the op or a dtype declared unsupported is checked to raise as
    declared instead. Every result and input is held to the end of the test."""
    problems: list[str | None] = []
    held = ownership.Holdings()
    for dtype in collective_dtypes(backend, capabilities, op, world, dtypes):
        mine = counts(dtype) if callable(counts) else counts
        problems += sweep_collective(backend, world, control, op, dtype, mine, salt, held)
    problems += held.recheck(f"the last call of the {op} sweep")
    settle(problems, f"{op} size sweep")


@pytest.mark.sweep
@pytest.mark.parametrize("op", _per_op(COLLECTIVES))
def test_collective_sweep(backend, world, control, capabilities, op):
    """float32 at 1, N-1, N, N+1, primes, 2^k-1/2^k/2^k+1 to 16 Ki, 2^k+-1 to 256 Ki, 1 Mi + 1
    and 4 Mi + 3, every bit of the inputs used (full-mantissa floats for sums, random bit
    patterns otherwise); past 64 KiB and 1 MiB a count is called twice in a row. Every result
    and every input is kept and re-checked bit for bit after every later call.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count: from one element past 2^31 bytes, counts not divisible by the group size, and the
    counts where an implementation may switch algorithm, chunk or protocol (powers of two and
    their neighbours). Every element of every result is checked." Inputs: layouts and
    ownership: "An op never changes its inputs" and "A returned array is the caller's: no later
    call changes it, whatever the backend pools, caches or reuses."
    """
    counts = sizes.default_counts(world.size())
    _sweep_or_unsupported(backend, world, control, capabilities, op, ["float32"], counts, 0)


@pytest.mark.sweep
@pytest.mark.parametrize("op", _per_op(COLLECTIVES))
def test_collective_dtypes_large(backend, world, control, capabilities, op):
    """All 14 dtypes just past 64 KiB and just past 1 MiB per rank (and a few just past 4 MiB),
    at counts whose byte size is not a multiple of twice the itemsize (``sizes.dtype_counts``),
    every bit of the inputs used;
    every result and input kept and re-checked after every later call.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count". Inputs: layouts and ownership: "An op never changes its inputs" and "A returned array
    is the caller's: no later call changes it, whatever the backend pools, caches or reuses."
    """
    counts = partial(sizes.dtype_counts, op=op)
    _sweep_or_unsupported(backend, world, control, capabilities, op, data.DTYPE_NAMES, counts, 1)


SOAK_BANDS = sizes.soak_bands()


@pytest.mark.soak
@pytest.mark.parametrize("band", list(SOAK_BANDS))
@pytest.mark.parametrize("op", _per_op(COLLECTIVES))
def test_collective_full_sweep(backend, world, control, capabilities, op, band):
    """float32 over the rest of the sweep up to 16 Mi + 5 elements, one threshold region a test.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count".
    """
    counts = SOAK_BANDS[band]
    _sweep_or_unsupported(backend, world, control, capabilities, op, ["float32"], counts, 2)


@pytest.mark.soak
@pytest.mark.parametrize("count", sizes.DTYPE_COUNTS_SOAK)
@pytest.mark.parametrize("op", _per_op(COLLECTIVES))
def test_collective_dtypes_full(backend, world, control, capabilities, op, count):
    """All 14 dtypes at 1 Mi - 1, 4 Mi + 1 and 16 Mi + 1 elements.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count".
    """
    dtypes = data.DTYPE_NAMES
    _sweep_or_unsupported(backend, world, control, capabilities, op, dtypes, [count], 3)


# -- results held across later calls --------------------------------------------------------------
# Widths whose pools differ: a pool keyed by byte size mixes them up, one keyed by shape does not.
OWNERSHIP_DTYPES = ("uint8", "float64")


@pytest.mark.sweep
@pytest.mark.spec("layouts", rule="results-owned")
def test_held_results_stay_the_callers(backend, world, control, capabilities):
    """Every collective twice in a row at 7 elements and just past 64 KiB and 1 MiB, in uint8 and
    float64, then a send / recv ring: every result, input and message is held by the test, and
    re-checked bit for bit after every later call (of the same shape, dtype and group, and of
    others) and at the end.

    SEMANTICS.md, Inputs: layouts and ownership: "A returned array is the caller's: no later call
    changes it, whatever the backend pools, caches or reuses. A result held while any number of
    later calls run (of the same shape, dtype and group or not, collectives and send/recv alike)
    keeps every bit it had when it was returned".
    """
    size = world.size()
    ops = {
        op: collective_dtypes(backend, capabilities, op, world, OWNERSHIP_DTYPES)
        for op in COLLECTIVES
    }
    p2p = p2p_dtypes(backend, capabilities, world, OWNERSHIP_DTYPES) if size > 1 else []
    held = ownership.Holdings()
    problems: list[str | None] = []
    for dtype in OWNERSHIP_DTYPES:
        for count in (7, *sizes.dtype_counts(dtype)):
            for repeat in range(2):
                salt = 20 + repeat
                for op in (op for op in COLLECTIVES if dtype in ops[op]):
                    if op == "sum_scatter" and sizes.scatter_rows(size, count) == 0:
                        continue
                    problems += _one_call(backend, world, control, op, dtype, count, salt, held)
                if dtype in p2p:
                    like = repeat == 1
                    problems += ring_shift(backend, world, dtype, count, salt, like, held)
    problems += held.recheck("the last call")
    settle(problems, "results held across later calls")


# -- send / recv ----------------------------------------------------------------------------------
def ring_shift(
    backend: Any,
    group: Any,
    dtype: str,
    count: int,
    salt: int,
    like: bool,
    held: ownership.Holdings,
) -> list:
    """Every rank sends a writable copy of its input of ``count`` elements to rank + 1 and
    receives rank - 1's with ``recv`` or ``recv_like`` (even ranks send first); the findings on
    this rank: what arrived and what send returned, bit for bit, the input and the template
    after the calls, and everything ``held`` from earlier calls (then held too)."""
    rank, size = group.rank(), group.size()
    dst, src = (rank + 1) % size, (rank - 1) % size

    # The read-only inputs of this rank and of the one it receives from (each built once).
    inputs = {
        r: sizes.rank_input(sizes.FAMILIES["send"], r, count, dtype, salt) for r in (rank, src)
    }
    source = inputs.__getitem__

    # Writable backend arrays, looked at again after the calls (``asarray`` may copy).
    mine, like_arg = backend.asarray(source(rank).copy()), backend.asarray(source(src).copy())
    x, template = backend.to_numpy(mine), backend.to_numpy(like_arg)
    what = sizes.label("recv_like" if like else "recv", dtype, count, f" from rank {src}")
    problems: list[str | None] = []
    outcome: dict[str, Any] = {}

    def forced(out: Any) -> np.ndarray:
        backend.evaluate(out)
        return backend.to_numpy(out)

    def do_send() -> None:
        outcome["sent"], error = attempt(lambda: forced(backend.send(mine, dst, group=group)))
        if error is not None:
            problems.append(f"send of {what} to {dst} raised {describe_error(error)}")

    def do_recv() -> None:
        if like:
            receive = partial(backend.recv_like, like_arg, src, group=group)
            outcome["got"], error = attempt(lambda: forced(receive()))
        else:
            args = (backend, (count,), dtype, src, group)
            outcome["got"], error = attempt(exchanges.recv, *args)
        if error is not None:
            problems.append(f"{what} raised {describe_error(error)}")

    steps = (do_send, do_recv) if rank % 2 == 0 else (do_recv, do_send)
    for step in steps:
        step()
    x, template = backend.to_numpy(mine), backend.to_numpy(like_arg)
    sent_label, like_label = f"send of {what}: its input", f"{what}: its template"
    # (label, the array, its check, the read-only input it must equal)
    checks: list[tuple[str, Any, ownership.Check, np.ndarray]] = [
        (
            sent_label,
            x,
            lambda: sizes.same_bits(backend.to_numpy(mine), source(rank), sent_label),
            source(rank),
        )
    ]
    if like:
        now = partial(backend.to_numpy, like_arg)
        checks.append(
            (
                like_label,
                template,
                lambda: sizes.same_bits(now(), source(src), like_label),
                source(src),
            )
        )
    if outcome.get("sent") is not None:
        sent = outcome["sent"]
        checks.append(
            (
                "send's result",
                sent,
                lambda: sizes.received(sent, source(rank), "send"),
                source(rank),
            )
        )
    if outcome.get("got") is not None:
        got = outcome["got"]
        checks.append((what, got, lambda: sizes.received(got, source(src), what), source(src)))
    problems += [local(check) for _, _, check, _ in checks]
    problems += held.recheck(what, _nbytes(*(array for _, array, _, _ in checks)))
    for label, array, check, pristine in checks:
        held.hold(label, array, check, like=pristine)
    return problems


def _p2p_sweep(backend, world, capabilities, dtypes, counts, salt) -> None:
    """``ring_shift`` over ``counts`` (a list, or a function of the dtype) for every dtype,
    alternating ``recv`` and ``recv_like`` (each dtype meets both), everything held to the end."""
    require_size(world, 2)
    problems: list[str | None] = []
    held = ownership.Holdings()
    for d, dtype in enumerate(p2p_dtypes(backend, capabilities, world, dtypes)):
        for i, count in enumerate(counts(dtype) if callable(counts) else counts):
            like = (i + d) % 2 == 1
            problems += ring_shift(backend, world, dtype, count, salt, like, held)
    problems += held.recheck("the last call of the send/recv sweep")
    settle(problems, "send/recv size sweep")


@pytest.mark.sweep
@pytest.mark.spec("send", rule=RULE)
def test_send_recv_sweep(backend, world, capabilities):
    """send to rank + 1, recv / recv_like from rank - 1, across the sweep and all 14 dtypes
    (just past 64 KiB and 1 MiB each, one in two past 4 MiB), random bit patterns moved bit for
    bit; every message,
    input and template kept and re-checked after every later call.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count: ... the counts where an implementation may switch algorithm, chunk or protocol".
    With send / recv: "`recv(shape, dtype, src)` returns an array of exactly that shape and
    dtype holding what `src` sent."
    """
    size = world.size()
    _p2p_sweep(backend, world, capabilities, ["float32"], sizes.default_counts(size), 4)
    counts = partial(sizes.dtype_counts, op="send")
    _p2p_sweep(backend, world, capabilities, data.DTYPE_NAMES, counts, 5)


@pytest.mark.soak
@pytest.mark.spec("send", rule=RULE)
@pytest.mark.parametrize("band", list(SOAK_BANDS))
def test_send_recv_full_sweep(backend, world, capabilities, band):
    """send / recv over the rest of the sweep, one threshold region a test; the largest region
    also takes the 14 dtypes at 1 Mi - 1, 4 Mi + 1 and 16 Mi + 1 elements.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count".
    """
    _p2p_sweep(backend, world, capabilities, ["float32"], SOAK_BANDS[band], 6)
    if band == list(SOAK_BANDS)[-1]:
        _p2p_sweep(backend, world, capabilities, data.DTYPE_NAMES, sizes.DTYPE_COUNTS_SOAK, 7)


# -- past 2 GiB -----------------------------------------------------------------------------------
def _huge_chunk(rank: int, start: int, stop: int) -> np.ndarray:
    """Bytes ``[start, stop)`` of rank ``rank``'s huge-tier input: rank-and-position data built in
    chunks (``data.contribution`` needs 8 bytes of scratch per element: 16 GiB here)."""
    p = np.arange(start, stop, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (p + np.uint64(rank + 1)) * np.uint64(0x9E3779B97F4A7C15)
    return (h >> np.uint64(56)).astype(np.uint8)


def _huge_input(rank: int, count: int) -> np.ndarray:
    out = np.empty(count, np.uint8)
    for start in range(0, count, sizes.CHUNK * 16):
        stop = min(start + sizes.CHUNK * 16, count)
        out[start:stop] = _huge_chunk(rank, start, stop)
    return out


@pytest.mark.huge
@pytest.mark.spec("send", rule=RULE)
def test_send_recv_past_int_max_bytes(backend, world, capabilities):
    """One message of more than 2 GiB (INT_MAX bytes) from rank 0 to rank 1, every byte checked.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count: from one element past 2^31 bytes". Opt-in (needs about 3 x 2 GiB on each of two
    ranks): ``CONFORMANCE_TIERS=huge``.
    """
    require_size(world, 2)
    if not p2p_dtypes(backend, capabilities, world, ["uint8"], ("send", "recv")):
        return  # declared unsupported: it raised as the manifest names
    rank, count = world.rank(), HUGE_BYTES
    problems: list[str | None] = []
    if rank in (0, 1):
        x = _huge_input(0, count)
        what = sizes.label("recv", "uint8", count, " from rank 0")
        if rank == 0:
            _, error = attempt(exchanges.send, backend, x, 1, world)
        else:
            got, error = attempt(exchanges.recv, backend, (count,), "uint8", 0, world)
            if error is None:
                problems.append(local(lambda: sizes.received(got, x, what)))
        if error is not None:
            problems.append(f"{what} raised {describe_error(error)}")
    settle(problems, "send/recv past 2 GiB")


@pytest.mark.huge
@pytest.mark.spec("all_sum", rule=RULE)
def test_all_sum_past_int_max_bytes(backend, world, control, capabilities):
    """all_sum of more than 2 GiB of uint8 per rank (sums wrap), every element checked.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count: from one element past 2^31 bytes". Opt-in: ``CONFORMANCE_TIERS=huge``.
    """
    size, rank, count = world.size(), world.rank(), HUGE_BYTES
    if not collective_dtypes(backend, capabilities, "all_sum", world, ["uint8"]):
        return  # declared unsupported: it raised as the manifest names
    what = sizes.label("all_sum", "uint8", count)
    got, digests = call_everywhere(
        control, what, _runner(backend, "all_sum", _huge_input(rank, count), world)
    )

    def expect(a: int, b: int) -> tuple[np.ndarray, None]:
        total = np.zeros(b - a, np.uint8)
        for r in range(size):
            total += _huge_chunk(r, a, b)  # uint8 addition wraps, as the sum must
        return total, None

    problems = [differing(digests, what)]
    problems.append(local(lambda: sizes.first_wrong(got.reshape(-1), expect, count, what)))
    settle(problems, "all_sum past 2 GiB")
