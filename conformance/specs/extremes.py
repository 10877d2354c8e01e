"""The checks all_max and all_min share (test_all_max_all_min.py calls them, once per op).

Each function runs one rule of SEMANTICS.md "Reductions" for ``op`` in ("all_max", "all_min") and
settles its findings collectively.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.specs import data, reductions
from conformance.specs.calls import differs_between_ranks, settle
from conformance.specs.groups import singleton_group
from conformance.specs.tolerance import mismatch


def values(backend: Any, world: Any, control: Any, capabilities: Any, op: str, dtype: str) -> None:
    size = world.size()
    if not capabilities.supports(op, dtype):
        x = data.contribution(world.rank(), (3,), dtype)
        reductions.unsupported_raises(backend, op, x, world)
        return
    cases = [
        (f"{dtype} {shape}", data.contributions(size, shape, dtype, salt=i))
        for i, shape in enumerate(data.SHAPES)
    ]
    reductions.check(backend, control, op, world, cases)


def shape_dtype(backend: Any, world: Any, control: Any, capabilities: Any, op: str) -> None:
    problems = []
    for dtype in reductions.supported_dtypes(backend, capabilities, op, world):
        x = data.contribution(world.rank(), (4, 3), dtype)
        got = reductions.run(backend, op, x, world)
        if (got.dtype, got.shape) != (x.dtype, x.shape):
            problems.append(f"{data.describe(x)} in, {data.describe(got)} out")
        problems.append(differs_between_ranks(control, got, f"{op} of {dtype}"))
    settle(problems)


def bool_pattern(backend: Any, world: Any, control: Any, op: str) -> None:
    size = world.size()
    # position p holds bit r of p on rank r: every combination of contributions appears
    width = 2 ** min(size, 12)
    blocks = [((np.arange(width) >> (r % 12)) & 1).astype(bool) for r in range(size)]
    got = reductions.run(backend, op, blocks[world.rank()], world)
    logical = np.logical_or if op == "all_max" else np.logical_and
    want = logical.reduce(np.stack(blocks), axis=0)
    settle([mismatch(got, want), differs_between_ranks(control, got)])


def complex_lexicographic(backend: Any, world: Any, control: Any, op: str) -> None:
    size, rank = world.size(), world.rank()

    def block(r: int) -> np.ndarray:
        p = np.arange(24)
        # Even positions tie on the real part (the imaginary part decides); odd positions differ
        # in the real part with imaginary parts that would win a comparison by magnitude.
        real = np.where(p % 2 == 0, (p % 5) - 2.0, ((r * 7 + p) % 5) - 2.0)
        imag = np.where(p % 2 == 0, ((r * 3 + p) % 7) - 3.0, (((p - r) % 5) - 2.0) * 10)
        return (real + 1j * imag).astype(np.complex64)

    blocks = [block(r) for r in range(size)]
    got = reductions.run(backend, op, blocks[rank], world)
    want = data.expected_extreme(blocks, larger=op == "all_max")
    settle([mismatch(got, want, None, f"{op} complex64"), differs_between_ranks(control, got)])


def nan_bounds(backend: Any, world: Any, capabilities: Any, op: str) -> None:
    size, rank = world.size(), world.rank()
    problems: list[str | None] = []
    for dtype in reductions.supported_dtypes(backend, capabilities, op, world, data.FLOAT_NAMES):
        blocks = data.contributions(size, (8,), dtype)
        for r, b in enumerate(blocks):
            b[0] = np.nan  # NaN on every rank
            if r == size - 1:
                b[1] = np.nan  # NaN on one rank only
        got = reductions.run(backend, op, blocks[rank], world)
        problems.append(_nan_finding(got, blocks, op, dtype))
    settle(problems)


def _nan_finding(got: np.ndarray, blocks: list[np.ndarray], op: str, dtype: str) -> str | None:
    if got.shape != blocks[0].shape or got.dtype != blocks[0].dtype:
        return f"{op} {dtype}: result is {data.describe(got)}"
    g = got.astype(np.float64)
    stack = np.stack([b.astype(np.float64) for b in blocks])
    if not np.isnan(g[0]):
        return f"{op} {dtype}: NaN on every rank gave {g[0]}"
    clean = stack[:, 1][~np.isnan(stack[:, 1])]
    if not (np.isnan(g[1]) or (clean.size and clean.min() <= g[1] <= clean.max())):
        return f"{op} {dtype}: NaN on one rank gave {g[1]}, outside the other ranks' values"
    rest = data.expected_extreme([b[2:] for b in blocks], larger=op == "all_max")
    return mismatch(got[2:], rest, None, f"{op} {dtype} (positions without NaN)")


def empty_0d(backend: Any, world: Any, control: Any, capabilities: Any, op: str) -> None:
    size = world.size()
    cases = [
        (f"{dtype} {shape}", data.contributions(size, shape, dtype))
        for dtype in reductions.supported_dtypes(backend, capabilities, op, world)
        for shape in ((), (0,), (3, 0), (0, 3))
    ]
    reductions.check(backend, control, op, world, cases)


def singleton_identity(backend: Any, world: Any, capabilities: Any, op: str) -> None:
    group = singleton_group(world, capabilities)
    dtypes = reductions.supported_dtypes(backend, capabilities, op, group)
    shapes = ((), (5,), (2, 3))
    settle(reductions.identity_alone(backend, op, group, world.rank(), dtypes, shapes))
