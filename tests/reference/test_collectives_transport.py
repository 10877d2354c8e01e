"""The collectives' data phase: large payloads through MPI (incl. user ops), odd shapes and layouts.

Sizes above agreement.inline_limit(op) go through MPI_Iallreduce / Iallgather /
Ireduce_scatter_block with the reference's datatypes and ops; expected results are computed from
every rank's input.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
from transport_helpers import (
    DTYPES,
    allgather,
    encode,
    expected_reduction,
    same_values,
    world_data,
)

import reference
from reference import agreement
from reference.dtypes import NUMPY_DTYPES

pytestmark = pytest.mark.mpi(min_size=2)

REDUCTIONS = ["all_sum", "all_max", "all_min"]
FLOATS = ["float16", "bfloat16", "float32", "float64"]
LARGE = 65543  # elements: above INLINE_BYTES for every dtype, and a prime


def special_input(rank: int, size: int, name: str, op: str, complex_nan=False) -> np.ndarray:
    """Rank- and position-encoding data plus the cases the MPI ops must get right:
    integer wrap-around, float16/bfloat16 overflow, NaN from one rank, complex real-part ties."""
    dtype = NUMPY_DTYPES[name]
    x = encode(rank, (LARGE,), dtype, salt=rank * 3)
    pos = np.arange(LARGE)
    if name in DTYPES[1:9]:  # the integers
        info = np.iinfo(dtype)
        x[0] = info.max
        x[1] = info.min
        x[2] = info.max - rank
    elif name in FLOATS:
        if op == "all_sum":
            big = 60000.0 if name == "float16" else float(np.finfo(np.float32).max) / 1.5
            if name in ("float16", "bfloat16"):
                x[0] = big
                x[1] = -big
        else:
            # NaN from a different rank at different positions, incl. first and last ranks.
            x[(pos % (size + 3)) == rank] = np.nan
    elif name == "complex64":
        # Every rank has the same real part at even positions, so the imaginary part decides.
        real = np.where(pos % 2 == 0, (pos % 5).astype(float), x.real)
        imag = ((rank * 5 + pos) % 7).astype(float)
        x = (real + 1j * imag).astype(dtype)
        if complex_nan:
            x[(pos % (size + 3)) == rank + 1] = (
                complex(np.nan, 1) if rank % 2 else complex(1, np.nan)
            )
    return x


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("op", REDUCTIONS)
def test_large_reductions_of_every_dtype(world, comm, op, name):
    """Every dtype through the MPI data phase (predefined and user-defined ops) gives the rule's
    result, bit-identical on every rank, without numpy warnings (complex: no NaN here)."""
    x = special_input(comm.rank, comm.size, name, op)
    assert x.nbytes > agreement.inline_limit(op)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = getattr(reference, op)(x, group=world)
    everyone = allgather(comm, result.tobytes())
    data = [special_input(r, comm.size, name, op) for r in range(comm.size)]
    assert same_values(result, expected_reduction(op, data))
    assert all(other == everyone[0] for other in everyone)


# Blocks past all_gather's inline limit for every dtype: many rows, and one row just past it.
GATHER_SHAPES = [(LARGE,), (701, 2, 24), (1, agreement.inline_limit("all_gather") + 4)]


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("shape", GATHER_SHAPES, ids=str)
def test_large_all_gather_of_every_dtype(world, comm, name, shape):
    """all_gather of large blocks concatenates them along axis 0 in rank order, bit for bit."""
    dtype = NUMPY_DTYPES[name]
    x = encode(comm.rank, shape, dtype, salt=comm.rank * 11)
    assert x.nbytes > agreement.inline_limit("all_gather")
    result = reference.all_gather(x, group=world)
    expected = np.concatenate(
        [encode(r, shape, dtype, salt=r * 11) for r in range(comm.size)], axis=0
    )
    assert result.dtype == dtype and result.shape == expected.shape
    assert result.tobytes() == expected.tobytes()


@pytest.mark.parametrize("name", DTYPES)
def test_large_sum_scatter_of_every_dtype(world, comm, name):
    """sum_scatter of large inputs gives rank r rows [r*c, (r+1)*c) of the full sum (wrap-around,
    bool OR, float16/bfloat16 user op included)."""
    dtype = NUMPY_DTYPES[name]
    rows = 67
    shape = (comm.size * rows, 9)
    data = [encode(r, shape, dtype, salt=r) for r in range(comm.size)]
    if name in DTYPES[1:9]:
        for d in data:
            d[:, 0] = np.iinfo(dtype).max
    result = reference.sum_scatter(data[comm.rank], group=world)
    total = expected_reduction("all_sum", data)
    expected = total[comm.rank * rows : (comm.rank + 1) * rows]
    assert result.dtype == dtype and result.shape == (rows, 9)
    assert same_values(result, expected)


@pytest.mark.parametrize("name", ["float32", "int8", "bool", "complex64", "bfloat16"])
@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (0, 5)], ids=str)
def test_zero_d_and_empty_arrays(world, comm, name, shape):
    """0-d and empty inputs: reductions keep the shape, all_gather stacks along axis 0 (0-d gives
    (N,)), sum_scatter splits axis 0 (0-d is a ValueError on every rank)."""
    dtype = NUMPY_DTYPES[name]
    x = encode(comm.rank, shape, dtype, salt=1)
    data = world_data(comm.size, shape, dtype, salt=1)
    outcomes = {op: getattr(reference, op)(x, group=world) for op in REDUCTIONS}
    gathered = reference.all_gather(x, group=world)
    try:
        scattered = reference.sum_scatter(x, group=world)
    except ValueError as error:
        scattered = error
    for op, result in outcomes.items():
        assert type(result) is np.ndarray
        assert same_values(result, expected_reduction(op, data))
    if shape == ():
        assert gathered.shape == (comm.size,)
        assert gathered.tobytes() == np.stack(data).tobytes()
    else:
        assert gathered.shape == (shape[0] * comm.size, *shape[1:]) and gathered.dtype == dtype
    if shape == () or shape[0] % comm.size:
        assert isinstance(scattered, ValueError)
    else:
        assert isinstance(scattered, np.ndarray)
        assert scattered.shape == (shape[0] // comm.size, *shape[1:])
        assert scattered.dtype == dtype


def layouts(rank: int, dtype, large: bool) -> dict[str, np.ndarray]:
    """Non-contiguous views of rank-encoding data (the base array is large or small)."""
    rows = 2400 if large else 6
    base = encode(rank, (rows, 8), dtype, salt=rank)
    return {
        "strided": base[::2, 1::2],
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "reversed": base[::-1, ::-1],
    }


@pytest.mark.parametrize("name", ["int32", "float16", "complex64", "bool"])
@pytest.mark.parametrize("large", [False, True], ids=["inline", "large"])
@pytest.mark.parametrize("layout", ["strided", "fortran", "transposed", "reversed"])
def test_non_contiguous_inputs(world, comm, name, large, layout):
    """Any layout works like its C-contiguous copy; the input is left untouched and the result
    shares no memory with it."""
    dtype = NUMPY_DTYPES[name]
    x = layouts(comm.rank, dtype, large)[layout]
    before = x.copy()
    data = [layouts(r, dtype, large)[layout] for r in range(comm.size)]
    results = {op: getattr(reference, op)(x, group=world) for op in REDUCTIONS}
    gathered = reference.all_gather(x, group=world)
    if x.shape[0] % comm.size == 0:
        scattered = reference.sum_scatter(x, group=world)
        rows = x.shape[0] // comm.size
        full = expected_reduction("all_sum", [np.ascontiguousarray(d) for d in data])
        assert same_values(scattered, full[comm.rank * rows : (comm.rank + 1) * rows])
    for op, result in results.items():
        assert same_values(result, expected_reduction(op, [np.ascontiguousarray(d) for d in data]))
        assert not np.shares_memory(result, x)
    assert gathered.tobytes() == np.concatenate(data).tobytes()
    assert np.array_equal(x, before)


@pytest.mark.parametrize("count", [5, LARGE, 20000], ids=["inline", "large", "cached"])
@pytest.mark.parametrize("op", [*REDUCTIONS, "all_gather", "sum_scatter"])
def test_results_survive_later_calls(world, comm, op, count):
    """A result keeps its values after later calls of the same shape (no slot or recycled-buffer
    reuse while it is alive, 'cached' being above the buffer cache's threshold), and is never a
    view of the input."""
    shape = (comm.size * count,)
    fn = getattr(reference, op)
    inputs = [encode(comm.rank, shape, np.int32, salt=s) for s in (0, 1, 2)]
    results = [fn(x, group=world) for x in inputs]
    for salt, (x, result) in enumerate(zip(inputs, results, strict=True)):
        data = world_data(comm.size, shape, np.int32, salt=salt)
        if op == "all_gather":
            expected = np.concatenate(data)
        elif op == "sum_scatter":
            expected = expected_reduction("all_sum", data)[
                comm.rank * count : (comm.rank + 1) * count
            ]
        else:
            expected = expected_reduction(op, data)
        assert np.array_equal(result, expected)
        assert not np.shares_memory(result, x)
        assert result.flags.writeable


def test_python_scalars_travel_as_mlx_dtypes(world, comm):
    """Python scalars become int32/float32/bool/complex64 on every rank and reduce as such."""
    n = comm.size
    total = reference.all_sum(comm.rank + 1, group=world)
    assert total.dtype == np.int32 and total.shape == () and int(total) == n * (n + 1) // 2
    biggest = reference.all_max(comm.rank * 0.5, group=world)
    assert biggest.dtype == np.float32 and float(biggest) == (n - 1) * 0.5
    anyone = reference.all_sum(comm.rank == n - 1, group=world)
    assert anyone.dtype == np.bool_ and bool(anyone) is True
    gathered = reference.all_gather(complex(comm.rank, 1), group=world)
    assert gathered.dtype == np.complex64
    assert gathered.tolist() == [complex(r, 1) for r in range(n)]


@pytest.mark.parametrize("op", ["all_max", "all_min"])
def test_large_complex_max_min_propagate_nan_from_any_rank(world, comm, op):
    """A NaN in the real or imaginary part on any one rank makes that element NaN on every rank
    through the MPI user op, whichever rank holds it."""
    x = special_input(comm.rank, comm.size, "complex64", op, complex_nan=True)
    result = getattr(reference, op)(x, group=world)
    everyone = allgather(comm, result.tobytes())
    data = [special_input(r, comm.size, "complex64", op, True) for r in range(comm.size)]
    assert same_values(result, expected_reduction(op, data))
    assert all(other == everyone[0] for other in everyone)


def test_subgroups_run_different_collectives_at_once(world, comm):
    """Two split subgroups run different collectives concurrently; each involves only its own
    members, in subgroup rank order."""
    color = comm.rank % 2
    sub = world.split(color)
    members = [r for r in range(comm.size) if r % 2 == color]
    if color == 0:
        x = encode(comm.rank, (700,), np.float32)
        result = reference.all_sum(x, group=sub)
        expected = expected_reduction("all_sum", [encode(r, (700,), np.float32) for r in members])
    else:
        x = encode(comm.rank, (3, 300), np.int16)
        result = reference.all_gather(x, group=sub)
        expected = np.concatenate([encode(r, (3, 300), np.int16) for r in members])
    assert sub.size() == len(members) and sub.rank() == members.index(comm.rank)
    assert result.tobytes() == expected.tobytes()


HUGE = 262147  # above MPICH's short-message limits, so its segmented large-message algorithms run


@pytest.mark.parametrize(
    ("op", "name"),
    [
        ("all_sum", "float16"),
        ("all_sum", "bfloat16"),
        ("all_sum", "int8"),
        ("all_max", "float32"),
        ("all_min", "float16"),
        ("all_max", "complex64"),
        ("all_min", "bool"),
    ],
)
def test_very_large_reductions(world, comm, op, name):
    """Reductions of a quarter million elements (user ops under MPI's segmented algorithms)
    give the rule's result on every rank, bit for bit."""
    dtype = NUMPY_DTYPES[name]

    def make(rank):
        x = encode(rank, (HUGE,), dtype, salt=rank)
        if name in FLOATS and op != "all_sum":
            x[rank :: comm.size + 5] = np.nan
        if name == "int8":
            x[::3] = 127
        return x

    result = getattr(reference, op)(make(comm.rank), group=world)
    everyone = allgather(comm, hashlib.sha256(result.tobytes()).hexdigest())
    assert same_values(result, expected_reduction(op, [make(r) for r in range(comm.size)]))
    assert len(set(everyone)) == 1


@pytest.mark.parametrize("name", ["float16", "bfloat16", "int32", "bool"])
def test_very_large_sum_scatter_and_all_gather(world, comm, name):
    """sum_scatter and all_gather of large inputs (segmented MPI algorithms) are exact."""
    dtype = NUMPY_DTYPES[name]
    rows = 4099
    shape = (comm.size * rows, 16)
    data = [encode(r, shape, dtype, salt=2 * r) for r in range(comm.size)]
    scattered = reference.sum_scatter(data[comm.rank], group=world)
    gathered = reference.all_gather(data[comm.rank][:rows], group=world)
    total = expected_reduction("all_sum", data)
    assert same_values(scattered, total[comm.rank * rows : (comm.rank + 1) * rows])
    assert gathered.tobytes() == np.concatenate([d[:rows] for d in data]).tobytes()


@pytest.mark.parametrize("count", [6, LARGE], ids=["inline", "large"])
def test_read_only_and_broadcast_inputs(world, comm, count):
    """Read-only inputs are read in place and zero-stride broadcasts are copied; both reduce,
    gather and scatter like ordinary arrays."""
    n = comm.size * count
    readonly = encode(comm.rank, (n,), np.int32, salt=4)
    readonly.flags.writeable = False
    broadcast = np.broadcast_to(np.float32(comm.rank + 1), (n,))
    summed = reference.all_sum(readonly, group=world)
    gathered = reference.all_gather(readonly, group=world)
    scattered = reference.sum_scatter(readonly, group=world)
    biggest = reference.all_max(broadcast, group=world)
    data = world_data(comm.size, (n,), np.int32, salt=4)
    total = expected_reduction("all_sum", data)
    assert np.array_equal(summed, total)
    assert gathered.tobytes() == np.concatenate(data).tobytes()
    assert np.array_equal(scattered, total[comm.rank * count : (comm.rank + 1) * count])
    assert biggest.tolist() == [float(comm.size)] * n
    assert summed.flags.writeable and biggest.flags.writeable
