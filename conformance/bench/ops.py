"""One benchmark case per (op, size): the backend's calls and the raw mpi4py baseline's calls.

Both sides work on the same numpy input, created once per case; the backend sees it through
``backend.asarray`` (called once, outside the timed loop) and forces each result with
``backend.evaluate`` inside it, so lazy backends (MLX) are timed doing the work. The baseline is
the MPI call a hand-written program would make on preallocated buffers: Allreduce, Allgather,
Reduce_scatter_block, Send/Recv (osu_latency) and Isend/Irecv windows (osu_bw).

Point-to-point runs between ranks 0 and 1 (other ranks only join the barriers). The backend's
``send`` is a blocking call (the reference is eager, MLX's is forced by ``evaluate``), so
osu_bw's window of non-blocking sends becomes a loop of blocking sends; both sides end a window
with the same one-integer acknowledgement on the control communicator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from conformance.backend import own_pages
from conformance.bench.formulas import COLLECTIVES, Shape, shape_for

ACK_TAG = 7001
DATA_TAG = 7002
# osu_bw's window; large messages use fewer so one window stays well under a second.
MAX_WINDOW = 64
WINDOW_BYTES = 16 << 20

_REDUCTION_KINDS = {"all_sum": "SUM", "all_max": "MAX", "all_min": "MIN"}
# dtypes whose reductions raw MPI does natively (float16/bfloat16/bool need user-defined ops,
# which would measure a Python callback rather than the machine's limit).
_MPI_REDUCIBLE = frozenset(
    ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"]
)


def window_for(nbytes: int, max_window: int = MAX_WINDOW) -> int:
    """Messages per osu_bw window: ``max_window``, fewer for large messages (at least 2)."""
    return max(2, min(max_window, WINDOW_BYTES // max(nbytes, 1)))


def make_input(count: int, dtype: np.dtype, rank: int) -> np.ndarray:
    """Per-rank data that encodes rank and position, small enough that sums stay exact."""
    values = np.arange(count, dtype=np.int64) % 7 + rank + 1
    out = page_aligned(count, dtype)
    out[...] = values.astype(dtype)
    return out


def page_aligned(count: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised array on pages of its own (``own_pages``): the baseline's speed must not
    depend on where malloc happened to put its buffers."""
    return own_pages(count * np.dtype(dtype).itemsize).view(dtype)


def baseline_supported(op: str, dtype_name: str) -> bool:
    """Whether raw MPI has a native call for ``op`` on ``dtype_name``."""
    if op in _REDUCTION_KINDS:
        if dtype_name == "complex64":
            return op == "all_sum"
        return dtype_name in _MPI_REDUCIBLE
    return True


class Case:
    """One op at one size on this rank. ``run_backend(k)`` / ``run_baseline(k)`` run k
    iterations; the time per op is the elapsed time over ``k * ops_per_iter``.

    ``timing_rank`` is the rank whose clock defines the time (OSU: rank 0 for point-to-point);
    None means the slowest rank (a collective has completed when its last rank has).
    """

    op: str
    mode: str
    shape: Shape
    size: int = 0  # the size asked for, before rounding to whole elements (Shape.nbytes)
    ops_per_iter: int = 1
    timing_rank: int | None = None
    window: int | None = None
    has_baseline: bool = True

    def run_backend(self, iters: int) -> None:
        raise NotImplementedError

    def run_baseline(self, iters: int) -> None:
        raise NotImplementedError

    def check(self) -> str | None:
        """After at least one iteration of each side: None if the backend's last result equals
        the baseline's (or the expected data), else a message saying what differs."""
        raise NotImplementedError


def _compare(got: np.ndarray, want: np.ndarray, what: str) -> str | None:
    got = np.asarray(got).reshape(-1)
    want = np.asarray(want).reshape(-1)
    if got.shape != want.shape:
        return f"{what}: backend gave {got.size} elements, expected {want.size}"
    if got.dtype != want.dtype:
        return f"{what}: backend gave dtype {got.dtype}, expected {want.dtype}"
    if not np.array_equal(got, want):
        bad = int(np.flatnonzero(got != want)[0])
        return f"{what}: element {bad} is {got[bad]!r}, expected {want[bad]!r}"
    return None


