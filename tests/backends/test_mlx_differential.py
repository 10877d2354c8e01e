"""Differential checks: the same inputs through the reference and through MLX give the same results.

Run at every world size, e.g. ``timeout 300 mpiexec -n 3 python -m pytest tests/backends``
(also plain ``pytest`` for one rank). Integers and bool must match exactly; floats within the
summation-order tolerance of ``conformance.specs.tolerance``. Every check ends with a collective
verdict, so a mismatch on one rank fails the test on every rank and the ranks stay in step.
Skipped when MLX (or mpi4py) is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
MPI = pytest.importorskip("mpi4py.MPI")

import reference  # noqa: E402
from conformance.adapters.mlx import MLXRingBackend  # noqa: E402
from conformance.specs.data import (  # noqa: E402
    DTYPE_NAMES,
    EXACT_NAMES,
    contribution,
    np_dtype,
)
from conformance.specs.tolerance import mismatch, sum_tolerance  # noqa: E402

REDUCTIONS = ("all_sum", "all_max", "all_min")
SHAPES: tuple[tuple[int, ...], ...] = ((), (0,), (3, 0), (1,), (7,), (3, 5), (2, 3, 4), (1000,))


@pytest.fixture(scope="module")
def comm() -> Any:
    c = MPI.COMM_WORLD.Dup()
    yield c
    c.Free()


@pytest.fixture(scope="module")
def mlx_backend() -> MLXRingBackend:
    return MLXRingBackend()


@pytest.fixture(scope="module")
def groups(comm: Any, mlx_backend: MLXRingBackend) -> tuple[Any, Any]:
    ref_group = reference.init()
    mlx_group = mlx_backend.init()
    assert (ref_group.rank(), ref_group.size()) == (comm.Get_rank(), comm.Get_size())
    assert (mlx_group.rank(), mlx_group.size()) == (comm.Get_rank(), comm.Get_size())
    return ref_group, mlx_group


def agree(comm: Any, problem: str | None) -> None:
    """Fail on every rank if any rank reports a problem, naming the ranks."""
    problems = comm.allgather(problem)
    bad = {rank: p for rank, p in enumerate(problems) if p is not None}
    if bad:
        pytest.fail("; ".join(f"rank {r}: {p}" for r, p in bad.items()), pytrace=False)


def guarded(fn: Callable[[], str | None]) -> str | None:
    # An exception becomes this rank's verdict, so the ranks still meet in agree().
    try:
        return fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def tolerance_for(op: str, blocks: Sequence[np.ndarray]) -> np.ndarray | None:
    return sum_tolerance(blocks) if op == "all_sum" else None


def compare(
    op: str, blocks: Sequence[np.ndarray], rank: int, mlx_backend: MLXRingBackend
) -> str | None:
    """This rank's difference between reference and MLX for ``op`` on ``blocks[rank]``."""
    mine = blocks[rank]
    want = getattr(reference, op)(mine)
    got = mlx_backend.to_numpy(getattr(mlx_backend, op)(mlx_backend.asarray(mine)))
    name = str(mine.dtype)
    tol = None if name in EXACT_NAMES else tolerance_for(op, blocks)
    return mismatch(got, want, tol, what=f"MLX {op} of {name} {mine.shape}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", DTYPE_NAMES)
@pytest.mark.parametrize("op", [*REDUCTIONS, "all_gather"])
def test_collective_matches_reference(
    op: str, name: str, shape: tuple[int, ...], comm: Any, groups: Any, mlx_backend: MLXRingBackend
) -> None:
    size, rank = comm.Get_size(), comm.Get_rank()
    blocks = [contribution(r, shape, name, salt=7) for r in range(size)]
    agree(comm, guarded(lambda: compare(op, blocks, rank, mlx_backend)))


