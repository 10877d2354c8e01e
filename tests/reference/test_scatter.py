"""sum_scatter's pairwise exchange (reference.scatter): rank-order sums, no buffer left writable.

The blocks move point to point and every rank sums its own block locally in rank order, so the
result must equal numpy's sum taken in that order, bit for bit, for floats too; and a timed-out
exchange must never leave MPI writing a buffer that a later result is built on.
"""

from __future__ import annotations

import functools
import hashlib
import time

import numpy as np
import pytest
from transport_helpers import attempt, sync

import reference
from reference import buffers, collectives, dataplane

pytestmark = pytest.mark.mpi(min_size=2)

SHORT = 0.5


@pytest.fixture(autouse=True)
def mpi_data_plane():
    """Every test here exercises the MPI plane's exchange (and delays its internals); under
    ``REFERENCE_DATA_PLANE=shm`` the payloads would never reach it."""
    previous = dataplane.set_data_plane("mpi")
    yield
    dataplane.set_data_plane(previous)


def _arrive_late(monkeypatch, name: str, call):
    """On the slow rank: ``collectives.<name>`` delayed past the others' deadline; the outcome
    of ``call()`` under a deadline long enough to finish (``attempt``'s pair)."""
    real = getattr(collectives, name)

    def late(*args):
        time.sleep(3 * SHORT)
        return real(*args)

    monkeypatch.setattr(collectives, name, late)
    previous = reference.set_timeout(3.0)
    try:
        return call()
    finally:
        reference.set_timeout(previous)
        monkeypatch.undo()


def _give_up(call):
    """On the other ranks: the outcome of ``call()`` under the short deadline."""
    previous = reference.set_timeout(SHORT)
    try:
        return call()
    finally:
        reference.set_timeout(previous)


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16", "float64"])
def test_floats_are_summed_in_rank_order(world, comm, name):
    """Rank r's rows equal ((x0 + x1) + x2) + ... of those rows, bit-identical: the order the
    exchange promises, on inputs whose sums round differently in other orders."""
    dtype = reference.SUPPORTED_DTYPES[reference.DTYPE_NAMES.index(name)]
    rows = 1500  # every rank's block is above the inline limit
    rng = np.random.default_rng(7)
    scale = 10.0 ** rng.integers(-3, 4, size=(comm.size, comm.size * rows))
    data = [
        (rng.standard_normal(comm.size * rows) * scale[r]).astype(dtype) for r in range(comm.size)
    ]
    result = reference.sum_scatter(data[comm.rank], group=world)
    mine = slice(comm.rank * rows, (comm.rank + 1) * rows)
    expected = data[0][mine].copy()
    with np.errstate(over="ignore"):
        for r in range(1, comm.size):
            expected = np.add(expected, data[r][mine], dtype=dtype)
    assert result.dtype == dtype
    assert result.tobytes() == expected.tobytes()


def test_the_result_and_staging_buffers_are_not_recycled_after_a_timeout(world, comm, monkeypatch):
    """A rank arriving late in the exchange writes its blocks into the buffers of the ranks that
    gave up: those buffers must stay out of the pool, so results handed out after the timeout
    keep what their owner wrote; the late rank gets either the right rows or an error."""
    sub = world.split(0)
    slow = comm.size - 1
    rows = 1 << 15  # float32 blocks of 128 KiB: pooled sizes
    x = np.full(comm.size * rows, comm.rank + 1, np.float32)
    call = functools.partial(attempt, reference.sum_scatter, x, group=sub)
    if comm.rank == slow:
        outcome = _arrive_late(monkeypatch, "sum_scatter_into", call)
        sync(comm)
        sync(comm)
        if outcome[0] == "ok":
            total = comm.size * (comm.size + 1) / 2
            assert outcome[1].tolist() == [total] * rows, "the late rank got a wrong sum"
        return
    outcome = _give_up(call)
    # What the next results of the result's and the staging buffer's sizes are built on.
    recycled = [buffers.empty((rows,), np.dtype(np.float32))]
    if comm.size > 2:
        recycled.append(buffers.empty((comm.size - 2, rows), np.dtype(np.float32)))
    for array in recycled:
        array[...] = -1
    sync(comm)  # the late rank sends its blocks now; polling lets MPI deliver them
    time.sleep(0.1)
    sync(comm)
    # Asserted after the syncs, so a failure here never leaves the late rank waiting in one.
    assert outcome[0] == "TimeoutError"
    assert all((array == -1).all() for array in recycled), "a recycled buffer was written"


