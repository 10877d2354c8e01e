"""The agreement round every collective starts with (reference.agreement).

Every rank must learn of a disagreement or of one rank's invalid argument, raise the same error,
and leave the group usable. Outcomes are compared across ranks over the tests' own communicator.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from transport_helpers import allgather, attempt, encode, world_data

import reference
from reference import agreement
from reference.dtypes import NUMPY_DTYPES

pytestmark = pytest.mark.mpi(min_size=2)

INLINE = agreement.INLINE_BYTES


def listing(message: str) -> dict[int, str]:
    """rank -> what the message says that rank called ('all_sum with float32 (2,)')."""
    calls = {}
    for ranks, what in re.findall(r"rank\(s\) ([\d, ]+) called (.+?) \(call #\d+", message):
        for rank in ranks.split(","):
            calls[int(rank)] = what
    return calls


def assert_group_works(world, comm):
    """A collective right after a failure returns the right result on every rank."""
    total = reference.all_sum(np.array([world.rank(), 1], np.int64), group=world)
    assert total.tolist() == [comm.size * (comm.size - 1) // 2, comm.size]


def assert_same_error_everywhere(outcomes, kind):
    kinds = {o[0] for o in outcomes}
    assert kinds == {kind}, outcomes
    assert len({o[1] for o in outcomes}) == 1, outcomes
    return outcomes[0][1]


@pytest.mark.parametrize(
    ("even", "odd"),
    [((1,), (2,)), ((2, 3), (3, 2)), ((6,), (2, 3)), ((4, 0), (0, 4)), ((), (1,))],
    ids=str,
)
@pytest.mark.parametrize("op", ["all_sum", "all_max", "all_min", "all_gather"])
def test_shape_mismatch_fails_on_every_rank_naming_each(world, comm, op, even, odd):
    """Different shapes, even of the same byte size, raise one ValueError everywhere that says
    what each rank passed; no data is moved and the group works afterwards."""
    shape = even if comm.rank % 2 == 0 else odd
    outcome = attempt(getattr(reference, op), encode(comm.rank, shape, np.int8), group=world)
    outcomes = allgather(comm, outcome)
    message = assert_same_error_everywhere(outcomes, "ValueError")
    expected = {r: f"{op} with int8 {even if r % 2 == 0 else odd}" for r in range(comm.size)}
    assert listing(message) == expected
    assert_group_works(world, comm)


@pytest.mark.parametrize(
    ("even", "odd"), [("float32", "int32"), ("uint8", "bool"), ("float16", "bfloat16")]
)
def test_dtype_mismatch_of_equal_itemsize_fails_on_every_rank(world, comm, even, odd):
    """Dtypes of the same width still disagree: ValueError everywhere naming each rank's dtype."""
    name = even if comm.rank % 2 == 0 else odd
    x = encode(comm.rank, (8,), NUMPY_DTYPES[name])
    outcomes = allgather(comm, attempt(reference.all_sum, x, group=world))
    message = assert_same_error_everywhere(outcomes, "ValueError")
    expected = {r: f"all_sum with {even if r % 2 == 0 else odd} (8,)" for r in range(comm.size)}
    assert listing(message) == expected
    assert_group_works(world, comm)


def test_op_mismatch_fails_on_every_rank(world, comm):
    """Ranks calling different collectives (or split) all raise the same ValueError, naming
    each rank's call; the message starts with every op involved."""
    ops = ["all_sum", "all_max", "all_gather", "sum_scatter", "all_min", "split"]
    op = ops[comm.rank % len(ops)] if comm.size > 2 else ["all_sum", "split"][comm.rank]
    x = encode(comm.rank, (comm.size * 2,), np.float32)
    if op == "split":
        outcome = attempt(world.split, 0)
    else:
        outcome = attempt(getattr(reference, op), x, group=world)
    outcomes = allgather(comm, (op, *outcome))
    assert {o[1] for o in outcomes} == {"ValueError"}, outcomes
    assert len({o[2] for o in outcomes}) == 1, "the message differs between ranks"
    involved = "/".join(sorted({o[0] for o in outcomes}))
    assert outcomes[0][2].startswith(f"{involved}: "), outcomes[0][2]
    calls = listing(outcomes[0][2])
    for r, (own_op, _, _) in enumerate(outcomes):
        assert calls[r] == (own_op if own_op == "split" else f"{own_op} with float32 {x.shape}")
    assert_group_works(world, comm)


@pytest.mark.parametrize("bad_rank", range(4))
def test_rank_local_sum_scatter_shape_error_fails_everywhere(world, comm, bad_rank):
    """One rank's invalid sum_scatter shape raises ValueError on every rank, naming that rank."""
    if bad_rank >= comm.size:
        pytest.skip("no such rank at this size")
    rows = comm.size + 1 if comm.rank == bad_rank else comm.size
    x = encode(comm.rank, (rows, 2), np.float32)
    outcomes = allgather(comm, attempt(reference.sum_scatter, x, group=world))
    message = assert_same_error_everywhere(outcomes, "ValueError")
    assert f"invalid arguments on rank(s) {bad_rank}:" in message
    assert f"[sum_scatter] Invalid shape=({comm.size + 1}, 2) for a group of size {comm.size}" in (
        message
    )
    assert_group_works(world, comm)


