"""Spec of values: full-precision floats, special values, and which rank holds them.

SEMANTICS.md, "Values" and the NaN bounds of "Reductions"; manifest entries ``[ops.values]`` and
``nan-placement`` of ``[ops.all_max]`` / ``[ops.all_min]``. Inputs come from ``data``
(``full_mantissa``, ``exactly_summable``, ``random_bits``, ``special_values``, ``placed``); every
expected value is computed with numpy from every rank's input. An op or dtype the backend declares
unsupported is checked to raise as the manifest names, once per test (``declared``).
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

from conformance.specs import data, reductions
from conformance.specs.calls import local, settle
from conformance.specs.declared import collective_dtypes, p2p_dtypes
from conformance.specs.groups import require_size
from conformance.specs.tolerance import bits_mismatch, mismatch

pytestmark = pytest.mark.values

FLOATS = (*data.FLOAT_NAMES, "complex64")
# Inline in the reference's agreement header (<= 512 bytes) and past every inline path (16 KiB),
# where a chunked or vectorised implementation takes another path.
SIZES = (40, 20_000)


def _run(backend: Any, op: str, x: np.ndarray, group: Any) -> np.ndarray:
    return reductions.run(backend, op, x, group)


def _p2p_findings(
    backend: Any, world: Any, blocks: list[np.ndarray], label: str, like: bool = False
) -> list:
    """Rank r sends ``blocks[r]`` to r + 1 (even ranks first), received with ``recv`` or, with
    ``like``, ``recv_like`` (its template holds other values than the message); the message
    must arrive bit for bit, and send's result must be ``x`` bit for bit."""
    rank, size = world.rank(), world.size()
    dst, src = (rank + 1) % size, (rank - 1) % size
    mine, theirs = blocks[rank], blocks[src]
    name = data.dtype_name(mine.dtype)
    found: dict[str, np.ndarray] = {}

    def send() -> None:
        out = backend.send(backend.asarray(mine), dst, group=world)
        backend.evaluate(out)
        found["sent"] = backend.to_numpy(out)

    def recv() -> None:
        if like:  # a template of other bits: only its shape and dtype may count
            template = backend.asarray(np.ascontiguousarray(mine[::-1]))
            out = backend.recv_like(template, src, group=world)
        else:
            out = backend.recv(mine.shape, backend.dtype(name), src, group=world)
        backend.evaluate(out)
        found["got"] = backend.to_numpy(out)

    steps = (send, recv) if rank % 2 == 0 else (recv, send)
    problems = [local(lambda s=s: s()) for s in steps]
    problems.append(bits_mismatch(found.get("sent"), mine, f"send({label}) returned"))
    how = "recv_like" if like else "recv"
    problems.append(bits_mismatch(found.get("got"), theirs, f"{label} ({how}) from {src}"))
    return problems