def random_block(rng: np.random.Generator, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Values spread over the dtype's range (floats kept where float16 sums stay finite)."""
    dt = np_dtype(name)
    if name == "bool":
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    scale = 10.0 ** rng.integers(-3, 4)
    values = rng.standard_normal(shape) * scale
    if name == "complex64":
        return (values + 1j * rng.standard_normal(shape) * scale).astype(np.complex64)
    return values.astype(dt)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("op", [*REDUCTIONS, "all_gather"])
def test_random_inputs_match_reference(
    op: str, seed: int, comm: Any, groups: Any, mlx_backend: MLXRingBackend
) -> None:
    size, rank = comm.Get_size(), comm.Get_rank()
    # Every rank derives every rank's input from (seed, rank): no data travels to set up the test.
    shape_rng = np.random.default_rng([seed, 1_000_003])
    ndim = int(shape_rng.integers(0, 4))
    shape = tuple(int(d) for d in shape_rng.integers(0, 6, size=ndim))
    name = DTYPE_NAMES[int(shape_rng.integers(len(DTYPE_NAMES)))]
    blocks = [random_block(np.random.default_rng([seed, r]), shape, name) for r in range(size)]
    agree(comm, guarded(lambda: compare(op, blocks, rank, mlx_backend)))


def messages(x: np.ndarray) -> list[np.ndarray]:
    """Three distinct messages derived from ``x`` (order mix-ups show)."""
    if x.dtype == np.bool_:
        return [x ^ bool(k % 2) for k in range(3)]
    return [x + np.asarray(k).astype(x.dtype) for k in range(3)]


def neighbour_exchange(
    send: Callable[[np.ndarray, int], None],
    recv: Callable[[np.ndarray, int], np.ndarray],
    recv_like: Callable[[np.ndarray, int], np.ndarray],
    x: np.ndarray,
    rank: int,
    size: int,
) -> list[np.ndarray]:
    """Send three messages right and receive three from the left; even ranks send first.

    The last message is received with ``recv_like``, the others with ``recv``.
    """
    right, left = (rank + 1) % size, (rank - 1) % size
    outgoing = messages(x)

    def receive() -> list[np.ndarray]:
        return [recv(outgoing[0], left), recv(outgoing[1], left), recv_like(outgoing[2], left)]

    if rank % 2 == 0:
        for m in outgoing:
            send(m, right)
        return receive()
    received = receive()
    for m in outgoing:
        send(m, right)
    return received


@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (70_000,)], ids=str)
@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_neighbour_p2p_matches_reference(
    name: str, shape: tuple[int, ...], comm: Any, groups: Any, mlx_backend: MLXRingBackend
) -> None:
    size, rank = comm.Get_size(), comm.Get_rank()
    if size == 1:
        pytest.skip("point-to-point needs two ranks")
    x = contribution(rank, shape, name, salt=11)

    def check() -> str | None:
        want = neighbour_exchange(
            lambda m, dst: reference.send(m, dst),
            lambda m, src: reference.recv(m.shape, m.dtype, src),
            lambda m, src: reference.recv_like(m, src),
            x,
            rank,
            size,
        )
        b = mlx_backend
        got = neighbour_exchange(
            lambda m, dst: b.evaluate(b.send(b.asarray(m), dst)),
            lambda m, src: b.to_numpy(b.recv(m.shape, b.dtype(name), src)),
            lambda m, src: b.to_numpy(b.recv_like(b.asarray(m), src)),
            x,
            rank,
            size,
        )
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            problem = mismatch(g, w, None, what=f"message {k} from rank {(rank - 1) % size}")
            if problem:
                return problem
        return None

    agree(comm, guarded(check))


def test_singleton_identity_matches_reference(
    comm: Any, groups: Any, mlx_backend: MLXRingBackend
) -> None:
    if comm.Get_size() != 1:
        pytest.skip("size-1 group only")
    problems = []
    for name in DTYPE_NAMES:
        x = contribution(0, (2, 3), name)
        for op in (*REDUCTIONS, "all_gather", "sum_scatter"):
            want = getattr(reference, op)(x)
            got = mlx_backend.to_numpy(getattr(mlx_backend, op)(mlx_backend.asarray(x)))
            problems.append(mismatch(got, want, None, what=f"{op} {name}"))
    agree(comm, next((p for p in problems if p), None))
