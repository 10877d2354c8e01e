"""Test inputs that encode rank and position, and the results they must produce.

Every rank can build every other rank's contribution (it depends only on rank, shape, dtype and a
salt), so each rank computes the expected result of a collective locally, with numpy, and no
value is ever hard-coded. The values are never all ones or all equal: a result taken from the
wrong rank, the wrong position or the wrong block differs from the expected one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import ml_dtypes
import numpy as np

# The suite's one list of the 14 dtype names, re-exported for the spec modules.
from conformance.backend import DTYPE_NAMES as DTYPE_NAMES

INTEGER_NAMES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
EXACT_NAMES = ("bool", *INTEGER_NAMES)

# 0-d, empty, odd sizes, several dimensions: the shapes every collective is tried on.
SHAPES: tuple[tuple[int, ...], ...] = ((), (0,), (3, 0), (1,), (7,), (3, 5), (2, 3, 4))

# Knuth/Murmur-style odd multipliers: positions and ranks spread over all 64 bits, so a backend
# that truncates, byte-swaps or mixes up signedness changes the value.
_POSITION_MIX = np.uint64(0x9E3779B97F4A7C15)
_RANK_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_SALT_MIX = np.uint64(0x165667B19E3779F9)


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of one of the 14 API dtype names (bfloat16 from ml_dtypes)."""
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def dtype_name(dtype: np.dtype) -> str:
    """The API name of a numpy dtype ('bfloat16' rather than numpy's void-like name)."""
    dtype = np.dtype(dtype)
    return "bfloat16" if dtype == np.dtype(ml_dtypes.bfloat16) else dtype.name


def _positions(shape: Sequence[int]) -> np.ndarray:
    return np.arange(math.prod(shape), dtype=np.uint64).reshape(tuple(shape))


def _hash(shape: Sequence[int], rank: int, salt: int) -> np.ndarray:
    p = _positions(shape)
    with np.errstate(over="ignore"):
        h = (p + np.uint64(1)) * _POSITION_MIX
        salt_bits = np.uint64((salt + 1) % 2**64)
        h = h ^ (np.uint64(rank + 1) * _RANK_MIX) ^ (salt_bits * _SALT_MIX)
        h = h ^ (h >> np.uint64(29))
        return h * _POSITION_MIX


def contribution(rank: int, shape: Sequence[int], name: str, salt: int = 0) -> np.ndarray:
    """Rank ``rank``'s input: a C-contiguous array whose values depend on rank and position.

    Integers cover their whole range (sums overflow and wrap). Floats are small multiples of 1/4,
    exactly representable in every float dtype, so only the summation order can make results
    differ. bool mixes True and False per rank. complex64 has distinct real and imaginary parts.
    """
    shape = tuple(shape)
    h = _hash(shape, rank, salt)
    if name == "bool":
        return ((h >> np.uint64(40)) % np.uint64(3) == 0).astype(np.bool_)
    if name in INTEGER_NAMES:
        return h.astype(np_dtype(name))  # keeps the low bits: full range, both signs
    small = ((h >> np.uint64(33)) % np.uint64(49)).astype(np.float64) / 4.0 - 6.0
    if name in FLOAT_NAMES:
        return small.astype(np_dtype(name))
    if name == "complex64":
        imag = ((h >> np.uint64(11)) % np.uint64(37)).astype(np.float64) / 4.0 - 4.5
        return (small + 1j * imag).astype(np.complex64)
    raise ValueError(f"unknown dtype name {name!r}")


def contributions(size: int, shape: Sequence[int], name: str, salt: int = 0) -> list[np.ndarray]:
    """Every rank's ``contribution``, in rank order."""
    return [contribution(r, shape, name, salt) for r in range(size)]


def _wide(a: np.ndarray) -> np.ndarray:
    """Floats in float64 and complex in complex128, for exact-as-possible expected sums."""
    if a.dtype.kind == "c":
        return a.astype(np.complex128)
    if a.dtype.kind == "f" or a.dtype == np.dtype(ml_dtypes.bfloat16):
        return a.astype(np.float64)
    return a


def expected_sum(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """The element-wise sum over ranks: bool is OR, integers wrap, floats summed in float64."""
    dtype = blocks[0].dtype
    if dtype == np.bool_:
        return np.logical_or.reduce(np.stack(blocks), axis=0)
    if dtype.kind in "iu":
        # numpy integer addition wraps modulo 2**bits, exactly what the rule asks for.
        out = np.zeros(blocks[0].shape, dtype)
        with np.errstate(over="ignore"):
            for b in blocks:
                out = np.asarray(out + b, dtype)
        return out
    total = sum(_wide(b) for b in blocks)
    with np.errstate(over="ignore"):
        return np.asarray(total).astype(dtype)


def _lexicographic(blocks: Sequence[np.ndarray], larger: bool) -> np.ndarray:
    best = blocks[0].copy()
    for b in blocks[1:]:
        if larger:
            better = (b.real > best.real) | ((b.real == best.real) & (b.imag > best.imag))
        else:
            better = (b.real < best.real) | ((b.real == best.real) & (b.imag < best.imag))
        best = np.where(better, b, best)
    return best


def expected_extreme(blocks: Sequence[np.ndarray], larger: bool) -> np.ndarray:
    """all_max (``larger``) or all_min: bool OR/AND, complex lexicographic, NaN propagating."""
    dtype = blocks[0].dtype
    if dtype == np.bool_:
        reduce = np.logical_or if larger else np.logical_and
        return reduce.reduce(np.stack(blocks), axis=0)
    if dtype.kind == "c":
        return _lexicographic(blocks, larger)
    stacked = np.stack([_wide(b) for b in blocks])
    out = np.max(stacked, axis=0) if larger else np.min(stacked, axis=0)
    return np.asarray(out).astype(dtype)


def expected_gather(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """all_gather: blocks concatenated along axis 0 in rank order; 0-d blocks stacked.

    A group of one returns its input unchanged (a 0-d input stays 0-d).
    """
    if len(blocks) == 1:
        return blocks[0].copy()
    if blocks[0].ndim == 0:
        return np.stack(blocks)
    return np.concatenate(blocks, axis=0)


def expected_scatter(blocks: Sequence[np.ndarray], rank: int) -> np.ndarray:
    """sum_scatter on ``rank``: rows ``[rank*c, (rank+1)*c)`` of the sum, ``c = rows // N``.

    A group of one returns its input unchanged (a 0-d input stays 0-d).
    """
    if len(blocks) == 1:
        return blocks[0].copy()
    rows = blocks[0].shape[0] // len(blocks)
    return expected_sum(blocks)[rank * rows : (rank + 1) * rows]


def describe(a: np.ndarray) -> str:
    """How failure messages name an array: ``float32 (5,)``."""
    return f"{dtype_name(a.dtype)} {tuple(a.shape)}"