def test_zero_d_sum_scatter_fails_everywhere(world, comm):
    """A 0-d sum_scatter input on every rank: ValueError on every rank naming all of them."""
    outcomes = allgather(comm, attempt(reference.sum_scatter, np.float32(1), group=world))
    message = assert_same_error_everywhere(outcomes, "ValueError")
    assert f"rank(s) {', '.join(map(str, range(comm.size)))}:" in message
    assert_group_works(world, comm)


@pytest.mark.parametrize("bad_rank", range(4))
def test_negative_split_color_on_one_rank_fails_everywhere(world, comm, bad_rank):
    """A negative colour on one rank is a ValueError on every rank; a valid split then works."""
    if bad_rank >= comm.size:
        pytest.skip("no such rank at this size")
    color = -1 if comm.rank == bad_rank else comm.rank % 2
    outcomes = allgather(comm, attempt(world.split, color))
    message = assert_same_error_everywhere(outcomes, "ValueError")
    assert f"invalid arguments on rank(s) {bad_rank}:" in message
    assert "color=-1" in message
    assert_group_works(world, comm)
    sub = world.split(comm.rank % 2)
    peers = [r for r in range(comm.size) if r % 2 == comm.rank % 2]
    total = reference.all_sum(np.int64(comm.rank), group=sub)
    assert (sub.rank(), sub.size(), int(total)) == (comm.rank // 2, len(peers), sum(peers))


@pytest.mark.parametrize(
    ("bad_input", "kind"),
    [
        (np.zeros(4, np.complex128), "TypeError"),
        (np.zeros(4, np.longdouble), "TypeError"),
        ("four", "TypeError"),
        (2**40, "ValueError"),
    ],
    ids=["complex128", "float128", "str", "int-out-of-range"],
)
@pytest.mark.parametrize("op", ["all_sum", "all_gather", "sum_scatter"])
def test_one_rank_with_a_bad_input_fails_everywhere(world, comm, op, bad_input, kind):
    """An unsupported dtype or input on the last rank raises on every rank, with its type."""
    bad_rank = comm.size - 1
    x = bad_input if comm.rank == bad_rank else np.zeros(2 * comm.size, np.float32)
    outcomes = allgather(comm, attempt(getattr(reference, op), x, group=world))
    message = assert_same_error_everywhere(outcomes, kind)
    assert f"invalid arguments on rank(s) {bad_rank}:" in message
    assert_group_works(world, comm)


def test_several_failing_ranks_are_all_named(world, comm):
    """When every odd rank passes a bad input, the shared error names exactly those ranks."""
    x = np.zeros(2, np.complex128) if comm.rank % 2 else np.zeros(2, np.float32)
    outcomes = allgather(comm, attempt(reference.all_max, x, group=world))
    message = assert_same_error_everywhere(outcomes, "TypeError")
    odd = [r for r in range(comm.size) if r % 2]
    assert f"invalid arguments on rank(s) {', '.join(map(str, odd))}:" in message
    for r in odd:
        assert f"rank {r}: " in message
    assert_group_works(world, comm)


def boundary_counts(itemsize: int, op: str = "all_sum") -> list[int]:
    """Element counts whose byte size is just below, equal to and just above op's inline limit."""
    at = agreement.inline_limit(op) // itemsize
    return [at - 1, at, at + 1]


@pytest.mark.parametrize("name", ["uint8", "int16", "float32", "int64", "complex64", "bfloat16"])
@pytest.mark.parametrize("op", ["all_sum", "all_max", "all_min", "all_gather"])
def test_inline_boundary_gives_the_same_results(world, comm, monkeypatch, op, name):
    """Payloads just below, at and just above the op's inline limit give the independently computed
    result, bit-identical on every rank; the first two take the inline path, the last not."""
    dtype = NUMPY_DTYPES[name]
    inline_calls = []
    original = reference.collectives.local_reduce
    monkeypatch.setattr(
        reference.collectives,
        "local_reduce",
        lambda *a: inline_calls.append(1) or original(*a),
    )
    results = []
    for count in boundary_counts(dtype.itemsize, op):
        x = encode(comm.rank, (count,), dtype, salt=count)
        results.append(getattr(reference, op)(x, group=world))
    everyone = allgather(comm, [r.tobytes() for r in results])
    for count, result in zip(boundary_counts(dtype.itemsize, op), results, strict=True):
        data = world_data(comm.size, (count,), dtype, salt=count)
        stacked = np.stack(data).astype(np.complex128 if name == "complex64" else np.float64)
        if op == "all_gather":
            expected = np.concatenate(data)
        elif name == "complex64" and op != "all_sum":
            pick = max if op == "all_max" else min
            pairs = [[(d[i].real, d[i].imag) for d in data] for i in range(count)]
            expected = np.array([complex(*pick(p)) for p in pairs], np.complex64)
        else:
            reduce = {"all_sum": np.sum, "all_max": np.max, "all_min": np.min}[op]
            expected = reduce(stacked, axis=0).astype(dtype)
        assert result.dtype == dtype and result.shape == expected.shape
        assert result.tobytes() == expected.tobytes()
    for other in everyone:
        assert other == everyone[0]
    if op != "all_gather":
        assert len(inline_calls) == 2


@pytest.mark.parametrize("name", ["uint8", "int16", "float32", "complex64"])
def test_sum_scatter_inline_boundary(world, comm, monkeypatch, name):
    """sum_scatter inputs just at/below and just above INLINE_BYTES: rows r*c..(r+1)*c of the
    sum, computed independently; only the smaller one takes the inline path."""
    dtype = NUMPY_DTYPES[name]
    inline_calls = []
    original = reference.collectives.local_reduce
    monkeypatch.setattr(
        reference.collectives,
        "local_reduce",
        lambda *a: inline_calls.append(1) or original(*a),
    )
    cols_low = INLINE // (comm.size * dtype.itemsize)
    shapes = [(comm.size, cols_low), (comm.size, cols_low + 1)]
    results = [
        reference.sum_scatter(encode(comm.rank, s, dtype, salt=7), group=world) for s in shapes
    ]
    everyone = allgather(comm, [r.tobytes() for r in results])
    for shape, result in zip(shapes, results, strict=True):
        total = np.sum(np.stack(world_data(comm.size, shape, dtype, salt=7)), axis=0)
        expected = total.astype(dtype)[comm.rank : comm.rank + 1]
        assert result.dtype == dtype and result.shape == expected.shape
        assert result.tobytes() == expected.tobytes()
    assert len(inline_calls) == 1
    assert len(everyone) == comm.size


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32", "float64", "complex64"])
@pytest.mark.parametrize("count", [7, 40000], ids=["inline", "large"])
def test_inexact_float_sums_are_bit_identical_on_every_rank(world, comm, name, count):
    """Sums whose rounding depends on the order still give every rank the very same bits."""
    rng = np.random.default_rng(1000 + comm.rank)
    x = rng.standard_normal(count) * 10.0 ** rng.integers(-3, 3, count)
    if name == "complex64":
        x = x + 1j * rng.standard_normal(count)
    x = x.astype(NUMPY_DTYPES[name])
    result = reference.all_sum(x, group=world)
    everyone = allgather(comm, result.tobytes())
    assert result.dtype == x.dtype and result.shape == x.shape
    assert all(other == everyone[0] for other in everyone)


def test_short_and_long_slots_alternate_without_stale_bytes(world, comm):
    """Rounds alternate between short slots (payload up to SHORT_BYTES), long ones (up to
    LONG_BYTES) and exact-size ones (up to INLINE_BYTES) on one group: every result is computed
    from its own call's data, never from bytes a longer earlier slot left behind, and a
    disagreement across the kinds is caught."""
    short, long = agreement.SHORT_BYTES, agreement.LONG_BYTES
    sizes = [INLINE, 1, short + 1, short, long + 1, INLINE - 1, long, 2, short // 2]
    for salt, nbytes in enumerate(sizes):
        x = encode(comm.rank, (nbytes,), np.uint8, salt=salt)
        gathered = reference.all_gather(x, group=world)
        total = reference.all_sum(x, group=world)
        data = world_data(comm.size, (nbytes,), np.uint8, salt=salt)
        assert gathered.tobytes() == np.concatenate(data).tobytes()
        assert total.tobytes() == np.sum(np.stack(data), axis=0, dtype=np.uint8).tobytes()
    # Rank 0 sends a long slot, the others short ones: every rank raises the disagreement.
    nbytes = short + 8 if comm.rank == 0 else short - 8
    outcome = attempt(reference.all_sum, np.zeros(nbytes, np.uint8), group=world)
    outcomes = allgather(comm, outcome)
    assert all(kind == "ValueError" and "disagree" in text for kind, text in outcomes)
    assert_group_works(world, comm)


def test_a_repeated_call_after_other_rounds_sends_its_own_header(world, comm):
    """A group keeps each call kind's packed header and rewrites only the call number when the
    same kind repeats; rounds of other kinds in between (a split, an invalid argument, another
    shape) write the slot, and the next repeat must still agree and give its own result."""
    x = encode(comm.rank, (3,), np.int32, salt=1)
    expected = np.sum(np.stack(world_data(comm.size, (3,), np.int32, salt=1)), axis=0)
    between = [
        lambda: world.split(0),
        # Only rank 0's argument is invalid: its slot then holds a header unlike the others'.
        lambda: attempt(
            reference.all_sum, np.zeros(3, np.complex128) if comm.rank == 0 else x, group=world
        ),
        lambda: reference.all_max(np.zeros((3, 1), np.int32), group=world),
        lambda: reference.all_sum(np.zeros(3, np.float32), group=world),
    ]
    for other in between:
        assert reference.all_sum(x, group=world).tolist() == expected.tolist()
        other()
        assert reference.all_sum(x, group=world).tolist() == expected.tolist()
    assert_group_works(world, comm)
