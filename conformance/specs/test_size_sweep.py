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

from conformance.specs import data, exchanges, sizes
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


def sweep_collective(
    backend: Any, world: Any, control: Any, op: str, dtype: str, counts: Sequence[int], salt: int
) -> list[str | None]:
    """``op`` at each count on the world; the findings (collective-safe: exceptions fail every
    rank at the call, comparisons never raise)."""
    size, rank = world.size(), world.rank()
    problems: list[str | None] = []
    for count in counts:
        inputs = sizes.blocks(size, count, dtype, salt)
        if op == "sum_scatter":
            rows = sizes.scatter_rows(size, count)
            if rows == 0:
                continue  # fewer elements than ranks: the other counts cover the small end
            inputs = tuple(b[:rows] for b in inputs)
        what = sizes.label(op, dtype, inputs[0].shape[0])
        got, digests = call_everywhere(control, what, _runner(backend, op, inputs[rank], world))
        if op != "sum_scatter":
            problems.append(differing(digests, what))
        problems.append(local(partial(sizes.check_result, op, got, inputs, rank, what)))
    return problems


def _sweep_or_unsupported(backend, world, control, capabilities, op, dtypes, counts, salt):
    """The sweep on every dtype of ``dtypes`` declared supported; the op or a dtype declared
    unsupported is checked to raise as declared instead."""
    problems: list[str | None] = []
    for dtype in collective_dtypes(backend, capabilities, op, world, dtypes):
        problems += sweep_collective(backend, world, control, op, dtype, counts, salt)
    settle(problems, f"{op} size sweep")


@pytest.mark.sweep
@pytest.mark.parametrize("op", _per_op(COLLECTIVES))
def test_collective_sweep(backend, world, control, capabilities, op):
    """float32 at 1, N-1, N, N+1, primes, 2^k-1/2^k/2^k+1 to 16 Ki, 2^k+-1 to 256 Ki, 1 Mi + 1
    and 4 Mi + 3.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count: from one element past 2^31 bytes, counts not divisible by the group size, and the
    counts where an implementation may switch algorithm, chunk or protocol (powers of two and
    their neighbours). Every element of every result is checked."
    """
    counts = sizes.default_counts(world.size())
    _sweep_or_unsupported(backend, world, control, capabilities, op, ["float32"], counts, 0)


@pytest.mark.sweep
@pytest.mark.parametrize("op", _per_op(COLLECTIVES))
def test_collective_dtypes_large(backend, world, control, capabilities, op):
    """All 14 dtypes at 64 Ki + 1 elements: past the small-message paths for every width.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count".
    """
    counts = sizes.DTYPE_COUNTS_DEFAULT
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


# -- send / recv ----------------------------------------------------------------------------------
def ring_shift(backend: Any, group: Any, dtype: str, count: int, salt: int, like: bool) -> list:
    """Every rank sends its input of ``count`` elements to rank + 1 and receives rank - 1's
    (even ranks send first); the findings on this rank."""
    rank, size = group.rank(), group.size()
    dst, src = (rank + 1) % size, (rank - 1) % size
    inputs = sizes.blocks(size, count, dtype, salt)
    what = sizes.label("recv_like" if like else "recv", dtype, count, f" from rank {src}")
    problems: list[str | None] = []
    outcome: dict[str, Any] = {}

    def do_send() -> None:
        outcome["sent"], error = attempt(exchanges.send, backend, inputs[rank], dst, group)
        if error is not None:
            problems.append(f"send of {what} to {dst} raised {describe_error(error)}")

    def do_recv() -> None:
        if like:
            outcome["got"], error = attempt(exchanges.recv_like, backend, inputs[src], src, group)
        else:
            args = (backend, (count,), dtype, src, group)
            outcome["got"], error = attempt(exchanges.recv, *args)
        if error is not None:
            problems.append(f"{what} raised {describe_error(error)}")

    steps = (do_send, do_recv) if rank % 2 == 0 else (do_recv, do_send)
    for step in steps:
        step()
    if "sent" in outcome and outcome["sent"] is not None:
        problems.append(
            local(lambda: sizes.received(outcome["sent"], inputs[rank], "send's value"))
        )
    if "got" in outcome and outcome["got"] is not None:
        problems.append(local(lambda: sizes.received(outcome["got"], inputs[src], what)))
    return problems


def _p2p_sweep(backend, world, capabilities, dtypes, counts, salt) -> None:
    require_size(world, 2)
    problems: list[str | None] = []
    for dtype in p2p_dtypes(backend, capabilities, world, dtypes):
        for i, count in enumerate(counts):
            problems += ring_shift(backend, world, dtype, count, salt, like=i % 2 == 1)
    settle(problems, "send/recv size sweep")


@pytest.mark.sweep
@pytest.mark.spec("send", rule=RULE)
def test_send_recv_sweep(backend, world, capabilities):
    """send to rank + 1, recv / recv_like from rank - 1, across the sweep and all 14 dtypes.

    SEMANTICS.md, Sizes, groups and call sequences: "Every rule above holds at every element
    count: ... the counts where an implementation may switch algorithm, chunk or protocol".
    With send / recv: "`recv(shape, dtype, src)` returns an array of exactly that shape and
    dtype holding what `src` sent."
    """
    size = world.size()
    _p2p_sweep(backend, world, capabilities, ["float32"], sizes.default_counts(size), 4)
    _p2p_sweep(backend, world, capabilities, data.DTYPE_NAMES, sizes.DTYPE_COUNTS_DEFAULT, 5)


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