class CollectiveCase(Case):
    """all_sum / all_max / all_min / all_gather / sum_scatter on every rank of the group."""

    mode = "collective"

    def __init__(
        self, op: str, shape: Shape, dtype_name: str, backend: Any, comm: Any, rank: int
    ) -> None:
        from mpi4py import MPI

        self.op = op
        self.shape = shape
        dtype = _numpy_dtype(dtype_name)
        self.x = make_input(shape.in_count, dtype, rank)
        self.out = page_aligned(shape.out_count, dtype)
        self._backend = backend
        self._bx = backend.asarray(self.x)
        self._fn = getattr(backend, op)
        self._last: Any = None
        self.has_baseline = baseline_supported(op, dtype_name)
        self._baseline_ran = False
        self._mpi: Callable[[], None]
        if op in _REDUCTION_KINDS:
            mpi_op = getattr(MPI, _REDUCTION_KINDS[op])
            self._mpi = lambda: comm.Allreduce(self.x, self.out, op=mpi_op)
        elif op == "all_gather":
            send, recv = self.x.view(np.uint8), self.out.view(np.uint8)
            self._mpi = lambda: comm.Allgather([send, MPI.BYTE], [recv, MPI.BYTE])
        else:
            self._mpi = lambda: comm.Reduce_scatter_block(self.x, self.out, op=MPI.SUM)

    def run_backend(self, iters: int) -> None:
        fn, x, evaluate = self._fn, self._bx, self._backend.evaluate
        y = None
        for _ in range(iters):
            y = fn(x)
            evaluate(y)
        self._last = y

    def run_baseline(self, iters: int) -> None:
        call = self._mpi
        for _ in range(iters):
            call()
        self._baseline_ran = True

    def check(self) -> str | None:
        if self._last is None or not self._baseline_ran:
            return None
        return _compare(self._backend.to_numpy(self._last), self.out, self.op)


class LatencyCase(Case):
    """osu_latency: rank 0 sends, rank 1 answers with a message of the same size; the latency
    is half the round trip."""

    mode = "latency"
    ops_per_iter = 2
    timing_rank = 0

    def __init__(self, shape: Shape, dtype_name: str, backend: Any, comm: Any, rank: int) -> None:
        self.op = "sendrecv"
        self.shape = shape
        self._rank = rank
        dtype = _numpy_dtype(dtype_name)
        self.x = make_input(shape.in_count, dtype, rank)
        self.out = page_aligned(shape.in_count, dtype)
        self._expected = make_input(shape.in_count, dtype, 1 - rank) if rank < 2 else None
        self._backend = backend
        self._bx = backend.asarray(self.x)
        self._comm = comm
        self._last: Any = None
        self._sendbuf = self.x.view(np.uint8)
        self._recvbuf = self.out.view(np.uint8)

    def run_backend(self, iters: int) -> None:
        b, x, y = self._backend, self._bx, None
        if self._rank == 0:
            for _ in range(iters):
                b.evaluate(b.send(x, 1))
                y = b.recv_like(x, 1)
                b.evaluate(y)
        elif self._rank == 1:
            for _ in range(iters):
                y = b.recv_like(x, 0)
                b.evaluate(y)
                b.evaluate(b.send(x, 0))
        self._last = y

    def run_baseline(self, iters: int) -> None:
        from mpi4py import MPI

        comm, send, recv = self._comm, [self._sendbuf, MPI.BYTE], [self._recvbuf, MPI.BYTE]
        if self._rank == 0:
            for _ in range(iters):
                comm.Send(send, 1, DATA_TAG)
                comm.Recv(recv, 1, DATA_TAG)
        elif self._rank == 1:
            for _ in range(iters):
                comm.Recv(recv, 0, DATA_TAG)
                comm.Send(send, 0, DATA_TAG)

    def check(self) -> str | None:
        if self._expected is None or self._last is None:
            return None
        return _compare(self._backend.to_numpy(self._last), self._expected, "recv")


