"""Recycled result buffers (reference.buffers): reuse only when nothing refers to them."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from reference import buffers

# An odd size well above the caching threshold, unlikely to be used by any other test's results.
COUNT = 3 * 1024 * 7 + 5


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def fresh_address(dtype=np.float32) -> int:
    """The address a new request gets, after dropping everything the test held."""
    gc.collect()
    probe = buffers.empty((COUNT,), np.dtype(dtype))
    where = address(probe)
    del probe
    return where


def test_small_arrays_are_never_shared():
    """Below the threshold every call gets its own memory."""
    a = buffers.empty((16,), np.dtype(np.float64))
    b = buffers.empty((16,), np.dtype(np.float64))
    assert not np.shares_memory(a, b)


def test_an_idle_buffer_is_reused():
    """Once the caller drops the result, the next request of that size gets the same memory."""
    first = fresh_address()
    assert fresh_address() == first


@pytest.mark.parametrize(
    "keep",
    [
        lambda a: a,
        lambda a: a[10:20],
        lambda a: a.reshape(-1, 1),
        lambda a: a.view(np.uint8),
        lambda a: a.T,
        lambda a: memoryview(a),
    ],
    ids=["result", "slice", "reshape", "byte view", "transpose", "memoryview"],
)
def test_a_live_result_or_view_keeps_its_buffer(keep):
    """A result, or any view of it, that is still alive keeps its memory out of reuse."""
    result = buffers.empty((COUNT,), np.dtype(np.float32))
    result[...] = np.arange(COUNT)
    held = keep(result)
    where = address(result)
    del result
    gc.collect()
    other = buffers.empty((COUNT,), np.dtype(np.float32))
    other[...] = -1
    assert address(other) != where
    # The kept view still reads what was written through the original result.
    expected = np.arange(COUNT, dtype=np.float32)
    assert np.array_equal(np.asarray(held), np.asarray(keep(expected)))
    del other


def test_a_buffer_is_reused_across_dtypes_of_the_same_byte_size():
    """The cache is by bytes: float32 and int32 results of one size share an idle buffer."""
    first = fresh_address(np.float32)
    assert fresh_address(np.int32) == first


def test_results_have_the_requested_shape_and_dtype():
    """empty() gives C-contiguous, writeable arrays of exactly the asked shape and dtype."""
    for shape, dtype in (((COUNT,), np.float32), ((3, COUNT), np.int16), ((COUNT, 2), np.bool_)):
        array = buffers.empty(shape, np.dtype(dtype))
        assert array.shape == shape and array.dtype == dtype
        assert array.flags.c_contiguous and array.flags.writeable


# Above the huge-page threshold: an anonymous mapping advised for transparent huge pages.
HUGE_COUNT = (buffers._HUGE_FROM + 3 * 4096) // 4


def test_large_buffers_are_aligned_to_huge_pages_and_reused():
    """Buffers of at least _HUGE_FROM bytes start on a 2 MiB boundary and are recycled too."""
    gc.collect()
    first = buffers.empty((HUGE_COUNT,), np.dtype(np.float32))
    where = address(first)
    assert where % (2 << 20) == 0
    first[...] = 3
    del first
    gc.collect()
    again = buffers.empty((HUGE_COUNT,), np.dtype(np.float32))
    assert address(again) == where
    del again


@pytest.mark.parametrize("count", [COUNT, HUGE_COUNT], ids=["heap", "mapped"])
def test_the_pool_grows_to_the_working_set_and_never_hands_out_a_held_result(count):
    """A caller holding k results of one size gets k + 1 distinct buffers, each keeping what was
    written into it, and the first one dropped is the one handed out next."""
    gc.collect()
    held = []
    for value in range(4):
        result = buffers.empty((count,), np.dtype(np.float32))
        result[...] = value
        held.append(result)
    assert len({address(r) for r in held}) == 4
    for value, result in enumerate(held):
        assert (result == value).all()
    dropped = address(held[1])
    del held[1], result
    gc.collect()
    reused = buffers.empty((count,), np.dtype(np.float32))
    assert address(reused) == dropped
    reused[...] = -1
    assert [float(r[0]) for r in held] == [0.0, 2.0, 3.0]
