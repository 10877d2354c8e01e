"""The collectives: all_sum, all_max, all_min, all_gather and sum_scatter.

SEMANTICS.md, "Size-1 groups", "Reductions", "all_gather", "sum_scatter" and "Cross-rank
agreement". Each call validates its arguments, then runs the agreement round (which also carries
small payloads, see ``reference.agreement``), then, for payloads too large to travel inline, moves
the data on the plane ``reference.dataplane`` picks: one MPI collective straight from the caller's
buffer into the result's buffer, or the shared-memory plane of ``reference.shm``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reference import buffers, deadline, shm
from reference.agreement import agree
from reference.dataplane import segment_for
from reference.dtypes import as_array
from reference.group import Group, cached_default, init
from reference.reductions import (
    MAX,
    MIN,
    SUM,
    has_native_op,
    local_reduce,
    mpi_datatype,
    mpi_op,
)
from reference.scatter import EXCHANGE_FROM, all_reduce_into, sum_scatter_into


def resolve_group(group: Any, op: str) -> Group:
    """``group=None`` is the global group; anything but a Group is a TypeError."""
    if group is None:
        return cached_default() or init()
    if not isinstance(group, Group):
        kind = type(group).__name__
        raise TypeError(f"{op}: group must be a reference.Group or None, got {kind}")
    return group


def _prepare(x: Any, op: str, group: Group) -> tuple[np.ndarray | None, Exception | None]:
    """The input as an array, or the argument error to share with the peers."""
    group._check_usable(op)
    try:
        return as_array(x, op), None
    except (TypeError, ValueError) as error:
        if group._size == 1:
            raise
        return None, error


def _flat_bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


def _wait(group: Group, op: str, request: Any, *buffers_in_use: np.ndarray) -> None:
    """Complete the data phase; at the deadline retire the group and keep the buffers alive.

    An MPI collective cannot be cancelled: a late peer can still make MPI read the input and
    write the output. Holding them in the group keeps the result cache from handing the output
    buffer to anyone else.
    """

    def stalled(pending: list[int], seconds: float) -> TimeoutError:
        group._orphans.append((request, buffers_in_use))
        return group._break(
            f"{op} on {group._label} timed out after {seconds:g} s moving data: a peer stopped "
            "making progress after every rank had arrived"
        )

    deadline.wait_all([request], stalled)


def _through_shm(group: Group, op: str, segment: shm.Segment, move: Any) -> None:
    """Run ``move`` on the shared-memory plane; a stalled peer retires the group and segment.

    Late peers only ever write their own slots of the segment, never a result: the segment is
    kept mapped (in the group's orphans) and never used again.
    """

    def stalled(seconds: float, peers: str) -> TimeoutError:
        group._orphans.append(segment)
        return group._break(
            f"{op} on {group._label} timed out after {seconds:g} s moving data through shared "
            f"memory after every rank had arrived: {peers}"
        )

    shm.run(move, stalled)


def _all_reduce(x: Any, kind: str, op: str, group: Any) -> np.ndarray:
    group = resolve_group(group, op)
    array, error = _prepare(x, op, group)
    if group._size == 1:
        return np.array(array, copy=True)
    inline = agree(group, op, array, error)
    if inline is not None:
        return local_reduce(kind, inline.rows)
    out = buffers.empty(array.shape, array.dtype)
    segment = segment_for(group, op, array.nbytes)
    if segment is not None:
        flat_in, flat_out = array.reshape(-1), out.reshape(-1)
        _through_shm(group, op, segment, lambda: segment.all_reduce(kind, flat_in, flat_out))
        return out
    if not has_native_op(kind, array.dtype) or array.nbytes >= EXCHANGE_FROM:
        # No predefined MPI op has the rule, or the payload is large: reduce by pairwise
        # exchange (reference.scatter), faster than MPICH's allreduce there.
        all_reduce_into(group, op, kind, array, out)
        return out
    datatype = mpi_datatype(array.dtype)
    request = group._comm.Iallreduce(
        [_flat_bytes(array), array.size, datatype],
        [_flat_bytes(out), out.size, datatype],
        mpi_op(kind, array.dtype),
    )
    _wait(group, op, request, array, out)
    return out


def all_sum(x: Any, *, group: Group | None = None, stream: Any = None) -> np.ndarray:
    """Element-wise sum over the group; bool sums are logical OR; integers wrap around.

    Every rank must pass the same shape and dtype; the result has that shape and dtype.
    """
    return _all_reduce(x, SUM, "all_sum", group)


def all_max(x: Any, *, group: Group | None = None, stream: Any = None) -> np.ndarray:
    """Element-wise maximum over the group (bool: OR; complex: lexicographic; NaN propagates)."""
    return _all_reduce(x, MAX, "all_max", group)


def all_min(x: Any, *, group: Group | None = None, stream: Any = None) -> np.ndarray:
    """Element-wise minimum over the group (bool: AND; complex: lexicographic; NaN propagates)."""
    return _all_reduce(x, MIN, "all_min", group)


def all_gather(x: Any, *, group: Group | None = None, stream: Any = None) -> np.ndarray:
    """Concatenate every rank's array along axis 0, in rank order (0-d inputs give shape (N,)).

    At size 1 the input comes back unchanged, a 0-d input staying 0-d.
    """
    group = resolve_group(group, "all_gather")
    array, error = _prepare(x, "all_gather", group)
    if group._size == 1:
        return np.array(array, copy=True)
    inline = agree(group, "all_gather", array, error)
    if inline is not None:
        shape = inline.derived
        if shape is None:
            shape = inline.derived = _gathered_shape(array, group._size)
        # A copy: the stacked view lives in the group's slots, which the next round overwrites.
        return inline.stacked.copy().reshape(shape)
    out = buffers.empty(_gathered_shape(array, group._size), array.dtype)
    segment = segment_for(group, "all_gather", array.nbytes)
    if segment is not None:
        flat_in, flat_out = _flat_bytes(array), _flat_bytes(out)
        _through_shm(group, "all_gather", segment, lambda: segment.all_gather(flat_in, flat_out))
        return out
    request = group._comm.Iallgather(_flat_bytes(array), _flat_bytes(out))
    _wait(group, "all_gather", request, array, out)
    return out


def _gathered_shape(array: np.ndarray, size: int) -> tuple[int, ...]:
    return (size,) if array.ndim == 0 else (array.shape[0] * size, *array.shape[1:])


def _scatter_shape_error(array: np.ndarray, size: int) -> ValueError | None:
    if array.ndim >= 1 and array.shape[0] % size == 0:
        return None
    return ValueError(
        f"[sum_scatter] Invalid shape={array.shape} for a group of size {size}. The first "
        "dimension (axis 0) must be divisible by the group size and the input must have at "
        "least one dimension."
    )


def sum_scatter(x: Any, *, group: Group | None = None, stream: Any = None) -> np.ndarray:
    """Rank r gets rows ``[r*c, (r+1)*c)`` of ``all_sum(x)``, with ``c = x.shape[0] // size``.

    At size 1 the input comes back unchanged. Otherwise ``x`` needs ndim >= 1 and an axis 0
    divisible by the group size (ValueError on every rank if any rank's input is invalid).
    """
    group = resolve_group(group, "sum_scatter")
    array, error = _prepare(x, "sum_scatter", group)
    if group._size == 1:
        return np.array(array, copy=True)
    size, rank = group._size, group._rank
    if error is None:
        error = _scatter_shape_error(array, size)
    inline = agree(group, "sum_scatter", array, error)
    rows = array.shape[0] // size
    if inline is not None:
        own_rows = inline.derived
        if own_rows is None:
            own_rows = inline.derived = list(inline.stacked[:, rank * rows : (rank + 1) * rows])
        return local_reduce(SUM, own_rows)
    out = buffers.empty((rows, *array.shape[1:]), array.dtype)
    segment = segment_for(group, "sum_scatter", array.nbytes)
    if segment is not None:
        flat_in, flat_out = array.reshape(-1), out.reshape(-1)
        _through_shm(group, "sum_scatter", segment, lambda: segment.sum_scatter(flat_in, flat_out))
        return out
    # Not MPI's reduce-scatter: a pairwise exchange, summed here (see reference.scatter).
    sum_scatter_into(group, array, out)
    return out