class BandwidthCase(Case):
    """osu_bw: rank 0 sends a window of messages, rank 1 receives them and acknowledges; the
    bandwidth is the bytes of the window over the time until the acknowledgement arrives."""

    mode = "bandwidth"
    timing_rank = 0

    def __init__(
        self,
        shape: Shape,
        dtype_name: str,
        backend: Any,
        comm: Any,
        ctl: Any,
        rank: int,
        max_window: int = MAX_WINDOW,
    ) -> None:
        self.op = "sendrecv"
        self.shape = shape
        self.window = window_for(shape.nbytes, max_window)
        self.ops_per_iter = self.window
        self._rank = rank
        dtype = _numpy_dtype(dtype_name)
        self.x = make_input(shape.in_count, dtype, rank)
        # One receive buffer for the whole window, as osu_bw does.
        self.out = page_aligned(shape.in_count, dtype)
        self._expected = make_input(shape.in_count, dtype, 0) if rank == 1 else None
        self._backend = backend
        self._bx = backend.asarray(self.x)
        self._comm = comm
        self._ctl = ctl
        self._ack = np.zeros(1, np.int32)
        self._last: Any = None

    def run_backend(self, iters: int) -> None:
        b, x, window, ctl, ack, y = self._backend, self._bx, self.window, self._ctl, self._ack, None
        if self._rank == 0:
            for _ in range(iters):
                for _ in range(window):
                    b.evaluate(b.send(x, 1))
                ctl.Recv(ack, 1, ACK_TAG)
        elif self._rank == 1:
            for _ in range(iters):
                for _ in range(window):
                    y = b.recv_like(x, 0)
                    b.evaluate(y)
                ctl.Send(ack, 0, ACK_TAG)
        self._last = y

    def run_baseline(self, iters: int) -> None:
        from mpi4py import MPI

        comm, window, ctl, ack = self._comm, self.window, self._ctl, self._ack
        send = [self.x.view(np.uint8), MPI.BYTE]
        recv = [self.out.view(np.uint8), MPI.BYTE]
        if self._rank == 0:
            for _ in range(iters):
                MPI.Request.Waitall([comm.Isend(send, 1, DATA_TAG) for _ in range(window)])
                ctl.Recv(ack, 1, ACK_TAG)
        elif self._rank == 1:
            for _ in range(iters):
                MPI.Request.Waitall([comm.Irecv(recv, 0, DATA_TAG) for _ in range(window)])
                ctl.Send(ack, 0, ACK_TAG)

    def check(self) -> str | None:
        if self._expected is None or self._last is None:
            return None
        return _compare(self._backend.to_numpy(self._last), self._expected, "recv")


def _numpy_dtype(name: str) -> np.dtype:
    from conformance.backend import numpy_dtype

    return numpy_dtype(name)


def make_cases(
    op: str,
    size: int,
    dtype_name: str,
    backend: Any,
    comm: Any,
    ctl: Any,
    max_window: int = MAX_WINDOW,
) -> list[Case]:
    """The cases of ``op`` at ``size`` bytes: one for a collective, latency and bandwidth for
    ``sendrecv`` (none on a single rank: there is no peer). ``comm`` carries the baseline's
    data, ``ctl`` the acknowledgements."""
    rank, n = comm.Get_rank(), comm.Get_size()
    if op not in COLLECTIVES and n < 2:
        return []
    itemsize = _numpy_dtype(dtype_name).itemsize
    shape = shape_for(op, size, n, itemsize)
    cases: list[Case]
    if op in COLLECTIVES:
        cases = [CollectiveCase(op, shape, dtype_name, backend, comm, rank)]
    else:
        cases = [
            LatencyCase(shape, dtype_name, backend, comm, rank),
            BandwidthCase(shape, dtype_name, backend, comm, ctl, rank, max_window),
        ]
    for case in cases:
        case.size = size
    return cases
