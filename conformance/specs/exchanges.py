"""Point-to-point patterns that cannot deadlock, for any world size and either topology.

MLX is lazy and its sends may block until the matching recv runs, so every pattern here forces
each send (``backend.evaluate``) before the same rank's recv, and orders ring exchanges even/odd:
even ranks send then receive, odd ranks receive then send. In a ring of any size that leaves no
cycle of ranks all waiting to send. Every function returns its findings (or raises through
``attempt``-style capture) so the caller settles them collectively.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from conformance.specs.calls import attempt, describe_error
from conformance.specs.data import describe, dtype_name
from conformance.specs.tolerance import mismatch


def send(backend: Any, x: np.ndarray, dst: int, group: Any) -> np.ndarray:
    """Send numpy ``x`` to ``dst``; the (forced) return value of ``send``, in numpy."""
    out = backend.send(backend.asarray(x), dst, group=group)
    backend.evaluate(out)
    return backend.to_numpy(out)


def recv(backend: Any, shape: Sequence[int], dtype: str, src: int, group: Any) -> np.ndarray:
    """``recv(shape, dtype, src)`` with the backend's dtype object, forced, in numpy."""
    out = backend.recv(tuple(shape), backend.dtype(dtype), src, group=group)
    backend.evaluate(out)
    return backend.to_numpy(out)


def recv_like(backend: Any, like: np.ndarray, src: int, group: Any) -> np.ndarray:
    """``recv_like(like, src)`` with ``like`` handed over as a backend array, forced, in numpy."""
    out = backend.recv_like(backend.asarray(like), src, group=group)
    backend.evaluate(out)
    return backend.to_numpy(out)


def ring_exchange(
    backend: Any,
    group: Any,
    mine: np.ndarray,
    expected_from_src: np.ndarray,
    *,
    shift: int = 1,
    use_recv_like: bool = False,
) -> list[str | None]:
    """Send ``mine`` to rank+shift and receive from rank-shift; the findings on this rank.

    Checks that the value ``send`` returned equals ``mine`` and that the received array is
    exactly ``expected_from_src`` (shape, dtype, values). Exceptions become findings.
    """
    rank, size = group.rank(), group.size()
    dst, src = (rank + shift) % size, (rank - shift) % size
    problems: list[str | None] = []
    sent = got = None

    def do_send() -> None:
        nonlocal sent
        sent, error = attempt(send, backend, mine, dst, group)
        if error is not None:
            problems.append(f"send to {dst} raised {describe_error(error)}")

    def do_recv() -> None:
        nonlocal got
        if use_recv_like:
            got, error = attempt(recv_like, backend, expected_from_src, src, group)
        else:
            name = dtype_name(expected_from_src.dtype)
            got, error = attempt(recv, backend, expected_from_src.shape, name, src, group)
        if error is not None:
            problems.append(f"recv from {src} raised {describe_error(error)}")

    if rank % 2 == 0:
        do_send()
        do_recv()
    else:
        do_recv()
        do_send()
    if sent is not None:
        problems.append(mismatch(sent, mine, None, f"send({describe(mine)}) returned value"))
    if got is not None:
        what = f"{'recv_like' if use_recv_like else 'recv'} from rank {src}"
        problems.append(mismatch(got, expected_from_src, None, what))
    return problems
