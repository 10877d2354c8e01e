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


def _hash(shape: Sequence[int], rank: int | Sequence[int], salt: int, start: int = 0) -> np.ndarray:
    """The mixed 64-bit hash of every position (counted from ``start``) for ``rank``, ``salt``;
    built in place (one array, not one per step). With a sequence of ranks: one row per rank,
    each that rank's hash (one pass over all of them)."""
    shape = tuple(shape)
    ranks = np.atleast_1d(np.asarray(rank, dtype=np.uint64))[:, np.newaxis]
    h = np.arange(start + 1, start + 1 + math.prod(shape), dtype=np.uint64)  # position + 1
    with np.errstate(over="ignore"):
        h = h * _POSITION_MIX ^ ((ranks + np.uint64(1)) * _RANK_MIX)
        salt_bits = np.uint64((salt + 1) % 2**64)
        h ^= salt_bits * _SALT_MIX
        h ^= h >> np.uint64(29)
        h *= _POSITION_MIX
    return h.reshape(shape) if np.ndim(rank) == 0 else h.reshape((len(ranks), *shape))


def _values(h: np.ndarray, name: str) -> np.ndarray:
    """``contribution``'s values of ``name`` from the position hashes ``h``."""
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


def contribution(
    rank: int, shape: Sequence[int], name: str, salt: int = 0, start: int = 0
) -> np.ndarray:
    """Rank ``rank``'s input: a C-contiguous array whose values depend on rank and position.

    Integers cover their whole range (sums overflow and wrap). Floats are small multiples of 1/4,
    exactly representable in every float dtype, so only the summation order can make results
    differ. bool mixes True and False per rank. complex64 has distinct real and imaginary parts.
    With ``start`` (1-D): the elements ``[start, start + shape[0])`` of a longer input (a
    position's value does not depend on the input's length).
    """
    return _values(_hash(shape, rank, salt, start), name)


def contributions(
    size: int | Sequence[int], shape: Sequence[int], name: str, salt: int = 0
) -> list[np.ndarray]:
    """Every rank's ``contribution``, in rank order; or, for a sequence of ranks, theirs in its
    order (built in one pass: cheaper than one ``contribution`` each for small shapes)."""
    ranks = range(size) if isinstance(size, int) else size
    return list(_values(_hash(shape, list(ranks), salt), name))


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


# -- full-precision and special values (the ``values`` tier) ---------------------------------------
#
# ``contribution``'s floats have at most 7 significant bits, so a backend that narrows them passes
# every test on them. These inputs use every bit of the dtype.


