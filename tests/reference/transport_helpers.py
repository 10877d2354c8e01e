"""Helpers shared by the tests of the reference transport (imported by module name)."""

from __future__ import annotations

import time

import numpy as np

import reference
from reference.dtypes import NUMPY_DTYPES

DTYPES = list(NUMPY_DTYPES)


def sync(comm) -> None:
    """A barrier that sleeps while waiting, so waiting ranks leave the cores to the others."""
    request = comm.Ibarrier()
    pause = 1e-4
    while not request.Test():
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


def allgather(comm, value):
    """Every rank's ``value``, in rank order (after a sleeping barrier)."""
    sync(comm)
    return comm.allgather(value)


def encode(rank: int, shape, dtype, salt: int = 0) -> np.ndarray:
    """Data that encodes the rank and each element's position, in any of the 14 dtypes.

    Values stay small so that integer, float16 and bfloat16 sums over four ranks are exact.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    position = np.arange(count, dtype=np.int64)
    if dtype == np.bool_:
        flat = ((position + salt) >> (rank % 8)) & 1 == 1
    elif dtype.kind == "c":
        flat = ((position + salt) % 7 + 0.25 * rank) + 1j * ((position * 3 + rank) % 5)
    elif dtype.kind in "f" or dtype.name == "bfloat16":
        flat = (position + salt) % 8 + 0.25 * rank
    else:
        flat = (position + salt) % 16 + 17 * rank
    return np.asarray(flat).astype(dtype).reshape(shape)


def attempt(fn, *args, **kwargs):
    """``("ok", result)`` or ``(error type name, message)``: outcomes to compare across ranks."""
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as error:
        return type(error).__name__, str(error)


def attempt_within(seconds: float, fn, *args, **kwargs):
    """``attempt`` with the reference's deadline set to ``seconds`` for this one call."""
    previous = reference.set_timeout(seconds)
    try:
        return attempt(fn, *args, **kwargs)
    finally:
        reference.set_timeout(previous)


def world_data(size: int, shape, dtype, salt: int = 0) -> list[np.ndarray]:
    """Every rank's ``encode`` input, to compute expected results independently."""
    return [encode(r, shape, dtype, salt) for r in range(size)]


def is_nan(array: np.ndarray) -> np.ndarray:
    """Element-wise NaN test for any dtype (complex: NaN in either part; others: never for ints)."""
    if array.dtype.kind in "biu":
        return np.zeros(array.shape, bool)
    if array.dtype.kind == "c":
        return np.isnan(array.real) | np.isnan(array.imag)
    return np.isnan(array.astype(np.float64))


def expected_reduction(op: str, data: list[np.ndarray]) -> np.ndarray:
    """What ``op`` (all_sum, all_max, all_min) must return for these per-rank inputs.

    Computed without the reference: integers in Python ints wrapped to the dtype's width, floats in
    float64 (exact on the tests' data), complex max/min by sorting (real, imag), NaN propagating.
    """
    dtype = data[0].dtype
    shape = data[0].shape
    flat = np.stack([d.reshape(-1) for d in data])
    if dtype == np.bool_:
        result = flat.all(axis=0) if op == "all_min" else flat.any(axis=0)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        span = info.max - info.min + 1
        as_ints = flat.astype(object)
        if op == "all_sum":
            total = as_ints.sum(axis=0)
            result = np.array([(int(v) - info.min) % span + info.min for v in total], dtype)
        else:
            result = (as_ints.max(axis=0) if op == "all_max" else as_ints.min(axis=0)).astype(dtype)
    elif dtype.kind == "c":
        wide = flat.astype(np.complex128)
        if op == "all_sum":
            result = wide.sum(axis=0)
        else:
            order = np.lexsort((wide.imag, wide.real), axis=0)
            pick = order[-1] if op == "all_max" else order[0]
            result = wide[pick, np.arange(wide.shape[1])]
            result[is_nan(wide).any(axis=0)] = complex("nan+nanj")
        result = result.astype(dtype)
    else:
        wide = flat.astype(np.float64)
        reduce = {"all_sum": np.sum, "all_max": np.max, "all_min": np.min}[op]
        with np.errstate(over="ignore"):
            result = reduce(wide, axis=0).astype(dtype)
    return result.reshape(shape)


def same_values(actual: np.ndarray, expected: np.ndarray) -> bool:
    """Same dtype and shape, and equal values with NaN matching NaN at the same positions."""
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    nan_a, nan_e = is_nan(actual), is_nan(expected)
    return bool(np.array_equal(nan_a, nan_e) and np.array_equal(actual[~nan_a], expected[~nan_e]))
