"""Result arrays for large outputs: a pool of pre-faulted buffers, recycled once let go of.

Every call returns a new array, but a fresh multi-megabyte allocation costs page faults that can
take longer than the transfer itself (measured here: a 1 MiB all_sum went from 0.3 ms to 1.0 ms).
Like MLX's own buffer cache, the pool keeps recently used buffers and hands one out again only
when nothing outside the pool refers to it any more: every array returned is a view whose
``base`` is the pooled buffer, so a live result, or any view of it, keeps its buffer out of
reuse. The pool grows to the working set (a caller holding k results of one size while asking
for the next one gets k + 1 buffers), up to ``_MOST_BUFFERS`` and ``_MOST_BYTES``.

Buffers of at least ``_HUGE_FROM`` bytes are anonymous mappings aligned to 2 MiB and advised as
transparent huge pages (Linux ``MADV_HUGEPAGE``): one fault and one TLB entry per 2 MiB instead
of 512. A caller that alternates between results of one size (the usual loop: the previous
result is alive while the next call runs) writes to buffers that are no longer in the CPU caches;
huge pages measurably cut that cost at 4 and 16 MiB (docs/benchmarks.md).

Every buffer is a mapping of its own, never memory from malloc: on the MPICH wheel, transfers
between ranks of one node from or into malloc's heap ran up to 3.5x slower than the same
transfers on pages of their own (a 64 KiB ping-pong 33 against 10 us; 256 KiB all_sum 240 against
68 us, docs/benchmarks.md). ``mapped`` gives the other buffers MPI touches the same pages.

Buffers that a timed-out transfer may still write are referenced by the group's orphans, so
they are never idle and never handed out again.
"""

from __future__ import annotations

import math
import mmap
import sys

import numpy as np

_SMALLEST_CACHED = 64 * 1024
_MOST_BUFFERS = 8
_MOST_BYTES = 1 << 30
_HUGE_PAGE = 2 << 20
_HUGE_FROM = _HUGE_PAGE
_ADVISE_HUGE = getattr(mmap, "MADV_HUGEPAGE", None)

_buffers: list[np.ndarray] = []
# What sys.getrefcount reports for a buffer referenced only by the pool list, during the scan.
_UNREFERENCED = 3


def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array, on a recycled buffer when the size is large."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _SMALLEST_CACHED:
        return np.empty(shape, dtype)
    for raw in _buffers:
        if raw.nbytes == nbytes and sys.getrefcount(raw) <= _UNREFERENCED:
            return raw.view(dtype).reshape(shape)
    raw = mapped(nbytes)
    _buffers.append(raw)
    _evict()
    return raw.view(dtype).reshape(shape)


def mapped(nbytes: int) -> np.ndarray:
    """``nbytes`` of zeroed memory on pages of its own (an anonymous mapping, on huge pages from
    ``_HUGE_FROM``), every page faulted in: the pool's buffers and any other buffer MPI reads or
    writes (see the module docstring)."""
    huge = nbytes >= _HUGE_FROM and _ADVISE_HUGE is not None
    extra = _HUGE_PAGE if huge else 0
    region = mmap.mmap(-1, max(nbytes, 1) + extra, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    skip = 0
    if huge:
        try:
            region.madvise(_ADVISE_HUGE)
        except OSError:  # THP disabled or unsupported: ordinary pages still work
            pass
        probe = np.frombuffer(region, np.uint8, count=1)
        skip = -probe.__array_interface__["data"][0] % _HUGE_PAGE
        del probe
    # Straight from the mapping, not a slice of another array: numpy then makes ``raw`` the
    # base of every view of it, which is what the reuse check counts.
    raw = np.frombuffer(region, np.uint8, count=nbytes, offset=skip)
    raw[:: mmap.PAGESIZE] = 0
    return raw


def _evict() -> None:
    while len(_buffers) > _MOST_BUFFERS or sum(b.nbytes for b in _buffers) > _MOST_BYTES:
        idle = [i for i, raw in enumerate(_buffers) if sys.getrefcount(raw) <= _UNREFERENCED]
        if not idle:
            return
        del _buffers[idle[0]]
