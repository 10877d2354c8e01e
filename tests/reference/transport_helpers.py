"""Helpers shared by the tests of the reference transport (imported by module name)."""

from __future__ import annotations

import time

import numpy as np

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


def world_data(size: int, shape, dtype, salt: int = 0) -> list[np.ndarray]:
    """Every rank's ``encode`` input, to compute expected results independently."""
    return [encode(r, shape, dtype, salt) for r in range(size)]