def _rng(rank: int, salt: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([0x5EED, tag, salt, rank])


def _significand(
    rng: np.random.Generator, shape: tuple[int, ...], name: str, low: float, width: float
) -> np.ndarray:
    """Significands in ``[low, low + width)`` with every bit of ``name``'s significand random."""
    bits = ml_dtypes.finfo(np_dtype(name)).nmant
    steps = rng.integers(0, int(width * 2**bits), size=shape, dtype=np.int64)
    return low + steps.astype(np.float64) * 2.0**-bits


def full_mantissa(
    rank: int, shape: Sequence[int], name: str, salt: int = 0, exponents: tuple[int, int] = (-8, 8)
) -> np.ndarray:
    """Rank ``rank``'s floats ``+-m * 2**e``: every significand bit random, ``e`` uniform in
    ``exponents`` (half-open), both signs. complex64: real and imaginary parts each so. Other
    dtypes: ``contribution`` (integers already cover their whole range)."""
    shape = tuple(shape)
    if name not in (*FLOAT_NAMES, "complex64"):
        return contribution(rank, shape, name, salt)
    part = "float32" if name == "complex64" else name
    rng = _rng(rank, salt, 1)

    def one() -> np.ndarray:
        sign = rng.choice(np.array([-1.0, 1.0]), size=shape)
        exponent = rng.integers(*exponents, size=shape)
        return sign * np.ldexp(_significand(rng, shape, part, 1.0, 1.0), exponent)

    if name == "complex64":
        return (one() + 1j * one()).astype(np.complex64)
    return one().astype(np_dtype(name))


def exactly_summable(size: int, shape: Sequence[int], name: str, salt: int = 0) -> list[np.ndarray]:
    """Every rank's full-mantissa floats whose sums are exact in any order.

    At each position one rank (rotating with the position) holds ``+-m * 2**e`` with ``m`` in
    [1.25, 1.75) and every significand bit random; the others hold integer multiples of that
    value's ulp, together less than a quarter of it. Every partial sum, in any order, is then a
    multiple of the ulp below ``2**(e+1)``: representable, so a correct sum is exact. ``e`` spans
    the dtype's normal range (bfloat16 far past float16's). complex64: both parts so.
    """
    shape = tuple(shape)
    part = "float32" if name == "complex64" else name
    info = ml_dtypes.finfo(np_dtype(part))
    bits = info.nmant
    rng = _rng(size, salt, 2)
    count = math.prod(shape)

    def parts() -> list[np.ndarray]:
        exponent = rng.integers(info.minexp, info.maxexp - 2, size=count)
        ulp = np.ldexp(1.0, exponent - bits)
        holder = np.arange(count) % size
        limit = max(2 ** (bits - 2) // max(size - 1, 1) - 1, 1)
        blocks = []
        for r in range(size):
            small = rng.integers(-limit, limit, size=count, endpoint=True) * ulp
            sign = rng.choice(np.array([-1.0, 1.0]), size=count)
            big = sign * np.ldexp(_significand(rng, (count,), part, 1.25, 0.5), exponent)
            blocks.append(np.where(holder == r, big, small).reshape(shape))
        return blocks

    if name == "complex64":
        return [
            (re + 1j * im).astype(np.complex64) for re, im in zip(parts(), parts(), strict=True)
        ]
    return [b.astype(np_dtype(name)) for b in parts()]


def random_bits(rank: int, shape: Sequence[int], name: str, salt: int = 0) -> np.ndarray:
    """Rank ``rank``'s array with every bit random: for floats every kind of value appears (NaN
    with payloads, infinities, subnormals, -0.0). bool: ``contribution`` (only 0 and 1 are bool)."""
    shape = tuple(shape)
    if name == "bool":
        return contribution(rank, shape, name, salt)
    rng = _rng(rank, salt, 3)
    if name == "complex64":
        raw = rng.integers(0, 2**32, size=(*shape, 2), dtype=np.uint32)
        return raw.view(np.complex64).reshape(shape)
    dtype = np_dtype(name)
    word = np.dtype(f"uint{8 * dtype.itemsize}")
    raw = rng.integers(0, np.iinfo(word).max, size=shape, dtype=word, endpoint=True)
    return raw.view(dtype)


def special_values(name: str) -> np.ndarray:
    """The values at the edges of ``name``: for floats NaN, +-inf, -0.0, the extreme subnormals,
    the smallest normal and +-max; for integers min and max (and for unsigned, 2**(bits-1) and
    above, which a signed reading takes for negative)."""
    dtype = np_dtype(name)
    if name == "bool":
        return np.array([True, False])
    if name in INTEGER_NAMES:
        info = np.iinfo(dtype)
        top = int(info.max)
        extra = (
            [top // 2 + 1, top // 2 + 2, top - 1]
            if name.startswith("u")
            else [-1, int(info.min) + 1]
        )
        return np.array([int(info.min), top, *extra], dtype=dtype)
    part = np_dtype("float32" if name == "complex64" else name)
    info = ml_dtypes.finfo(part)
    tiny = float(info.smallest_subnormal)
    reals = np.array(
        [
            np.nan,
            np.inf,
            -np.inf,
            -0.0,
            tiny,
            -tiny,
            float(info.smallest_normal) - tiny,
            float(info.smallest_normal),
            float(info.max),
            float(info.min),
        ],
        dtype=np.float64,
    )
    if name == "complex64":
        # Set apart: complex arithmetic would turn 1j * inf into nan + inf j.
        out = np.zeros(2 * len(reals), np.complex64)
        out.real[: len(reals)] = reals
        out.real[len(reals) :], out.imag[len(reals) :] = 1.0, reals
        return out
    return reals.astype(dtype)


def placements(size: int) -> list[tuple[int, ...]]:
    """Which ranks hold a special value: each rank alone, in turn; then several at once (all of
    them, the even ranks, the first and the last)."""
    found = [(r,) for r in range(size)]
    for ranks in (tuple(range(size)), tuple(range(0, size, 2)), (0, size - 1)):
        if len(set(ranks)) > 1 and ranks not in found:
            found.append(ranks)
    return found


def placed(
    size: int, name: str, values: np.ndarray, background: list[np.ndarray]
) -> tuple[list[np.ndarray], list[tuple[object, tuple[int, ...]]]]:
    """Every rank's 1-d input with each of ``values`` put on each of ``placements(size)``.

    Position ``i`` of the result belongs to ``cases[i] = (value, ranks)``: the ranks in ``ranks``
    hold ``value`` there, the others hold ``background[rank][i]`` (``background`` is one 1-d array
    per rank, at least as long as the cases; positions past the cases keep the background).
    """
    cases = [(v, ranks) for v in values for ranks in placements(size)]
    if min(len(b) for b in background) < len(cases):
        raise ValueError(f"placed: background shorter than the {len(cases)} cases")
    blocks = [np.array(b, dtype=np_dtype(name)) for b in background]
    for i, (value, ranks) in enumerate(cases):
        for r in ranks:
            blocks[r][i] = value
    return blocks, cases


def describe(a: np.ndarray) -> str:
    """How failure messages name an array: ``float32 (5,)``."""
    return f"{dtype_name(a.dtype)} {tuple(a.shape)}"