@pytest.mark.parametrize(
    "op, dtype",
    [("all_max", np.float32), ("all_min", np.complex64), ("all_sum", np.float16)],
)
def test_exchanged_all_reduce_buffers_are_not_recycled_after_a_timeout(
    world, comm, monkeypatch, op, dtype
):
    """The all-reduces without a native MPI op (exchange, then an in-place Iallgatherv): when a
    rank arrives late, the ranks that gave up never get a recycled buffer that MPI writes later;
    the late rank gets the right result or an error."""
    sub = world.split(0)
    slow = comm.size - 1
    count = 1 << 17  # above the pool's threshold and the inline limit for every dtype here
    x = np.full(count, comm.rank + 1, dtype)
    expected = {"all_max": comm.size, "all_min": 1, "all_sum": comm.size * (comm.size + 1) / 2}
    call = functools.partial(attempt, getattr(reference, op), x, group=sub)
    if comm.rank == slow:
        outcome = _arrive_late(monkeypatch, "all_reduce_into", call)
        sync(comm)
        sync(comm)
        if outcome[0] == "ok":
            assert (outcome[1] == expected[op]).all(), "the late rank got a wrong result"
        return
    outcome = _give_up(call)
    recycled = [buffers.empty((count,), np.dtype(dtype))]
    if comm.size > 2:
        per_block = -(-count // comm.size)
        recycled.append(buffers.empty((comm.size - 2, per_block), np.dtype(dtype)))
    for array in recycled:
        array[...] = -1
    sync(comm)
    time.sleep(0.1)
    sync(comm)
    assert outcome[0] == "TimeoutError"
    assert all((array == -1).all() for array in recycled), "a recycled buffer was written"


@pytest.mark.parametrize("count", [5003, 4099, 1 << 14])
def test_exchanged_max_is_bit_identical_everywhere_with_nan(world, comm, count):
    """float max by exchange: uneven blocks, NaN from any rank propagates, and every rank holds
    the same bytes as numpy's maximum folded in rank order."""
    data = []
    for r in range(comm.size):
        x = ((np.arange(count) * (r + 3)) % 11 - 5).astype(np.float32) * 0.5
        x[(np.arange(count) % (comm.size + 2)) == r] = np.nan
        data.append(x)
    result = reference.all_max(data[comm.rank], group=world)
    expected = data[0]
    for x in data[1:]:
        expected = np.maximum(expected, x)
    assert result.tobytes() == expected.tobytes()
    everyone = comm.allgather(result.tobytes())
    assert all(other == everyone[0] for other in everyone)


@pytest.mark.parametrize(
    "op, name", [("all_sum", "int32"), ("all_sum", "float32"), ("all_max", "int16")]
)
def test_large_all_reduces_with_native_ops_go_by_exchange(world, comm, monkeypatch, op, name):
    """From EXCHANGE_FROM bytes even reductions MPI has a native op for take the exchange: the
    result is the rule's (integer sums wrap), folded in rank order, the same bytes everywhere."""
    from reference import scatter

    dtype = np.dtype(name)
    count = scatter.EXCHANGE_FROM // dtype.itemsize + 7  # uneven blocks at every group size
    calls = []
    real = collectives.all_reduce_into
    monkeypatch.setattr(collectives, "all_reduce_into", lambda *a: calls.append(1) or real(*a))

    def make(rank: int) -> np.ndarray:
        x = ((np.arange(count) * (rank + 5)) % 97).astype(dtype)
        if dtype.kind == "i":
            x[::5] = np.iinfo(dtype).max - rank
        return x

    result = getattr(reference, op)(make(comm.rank), group=world)
    fold = np.add if op == "all_sum" else np.maximum
    expected = make(0)
    for r in range(1, comm.size):
        expected = fold(expected, make(r), dtype=dtype)
    assert calls == [1]
    assert result.tobytes() == expected.tobytes()
    everyone = comm.allgather(hashlib.sha256(result.tobytes()).hexdigest())
    assert len(set(everyone)) == 1
