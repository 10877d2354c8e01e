"""Hypothesis strategies for spec tests, and per-rank data derived from a shared seed.

Strategies draw only what every rank must agree on (dtype names, shapes, seeds); the data each
rank contributes is computed from the drawn seed and the rank with ``rank_array``, so every rank
can also compute every other rank's input (``world_arrays``) and hence the expected result.
Values encode rank and position (never all ones) so order, slicing and dropped-rank bugs show.

``lockstep`` (re-exported from ``conformance.harness.lockstep``) goes under ``@given``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

from conformance.backend import DTYPE_NAMES, Capabilities, numpy_dtype
from conformance.harness.lockstep import LockstepFailure, lockstep

__all__ = [
    "DTYPE_NAMES",
    "LockstepFailure",
    "dtype_names",
    "lockstep",
    "rank_array",
    "seeds",
    "shapes",
    "value_bound",
    "world_arrays",
]

INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

# Floats are multiples of 1/2 within +-_FLOAT_BOUND: sums over up to 16 ranks stay exact even in
# bfloat16 (8 significant bits), so float reductions can be compared exactly when the spec wants.
# With ``full_precision`` they use every significand bit instead (and sums need the tolerance).
_FLOAT_BOUND = 8
_INT_BOUND = 100


def dtype_names(
    *,
    op: str | None = None,
    capabilities: Capabilities | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> st.SearchStrategy[str]:
    """One of the 14 dtype names; restricted to ``include``, minus ``exclude``, and, given ``op``
    and ``capabilities``, to the dtypes the backend declares for ``op``."""
    names = [n for n in (include or DTYPE_NAMES) if n not in set(exclude)]
    unknown = set(names) - set(DTYPE_NAMES)
    if unknown:
        raise ValueError(f"unknown dtype names {sorted(unknown)}; expected {list(DTYPE_NAMES)}")
    if op is not None and capabilities is not None:
        names = [n for n in names if capabilities.supports(op, n)]
    if not names:
        raise ValueError("dtype_names: no dtype left to draw from")
    return st.sampled_from(names)


def shapes(
    *,
    min_dims: int = 0,
    max_dims: int = 3,
    min_side: int = 0,
    max_side: int = 4,
    first_axis_multiple_of: int | None = None,
) -> st.SearchStrategy[tuple[int, ...]]:
    """Array shapes, including 0-d and empty ones by default. With ``first_axis_multiple_of=k``
    (sum_scatter), shapes have at least one axis and axis 0 is a multiple of k."""
    if first_axis_multiple_of is None:
        return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(
            tuple
        )
    k = first_axis_multiple_of
    if k < 1:
        raise ValueError(f"first_axis_multiple_of must be >= 1, not {k}")
    first = st.integers(min_side // k, max(max_side // k, min_side // k)).map(lambda n: n * k)
    rest = st.lists(
        st.integers(min_side, max_side),
        min_size=max(min_dims - 1, 0),
        max_size=max(max_dims - 1, 0),
    )
    return st.tuples(first, rest).map(lambda pair: (pair[0], *pair[1]))


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``rank_array``."""
    return st.integers(0, 2**32 - 1)


def value_bound(dtype: str, world_size: int) -> int:
    """The magnitude bound of ``rank_array`` values: small enough that summing ``world_size``
    of them cannot overflow ``dtype`` (overflow specs choose their values explicitly)."""
    if dtype in FLOAT_DTYPES or dtype == "complex64":
        return _FLOAT_BOUND
    if dtype == "bool":
        return 1
    info = np.iinfo(numpy_dtype(dtype))
    return max(1, min(_INT_BOUND, int(info.max) // max(world_size, 1)))


def rank_array(
    seed: int,
    rank: int,
    shape: Sequence[int],
    dtype: str,
    *,
    world_size: int = 1,
    full_precision: bool = False,
) -> np.ndarray:
    """The array rank ``rank`` contributes for ``seed``: deterministic, different on every rank and
    at every position, within ``value_bound(dtype, world_size)``. ``full_precision``: floats (and
    both parts of complex64) have every significand bit random, not only multiples of 1/2."""
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng([seed, rank])
    bound = value_bound(dtype, world_size)
    if dtype == "bool":
        values = rng.random(shape) < 0.5
    elif dtype in INTEGER_DTYPES:
        low = 0 if dtype.startswith("u") else -bound
        values = rng.integers(low, bound, size=shape, endpoint=True)
    elif dtype == "complex64":
        part = _full if full_precision else _halves
        values = part(rng, shape, bound, "float32") + 1j * part(rng, shape, bound, "float32")
    else:
        values = (_full if full_precision else _halves)(rng, shape, bound, dtype)
    return np.asarray(values).astype(numpy_dtype(dtype))


def _halves(rng: np.random.Generator, shape: tuple[int, ...], bound: int, dtype: str) -> np.ndarray:
    return rng.integers(-2 * bound, 2 * bound, size=shape, endpoint=True) / 2


def _full(rng: np.random.Generator, shape: tuple[int, ...], bound: int, dtype: str) -> np.ndarray:
    """Uniform in (-bound, bound) with every significand bit of ``dtype`` random (the magnitude
    spans several binades, so small values keep full precision too)."""
    bits = ml_dtypes.finfo(numpy_dtype(dtype)).nmant
    significand = 1 + rng.integers(0, 2**bits, size=shape) / 2**bits
    exponent = rng.integers(-6, int(np.log2(bound)), size=shape)
    sign = rng.choice(np.array([-1.0, 1.0]), size=shape)
    return sign * np.ldexp(significand, exponent)


def world_arrays(
    seed: int, size: int, shape: Sequence[int], dtype: str, *, full_precision: bool = False
) -> list[np.ndarray]:
    """Every rank's ``rank_array`` for a world of ``size`` ranks, in rank order."""
    return [
        rank_array(seed, rank, shape, dtype, world_size=size, full_precision=full_precision)
        for rank in range(size)
    ]
