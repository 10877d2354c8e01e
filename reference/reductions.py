"""Reductions: the element-wise rule for sum, max and min, locally and as MPI ops.

SEMANTICS.md, "Reductions": no promotion; integers wrap around; bool sum and max are logical OR,
bool min is logical AND; complex64 max/min compare lexicographically (real part, then imaginary
part); NaN in max/min is impl-defined and the reference propagates it.

Two paths use the same rule: ``local_reduce`` combines blocks that arrived inline with the agreement
header (small messages), and ``mpi_op`` gives the MPI op for the data phase (large messages).
MPI's predefined ops are used where they already have the rule (integer and complex sum, bool
logic); user-defined ops cover what MPI lacks (float16/bfloat16 arithmetic, NaN-propagating float
max/min, lexicographic complex max/min).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from reference.dtypes import BOOL, COMPLEX, FLOATING, NUMPY_DTYPES

if TYPE_CHECKING:
    from mpi4py import MPI

SUM, MAX, MIN = "sum", "max", "min"


def _lexicographic(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """Element-wise max or min of complex arrays, by real part then imaginary part."""
    if kind == MAX:
        take_a = (a.real > b.real) | ((a.real == b.real) & (a.imag >= b.imag))
    else:
        take_a = (a.real < b.real) | ((a.real == b.real) & (a.imag <= b.imag))
    # A NaN in either part of either operand wins, like the float rule: the comparisons above
    # can be decided by the real parts alone and would otherwise drop an imaginary NaN.
    nan_a = np.isnan(a.real) | np.isnan(a.imag)
    nan_b = np.isnan(b.real) | np.isnan(b.imag)
    return np.where(nan_a | (take_a & ~nan_b), a, b)


def combine(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a (kind) b`` element-wise, in a's dtype: the one rule both paths share."""
    dtype = a.dtype
    if dtype == BOOL:
        return np.logical_and(a, b) if kind == MIN else np.logical_or(a, b)
    if kind == SUM:
        # Integer overflow wraps in numpy's fixed-width arithmetic, as the contract requires.
        return np.add(a, b, dtype=dtype)
    if dtype in COMPLEX:
        return _lexicographic(a, b, kind)
    # np.maximum/np.minimum propagate NaN (the reference's choice for the impl-defined case).
    return np.maximum(a, b) if kind == MAX else np.minimum(a, b)


def local_reduce(kind: str, blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Reduce the ranks' arrays, in rank order, into a new array.

    ``blocks`` is a list of equal arrays or one array stacking them along axis 0. Every rank holds
    the same blocks and runs the same code, so every rank gets bit-identical results whatever the
    floating-point rounding. Binary ufunc calls, not ``ufunc.reduce``: for the few ranks of a
    group they cost a third as much, and they never promote small integers.
    """
    first = blocks[0]
    combine_pair = _pairwise(kind, first.dtype)
    result = combine_pair(first, blocks[1])
    for index in range(2, len(blocks)):
        result = combine_pair(result, blocks[index])
    # 0-d blocks yield numpy scalars; the API returns arrays.
    return result if first.ndim else np.asarray(result)


def combine_into(kind: str, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = a (kind) b`` by the same rule, without a temporary where it is a ufunc.

    ``out`` may be ``a`` or ``b`` itself (element-wise ufuncs allow exact aliasing).
    """
    pair = _pairwise(kind, a.dtype)
    if isinstance(pair, functools.partial):
        out[...] = pair(a, b)
    else:
        pair(a, b, out=out)


@functools.cache
def _pairwise(kind: str, dtype: np.dtype):
    """The element-wise function ``combine`` picks for (kind, dtype), looked up once."""
    if dtype == BOOL:
        ufunc = np.logical_and if kind == MIN else np.logical_or
    elif kind == SUM:
        ufunc = np.add
    elif dtype in COMPLEX:
        return functools.partial(_lexicographic, kind=kind)
    else:
        ufunc = np.maximum if kind == MAX else np.minimum
    return _QUIET(ufunc) if dtype in _OVERFLOWING else ufunc


# float16 and bfloat16 overflow to inf in ordinary sums; that is the specified result, not
# something to warn about. (The decorator form builds its error state once, not per call.)
_OVERFLOWING = frozenset({NUMPY_DTYPES["float16"], NUMPY_DTYPES["bfloat16"]})
_QUIET = np.errstate(over="ignore", invalid="ignore")
_combine_quietly = _QUIET(combine)


def _user_function(kind: str, dtype: np.dtype):
    def apply(inbuf, inoutbuf, datatype) -> None:
        incoming = np.frombuffer(inbuf, dtype=dtype)
        inout = np.frombuffer(inoutbuf, dtype=dtype)
        inout[...] = _combine_quietly(kind, incoming, inout)

    return apply


def has_native_op(kind: str, dtype: np.dtype) -> bool:
    """Whether MPI's predefined ops already have the rule for ``kind`` on ``dtype``.

    Where they do not (float max/min, complex max/min, float16/bfloat16 sums), an MPI reduction
    would call back into Python for every chunk; the collectives then reduce by pairwise exchange
    (``reference.scatter``) instead.
    """
    if dtype == BOOL:
        return True
    if kind == SUM:
        return dtype not in _OVERFLOWING
    return dtype not in FLOATING and dtype not in COMPLEX


@functools.cache
def mpi_op(kind: str, dtype: np.dtype) -> MPI.Op:
    """The MPI op implementing ``kind`` for ``dtype`` (cached; user ops are created once)."""
    from mpi4py import MPI

    if dtype == BOOL:
        return MPI.LAND if kind == MIN else MPI.LOR
    if kind == SUM and dtype not in (NUMPY_DTYPES["float16"], NUMPY_DTYPES["bfloat16"]):
        return MPI.SUM
    if kind != SUM and dtype not in FLOATING and dtype not in COMPLEX:
        return MPI.MAX if kind == MAX else MPI.MIN
    return MPI.Op.Create(_user_function(kind, dtype), commute=True)


@functools.cache
def mpi_datatype(dtype: np.dtype) -> MPI.Datatype:
    """The MPI datatype that reductions of ``dtype`` run on.

    float16 and bfloat16 travel as 16-bit words: MPI only ever applies our user op to them, and a
    2-byte datatype keeps segmented algorithms from splitting an element.
    """
    from mpi4py import MPI

    table = {
        "bool": MPI.C_BOOL,
        "int8": MPI.INT8_T,
        "int16": MPI.INT16_T,
        "int32": MPI.INT32_T,
        "int64": MPI.INT64_T,
        "uint8": MPI.UINT8_T,
        "uint16": MPI.UINT16_T,
        "uint32": MPI.UINT32_T,
        "uint64": MPI.UINT64_T,
        "float16": MPI.UINT16_T,
        "bfloat16": MPI.UINT16_T,
        "float32": MPI.FLOAT,
        "float64": MPI.DOUBLE,
        "complex64": MPI.C_FLOAT_COMPLEX,
    }
    for name, candidate in NUMPY_DTYPES.items():
        if candidate == dtype:
            return table[name]
    raise KeyError(dtype)