@pytest.mark.core
@pytest.mark.spec("values", rule="full-mantissa")
@pytest.mark.parametrize("op", ["all_sum", "sum_scatter"])
def test_full_mantissa_sums(backend, world, capabilities, op):
    """Sums of floats with every significand bit set are within the summation-order bound, and
    exact where every partial sum is representable, large arrays included.

    SEMANTICS.md, Values: "Float sums of any inputs, full 11-, 8-, 24- and 53-bit significands
    included, are within the tolerance of "Reductions" ... A sum whose every partial sum is
    representable in the dtype is exact, in any order."
    """
    size, rank = world.size(), world.rank()
    problems: list[str | None] = []
    for name in collective_dtypes(backend, capabilities, op, world, FLOATS):
        for count in SIZES:
            shape = (size * (count // size),)
            general = [data.full_mantissa(r, shape, name, salt=count) for r in range(size)]
            exact = data.exactly_summable(size, shape, name, salt=count)
            for family, blocks in (("full-mantissa", general), ("exactly summable", exact)):
                label = f"{op} of {family} {data.describe(blocks[rank])}"
                got = _run(backend, op, blocks[rank], world)
                want = reductions.expected(op, blocks, rank)
                bound = reductions.tolerance(op, blocks, rank) if blocks is general else None
                problems.append(mismatch(got, want, bound, label))
    settle(problems, op)


@pytest.mark.core
@pytest.mark.spec("values", rule="bits")
@pytest.mark.parametrize("op", ["all_max", "all_min", "all_gather", "send"])
def test_every_bit_counts(backend, world, capabilities, op):
    """all_gather and send/recv (received with recv and with recv_like) move random bit
    patterns (NaN payloads, -0.0, subnormals, inf) bit for bit; all_max/all_min of random
    non-NaN bit patterns return an input's bits.

    SEMANTICS.md, Values: "`all_gather`, `send`, `recv` and `recv_like` move values bit for bit:
    NaN payloads, -0.0, subnormals and infinities arrive unchanged. `all_max` and `all_min`
    return one of the inputs bit for bit, except for the sign of a zero result and the bits of a
    NaN."
    """
    size, rank = world.size(), world.rank()
    if op == "send":
        require_size(world, 2)
        names = p2p_dtypes(backend, capabilities, world, data.DTYPE_NAMES, ("send", "recv"))
    else:
        names = collective_dtypes(backend, capabilities, op, world, data.DTYPE_NAMES)
    problems: list[str | None] = []
    for name in names:
        for count in SIZES:
            blocks = [data.random_bits(r, (count,), name, salt=count) for r in range(size)]
            label = f"{op} of random bits {data.describe(blocks[rank])}"
            if op == "send":
                for like in (False, True):
                    problems += _p2p_findings(backend, world, blocks, label, like)
                continue
            if op in ("all_max", "all_min") and name in FLOATS:
                blocks = [_without_nan(b) for b in blocks]  # NaN: test_nan_placement
            got = _run(backend, op, blocks[rank], world)
            want = reductions.expected(op, blocks, rank)
            if op == "all_gather":
                problems.append(bits_mismatch(got, want, label))
            else:  # value comparison: equal bits except a zero's sign (NaN is gone)
                problems.append(mismatch(got, want, None, label))
    settle(problems, op)


def _without_nan(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    if out.dtype.kind == "c":
        out[np.isnan(out.real) | np.isnan(out.imag)] = 0
    else:
        out[np.isnan(out.astype(np.float64))] = 0
    return out


def _background(size: int, name: str, count: int, op: str) -> list[np.ndarray]:
    """What ranks without the special value hold: full-mantissa values, or zeros for sums of
    floats (so a subnormal is not rounded away, and +-max on several ranks overflows in every
    order of additions or in none)."""
    if op in ("all_sum", "sum_scatter") and name in FLOATS:
        return [np.zeros(count, data.np_dtype(name)) for _ in range(size)]
    return [data.full_mantissa(r, (count,), name, salt=5) for r in range(size)]


def _specials(name: str, op: str) -> np.ndarray:
    values = data.special_values(name)
    if op in ("all_max", "all_min") and name in FLOATS:
        values = _without_nan(values)  # NaN has its own bounds (test_nan_placement)
    return values


@pytest.mark.core
@pytest.mark.spec("values", rule="specials")
@pytest.mark.parametrize("op", ["all_sum", "all_max", "all_min", "all_gather", "sum_scatter"])
def test_special_values_on_every_rank(backend, world, capabilities, op):
    """NaN, +-inf, -0.0, subnormals, integer min/max and uint64 >= 2**63, on each rank in turn
    and on several at once, give the numpy result whichever ranks hold them.

    SEMANTICS.md, Values: "Special values follow IEEE 754 arithmetic wherever they are ... Which
    rank holds a value changes nothing, except that float sums may round differently with the
    order of the ranks (within the tolerance) and that the sign of a zero result of `all_sum`,
    `all_max` or `all_min` is impl-defined."
    """
    size, rank = world.size(), world.rank()
    problems: list[str | None] = []
    for name in collective_dtypes(backend, capabilities, op, world, data.DTYPE_NAMES):
        values = _specials(name, op)
        count = len(values) * len(data.placements(size))
        padded = size * -(-count // size)  # sum_scatter needs a multiple of the group size
        blocks, _ = data.placed(size, name, values, _background(size, name, padded, op))
        label = f"{op} of {name} special values"
        got = _run(backend, op, blocks[rank], world)
        if op == "all_gather":
            problems.append(bits_mismatch(got, reductions.expected(op, blocks, rank), label))
        else:
            problems.append(reductions.verdict(op, got, blocks, rank, label))
    settle(problems, op)


def _nan_policy(got: np.ndarray, blocks: list[np.ndarray], larger: bool) -> tuple[set, list]:
    """Per position with NaN on some ranks but not all: 'propagate' or 'ignore' (or a finding)."""
    stack = np.stack([b.astype(np.float64) for b in blocks])
    nan = np.isnan(stack)
    g = got.astype(np.float64)
    fill = -np.inf if larger else np.inf
    ignored = np.where(nan, fill, stack)
    others = ignored.max(axis=0) if larger else ignored.min(axis=0)
    choices, problems = set(), []
    for i in np.flatnonzero(nan.any(axis=0)):
        holders = tuple(int(r) for r in np.flatnonzero(nan[:, i]))
        if nan[:, i].all() or np.isnan(g[i]):
            choice = "propagate" if not nan[:, i].all() else None
            if not np.isnan(g[i]):
                problems.append(f"NaN on every rank gave {g[i]!r} at {i}")
        elif g[i] == others[i]:
            choice = "ignore"
        else:
            choice = None
            problems.append(
                f"NaN on ranks {holders} gave {g[i]!r} at {i}: neither NaN nor the "
                f"{'max' if larger else 'min'} of the others ({others[i]!r})"
            )
        if choice:
            choices.add((choice, holders))
    return choices, problems


@pytest.mark.impl_defined
@pytest.mark.parametrize(
    "op",
    [
        pytest.param("all_max", marks=pytest.mark.spec("all_max", rule="nan-placement")),
        pytest.param("all_min", marks=pytest.mark.spec("all_min", rule="nan-placement")),
    ],
)
def test_nan_placement(backend, world, capabilities, op):
    """NaN on each rank in turn and on several at once: NaN or the others' extreme, the same
    choice whichever ranks hold the NaN.

    SEMANTICS.md, Reductions: "where some rank holds NaN, the result is NaN (NaN propagates) or
    the maximum / minimum of the other ranks' values there (NaN ignored); NaN on every rank gives
    NaN. Which of the two must not depend on which ranks hold the NaN, nor on how many do."
    """
    size, rank = world.size(), world.rank()
    problems: list[str | None] = []
    for name in collective_dtypes(backend, capabilities, op, world, data.FLOAT_NAMES):
        values = np.array([np.nan] * 3, data.np_dtype(name))
        background = [data.full_mantissa(r, (64,), name, salt=9) for r in range(size)]
        blocks, _ = data.placed(size, name, values, background)
        got = _run(backend, op, blocks[rank], world)

        def check(got: np.ndarray = got, blocks: list = blocks, name: str = name) -> str | None:
            if got.shape != blocks[0].shape or got.dtype != blocks[0].dtype:
                return f"{op} {name}: result is {data.describe(got)}"
            choices, found = _nan_policy(got, blocks, op == "all_max")
            if len({c for c, _ in choices}) > 1:
                by = {c: sorted({h for k, h in choices if k == c}) for c, _ in choices}
                found.append(
                    f"NaN propagated when held by {by['propagate']}, ignored when "
                    f"held by {by['ignore']}"
                )
            return f"{op} {name}: " + "; ".join(found[:3]) if found else None

        problems.append(local(check))
    settle(problems, op)


# -- special values meeting on several ranks ------------------------------------------------------
def _meetings(name: str, op: str) -> list[tuple[float, float]]:
    """Pairs of values that meet at one position, one on some ranks and one on the others: +inf
    with -inf (NaN in a sum), NaN with +-inf, an infinity with the finite extremes and with
    itself, the extremes with each other (overflow to inf, or an exact zero). For all_max /
    all_min the pairs without NaN (NaN has its own bounds: ``_nan_policy``) and those with it."""
    info = ml_dtypes.finfo(data.np_dtype("float32" if name == "complex64" else name))
    top, inf, nan = float(info.max), np.inf, np.nan
    pairs = [(inf, -inf), (nan, inf), (nan, -inf), (inf, inf), (-inf, -inf), (nan, nan)]
    pairs += [(inf, top), (inf, -top), (-inf, top), (-inf, -top), (top, -top)]
    if op in ("all_max", "all_min"):
        pairs += [(top, top), (-top, -top), (nan, top), (nan, -top), (nan, 0.0)]
    return pairs


def _splits(size: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Which ranks hold the first value of a pair and which the second: every ordered pair of
    distinct ranks (the others hold 0), then the ranks split in two halves both ways."""
    found = [((a,), (b,)) for a in range(size) for b in range(size) if a != b]
    half = tuple(range(size // 2))
    rest = tuple(range(size // 2, size))
    if size > 2:
        found += [(half, rest), (rest, half)]
    return found


def _combined(size: int, name: str, op: str) -> list[np.ndarray]:
    """Every rank's 1-d input: one position per (pair, split); zeros where a rank holds nothing.
    complex64: the pairs in the real parts, then again in the imaginary parts (sums only)."""
    sums = op in ("all_sum", "sum_scatter")

    # A finite extreme on several ranks of a sum may overflow in one order and not in another
    # (max + max + -inf is NaN or -inf; -max + -max + inf at 3 ranks too, whichever side holds
    # the extremes): a finite value meets the other on several ranks only where a sum's order
    # cannot matter, so such pairs meet on two ranks only there.
    def order_free(pair: tuple[float, float], split: tuple[tuple[int, ...], ...]) -> bool:
        held = zip(pair, split, strict=True)
        return not sums or all(len(ranks) == 1 or not np.isfinite(v) for v, ranks in held)

    cases = [
        (pair, split)
        for pair in _meetings(name, op)
        for split in _splits(size)
        if order_free(pair, split)
    ]
    parts = 2 if name == "complex64" and sums else 1
    count = size * -(-len(cases) * parts // size)  # sum_scatter: a multiple of the group size
    blocks = [np.zeros(count, np.complex128 if name == "complex64" else np.float64)]
    blocks = [blocks[0].copy() for _ in range(size)]
    for part in range(parts):
        for i, ((first, second), (holders, others)) in enumerate(cases):
            where = part * len(cases) + i
            for ranks, value in ((holders, first), (others, second)):
                for r in ranks:
                    # complex(0, v), not v * 1j: inf * 1j is nan + inf j
                    blocks[r][where] = complex(0, value) if part else value
    return [b.astype(data.np_dtype(name)) for b in blocks]


@pytest.mark.core
@pytest.mark.spec("values", rule="specials")
@pytest.mark.parametrize("op", ["all_sum", "sum_scatter", "all_max", "all_min"])
def test_special_values_meet(backend, world, capabilities, op):
    """Special values meeting at one position on several ranks: +inf with -inf, NaN with +-inf,
    an infinity with the finite extremes, the extremes with each other, on every ordered pair of
    ranks and on the two halves of the group.

    SEMANTICS.md, Values: "Special values follow IEEE 754 arithmetic wherever they are". Sums:
    +inf with -inf gives NaN, NaN with an infinity NaN, an infinity with finite values the
    infinity, +max with +max inf (in every order: the other ranks hold 0). all_max / all_min:
    exact without NaN; where NaN meets other values the result is within the NaN bounds of
    Reductions (NaN, or the extreme of the others), the same choice at every position.
    """
    require_size(world, 2)
    size, rank = world.size(), world.rank()
    problems: list[str | None] = []
    dtypes = FLOATS if op in ("all_sum", "sum_scatter") else data.FLOAT_NAMES
    for name in collective_dtypes(backend, capabilities, op, world, dtypes):
        blocks = _combined(size, name, op)
        label = f"{op} of {name} special values meeting"
        got = _run(backend, op, blocks[rank], world)
        want = reductions.expected(op, blocks, rank)
        if op in ("all_sum", "sum_scatter"):
            problems.append(mismatch(got, want, reductions.tolerance(op, blocks, rank), label))
            continue

        def check(got: np.ndarray = got, blocks: list = blocks, label: str = label) -> str | None:
            if got.shape != blocks[0].shape or got.dtype != blocks[0].dtype:
                return f"{label}: result is {data.describe(got)}"
            nan = np.isnan(np.stack([b.astype(np.float64) for b in blocks])).any(axis=0)
            plain = [np.where(nan, 0, b.astype(np.float64)) for b in blocks]
            found = mismatch(
                np.where(nan, 0, got.astype(np.float64)),
                reductions.expected(op, plain, rank),
                None,
                f"{label} (positions without NaN)",
            )
            choices, bad = _nan_policy(got, blocks, op == "all_max")
            if len({c for c, _ in choices}) > 1:
                bad.append("NaN propagated at some positions and ignored at others")
            return found or (f"{label}: " + "; ".join(bad[:3]) if bad else None)

        problems.append(local(check))
    settle(problems, op)
