"""What a benchmarked size means per op, and the bandwidths derived from a time.

Sizes follow nccl-tests: the *size* of a collective is the bytes of its full (global) buffer,
the output of all-gather and the input of reduce-scatter, so the per-rank input of all_gather is
``size / n``. Bandwidths are in GB/s (10^9 bytes per second):

- algbw = size / time
- busbw = algbw x 2(n-1)/n for all-reduce, algbw x (n-1)/n for all-gather and reduce-scatter,
  algbw for point-to-point (the nccl-tests "bus bandwidth", comparable with the link speed).

Point-to-point follows OSU: osu_latency's latency is half the round-trip time of a ping-pong;
osu_bw's bandwidth is bytes moved by a window of back-to-back messages over the time until the
receiver's acknowledgement arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")
P2P = ("sendrecv",)
OPS = (*COLLECTIVES, *P2P)
DEFAULT_OPS = ("all_sum", "all_gather", "sum_scatter", "sendrecv")

_ALL_REDUCE = ("all_sum", "all_max", "all_min")


@dataclass(frozen=True)
class Shape:
    """Element counts of one op at one size on ``n`` ranks.

    ``nbytes`` is the size actually moved (the requested size rounded down to whole elements,
    and to a multiple of ``n`` elements where the op splits its buffer, never below that minimum).
    """

    op: str
    n: int
    itemsize: int
    in_count: int
    out_count: int
    nbytes: int


def shape_for(op: str, size: int, n: int, itemsize: int) -> Shape:
    """Per-rank input and output element counts of ``op`` for a requested size in bytes."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {list(OPS)}")
    if n < 1 or itemsize < 1 or size < 1:
        raise ValueError(f"size, n and itemsize must be positive: {size=}, {n=}, {itemsize=}")
    total = max(1, size // itemsize)
    if op == "all_gather":
        per_rank = max(1, total // n)
        return Shape(op, n, itemsize, per_rank, per_rank * n, per_rank * n * itemsize)
    if op == "sum_scatter":
        per_rank = max(1, total // n)
        return Shape(op, n, itemsize, per_rank * n, per_rank, per_rank * n * itemsize)
    return Shape(op, n, itemsize, total, total, total * itemsize)


def bus_factor(op: str, n: int) -> float:
    """busbw / algbw for ``op`` on ``n`` ranks (nccl-tests; 1 for point-to-point)."""
    if op in _ALL_REDUCE:
        return 2.0 * (n - 1) / n
    if op in ("all_gather", "sum_scatter"):
        return (n - 1) / n
    if op in P2P:
        return 1.0
    raise ValueError(f"unknown op {op!r}; expected one of {list(OPS)}")


def algbw(nbytes: int, seconds: float) -> float:
    """Algorithm bandwidth in GB/s: bytes of the op's size over the time per op."""
    if seconds <= 0:
        return float("inf")
    return nbytes / seconds / 1e9


def busbw(op: str, n: int, nbytes: int, seconds: float) -> float:
    """Bus bandwidth in GB/s (nccl-tests definition)."""
    return algbw(nbytes, seconds) * bus_factor(op, n)
