"""Comparing a collective's result with the expected one: exact, or within a float tolerance.

SEMANTICS.md, "Reductions": "Floating sums: reduction order is impl-defined, so float results are
compared with a tolerance scaled by the dtype and the number of ranks (float16 and bfloat16 loose,
float32/64 tight). Integer and bool results are exact."

The tolerance is the worst-case error of summing N terms in any order (Higham, "Accuracy and
Stability of Numerical Algorithms", 4.2): every element of the result passed through at most N - 1
rounded additions, so ``|result - S| <= gamma(N - 1) * sum(|x_i|)`` with ``S`` the exact sum,
``gamma(k) = k*u / (1 - k*u)`` and ``u`` the dtype's unit roundoff (half its machine epsilon).
``u`` is raised by 2**-10 of itself because an addition may round twice, through a format at
least 11 bits wider (float16 through float32, float64 through x87). Accumulating in a wider
format and rounding once at the end stays within the same bound. The result is compared with
the expected array of ``data.expected_sum`` (``S`` rounded to the dtype), so the tolerance adds
that rounding, element by element, exactly as it happened (``S`` itself is known to about 2**-100
through an error-free sum): an exactly representable sum gets no extra room. This is tight enough
to fail a half-precision sum off by one ulp, a float64 sum done in float32, or dropped low
mantissa bytes, and never fails a correctly rounded sum in any order.

Shape and dtype are always exact; bool results are compared byte by byte (only the bytes 0 and 1
are bool values, and numpy takes any other byte for True). Comparisons never raise: they return a
message (or None), so every rank reaches the collective check that follows even when its result
is malformed.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np

from conformance.specs.data import describe, dtype_name, expected_sum

# Machine epsilon per dtype (the spacing of floats at 1.0); the unit roundoff is half of it.
EPSILON: dict[str, float] = {
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
    "float32": 2.0**-23,
    "float64": 2.0**-52,
    "complex64": 2.0**-23,
}
# An addition may round twice, through a format with at least 11 more significand bits.
_DOUBLE_ROUNDING = 1.0 + 2.0**-10


def _as_float64(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return a.astype(np.float32).astype(np.float64)
    return a.astype(np.float64)


def gamma(terms: int, name: str) -> float:
    """Higham's ``gamma(terms)`` for ``name``: the relative error bound of ``terms`` additions."""
    u = EPSILON[name] / 2 * _DOUBLE_ROUNDING
    return terms * u / (1 - terms * u)


def _exact_sum(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The sum of float64 ``parts`` as ``hi + lo`` (Knuth's TwoSum): ``lo`` holds what each
    float64 addition rounded away, so ``hi + lo`` is the exact sum to about 2**-100."""
    hi = parts[0].copy()
    lo = np.zeros_like(hi)
    with np.errstate(invalid="ignore", over="ignore"):
        for x in parts[1:]:
            total = hi + x
            virtual = total - hi
            lo += (hi - (total - virtual)) + (x - virtual)
            hi = total
    return hi, lo


def _real_bound(parts: list[np.ndarray], expected: np.ndarray, name: str) -> np.ndarray:
    hi, lo = _exact_sum(parts)
    magnitude = sum(np.abs(p) for p in parts)
    with np.errstate(invalid="ignore", over="ignore"):
        rounding = np.abs((hi - expected) + lo)  # |S - expected|, 0 where S is representable
        bound = gamma(len(parts) - 1, name) * magnitude + rounding
    return np.asarray(bound * _DOUBLE_ROUNDING)


def sum_tolerance(blocks: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per-element bound on ``|result - data.expected_sum(blocks)|`` for a float sum of
    ``blocks`` (one per rank), or None when the sum must be exact. Zero for a single block."""
    name = dtype_name(blocks[0].dtype)
    if name not in EPSILON:
        return None
    wide = [_as_float64(b) for b in blocks]
    expected = _as_float64(expected_sum(blocks))
    if name != "complex64":
        return _real_bound(wide, expected, name)
    # Complex sums add real and imaginary parts apart; the error's modulus is bounded by theirs.
    real = _real_bound([w.real for w in wide], expected.real, name)
    imag = _real_bound([w.imag for w in wide], expected.imag, name)
    return np.hypot(real, imag)


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
    bad_mask = wrong(got, expected, tolerance)
    if not bad_mask.any():
        return None
    bad = _first_bad(bad_mask)
    if tolerance is not None and expected.size:
        return (
            f"{what} differs beyond tolerance at {bad}: got {got[bad]!r}, expected"
            f" {expected[bad]!r} ({int(bad_mask.sum())} of {bad_mask.size} elements off)"
        )
    if got.dtype.kind == "b":
        g, e = got.view(np.uint8), expected.view(np.uint8)
        return f"{what} differs at {bad}: got the byte {g[bad]}, expected {e[bad]} (bool)"
    return f"{what} differs at {bad}: got {got[bad]!r}, expected {expected[bad]!r}"


def wrong(got: np.ndarray, expected: np.ndarray, tolerance: np.ndarray | None = None) -> np.ndarray:
    """Which elements of ``got`` (``expected``'s dtype and shape) are wrong, as a boolean mask:
    ``mismatch``'s rule, element by element (so it may be applied to any subset of them)."""
    if tolerance is None or expected.size == 0:
        if got.dtype.kind == "b":
            # Byte-exact: a bool byte other than 0 or 1 (True + True summed as uint8 is 2)
            # compares equal to True as a bool, yet it is garbage.
            return np.asarray(got.view(np.uint8) != expected.view(np.uint8))
        if got.dtype.kind in "iu":
            return np.asarray(got != expected)
        return ~_close(got, expected, 0.0)
    return ~_close(got, expected, tolerance)


def _words(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a``'s bytes as 8-byte words and the bytes past the last whole word (comparing words
    is twice as fast as comparing bytes, and equal words are equal bytes)."""
    raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    whole = raw.shape[0] - raw.shape[0] % 8
    return raw[:whole].view(np.uint64), raw[whole:]


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` have the same dtype, shape and bytes (every bit counts)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    (aw, at), (bw, bt) = _words(a), _words(b)
    return bool(np.array_equal(aw, bw) and np.array_equal(at, bt))


def bits_mismatch(got: object, expected: np.ndarray, what: str = "result") -> str | None:
    """Why ``got`` differs from ``expected`` in shape, dtype or any bit (NaN payloads and the
    sign of zero included), or None when it is bit for bit the same."""
    if not isinstance(got, np.ndarray):
        return f"{what} is {type(got).__name__}, not an array"
    if got.dtype != expected.dtype or got.shape != expected.shape:
        return f"{what} is {describe(got)}, expected {describe(expected)}"
    word = np.dtype(f"u{got.dtype.itemsize}")
    g = np.array(got, order="C").view(word)
    e = np.array(expected, order="C").view(word)
    bad_mask = g != e
    if not bad_mask.any():
        return None
    bad = _first_bad(bad_mask)
    digits = 2 * got.dtype.itemsize
    return (
        f"{what} differs in its bits at {bad}: got {got[bad]!r} (0x{int(g[bad]):0{digits}x}), "
        f"expected {expected[bad]!r} (0x{int(e[bad]):0{digits}x}) "
        f"({int(bad_mask.sum())} of {bad_mask.size} elements differ)"
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
