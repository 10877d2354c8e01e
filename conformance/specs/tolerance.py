"""Comparing a collective's result with the expected one: exact, or within a float tolerance.

SEMANTICS.md, "Reductions": "Floating sums: reduction order is impl-defined, so float results are
compared with a tolerance scaled by the dtype and the number of ranks (float16 and bfloat16 loose,
float32/64 tight). Integer and bool results are exact."

A sum of N terms in any order is off by at most about (N - 1) * eps * sum(|term|) (each of the
N - 1 additions rounds once), so the bound is that, doubled for slack. Shape and dtype are always
exact; bool results are compared byte by byte (only the bytes 0 and 1 are bool values, and
numpy takes any other byte for True). Comparisons never raise: they return a message (or None),
so every rank reaches the collective check that follows even when its result is malformed.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np

from conformance.specs.data import describe, dtype_name

# Unit roundoff per dtype: the machine epsilon of its significand.
EPSILON: dict[str, float] = {
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
    "float32": 2.0**-23,
    "float64": 2.0**-52,
    "complex64": 2.0**-23,
}


def _as_float64(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return a.astype(np.float32).astype(np.float64)
    return a.astype(np.float64)


def sum_tolerance(blocks: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per-element bound on a sum's rounding error, or None when the sum must be exact."""
    name = dtype_name(blocks[0].dtype)
    if name not in EPSILON:
        return None
    magnitude = sum(np.abs(_as_float64(b)) for b in blocks)
    terms = max(len(blocks) - 1, 1)
    # One rounding of the final result to the dtype, plus one per addition.
    return 2.0 * EPSILON[name] * (terms + 1) * np.asarray(magnitude)


def mismatch(
    got: object, expected: np.ndarray, tolerance: np.ndarray | None = None, what: str = "result"
) -> str | None:
    """Why ``got`` differs from ``expected`` (shape, dtype, values), or None when it matches.

    ``tolerance`` (per element, broadcastable) allows float differences; None means exact.
    NaN matches NaN, and infinities must match exactly.
    """
    if not isinstance(got, np.ndarray):
        return f"{what} is {type(got).__name__}, not an array"
    if got.dtype != expected.dtype or got.shape != expected.shape:
        return f"{what} is {describe(got)}, expected {describe(expected)}"
    if tolerance is None or expected.size == 0:
        if got.dtype.kind == "b":
            # Byte-exact: a bool byte other than 0 or 1 (True + True summed as uint8 is 2)
            # compares equal to True as a bool, yet it is garbage.
            g, e = got.view(np.uint8), expected.view(np.uint8)
            bad_mask = g != e
            if not bad_mask.any():
                return None
            bad = _first_bad(bad_mask)
            return f"{what} differs at {bad}: got the byte {g[bad]}, expected {e[bad]} (bool)"
        exact = got.dtype.kind in "iu"
        bad_mask = (got != expected) if exact else ~_close(got, expected, 0.0)
        if not bad_mask.any():
            return None
        bad = _first_bad(bad_mask)
        return f"{what} differs at {bad}: got {got[bad]!r}, expected {expected[bad]!r}"
    ok = _close(got, expected, tolerance)
    if ok.all():
        return None
    bad = _first_bad(~ok)
    return (
        f"{what} differs beyond tolerance at {bad}: got {got[bad]!r}, expected {expected[bad]!r} "
        f"({int((~ok).sum())} of {ok.size} elements off)"
    )


def _close(got: np.ndarray, expected: np.ndarray, tolerance: np.ndarray | float) -> np.ndarray:
    g, e = _as_float64(got), _as_float64(expected)
    finite = np.isfinite(e)
    with np.errstate(invalid="ignore", over="ignore"):
        near = np.abs(g - e) <= tolerance
    both_nan = np.isnan(g) & np.isnan(e)
    return np.where(finite, near, (g == e) | both_nan)


def _first_bad(bad: np.ndarray) -> tuple[int, ...]:
    index = np.argwhere(np.asarray(bad))
    return tuple(int(i) for i in index[0]) if len(index) else ()
