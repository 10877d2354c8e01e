"""The shared-memory data plane (reference.shm, reference.dataplane).

Results are checked against numpy on every rank's ``encode`` data (in rank order), against the MPI
data plane bit for bit where the contract requires it (integers, bool, max, min), and across ranks
(every rank gets the same bits). Small chunks on fresh subgroups make every payload cross several
chunk boundaries and wrap the pipeline's buffers many times. Every such test runs on both paths
of the plane: through the segment (``copy``) and by direct reads of the peers (``direct``, at
every size). Stalls are made by a rank whose data phase does nothing or comes late: the others
must raise TimeoutError naming it, retire the group, and keep what they already hold intact.
"""

from __future__ import annotations

import functools
import os
import re
import time

import numpy as np
import pytest
from transport_helpers import DTYPES, allgather, attempt, sync, world_data

import reference
from reference import agreement, crossmemory, dataplane, shm
from reference.dtypes import NUMPY_DTYPES

SMALL_CHUNK = 4096
SHORT = 0.5


@pytest.fixture
def plane():
    """Force a data plane for one test, on every rank alike; restore the setting afterwards."""
    previous = dataplane.get_data_plane()
    yield dataplane.set_data_plane
    dataplane.set_data_plane(previous)


@pytest.fixture(params=["copy", "direct"])
def path(request):
    """Which path of the plane the groups of ``small_chunk_group`` take."""
    return request.param


def small_chunk_group(world, path: str = "copy", chunk: int = SMALL_CHUNK):
    """A fresh subgroup whose segment uses ``chunk``-byte chunks (mapped now, collectively),
    moving data through the segment (``copy``) or by direct reads at every size (``direct``)."""
    sub = world.split(0)
    segment = shm.Segment.create(
        sub._comm, TimeoutError, chunk_bytes=chunk, single_copy=path == "direct"
    )
    assert segment, "the ranks of this job should share one node"
    if path == "direct":
        if not segment.single_copy:
            pytest.skip("this machine does not let the ranks read each other (process_vm_readv)")
        segment.direct_from = dict.fromkeys(shm.DIRECT_FROM, 0)
    else:
        assert not segment.single_copy
    sub._segment = segment
    return sub


def expected_reduction(op: str, inputs: list[np.ndarray]) -> np.ndarray:
    """numpy's answer, reducing in rank order (the reference's documented order)."""
    dtype = inputs[0].dtype
    if op == "all_sum" and dtype == np.bool_:
        return functools.reduce(np.logical_or, inputs)
    if op == "all_sum":
        return functools.reduce(lambda a, b: np.add(a, b, dtype=dtype), inputs)
    if dtype == np.bool_:
        return functools.reduce(np.logical_or if op == "all_max" else np.logical_and, inputs)
    stacked = np.stack(inputs)
    if dtype.kind == "c":
        order = np.lexsort((stacked.imag, stacked.real), axis=0)
        pick = order[-1] if op == "all_max" else order[0]
        return np.take_along_axis(stacked, pick[None], axis=0)[0]
    return (np.max if op == "all_max" else np.min)(stacked, axis=0)


def counts_for(dtype_name: str, size: int, chunk: int) -> list[int]:
    """Element counts around the chunk boundaries, beyond the inline limit, not multiples of N."""
    itemsize = NUMPY_DTYPES[dtype_name].itemsize
    per = chunk // itemsize
    # Whole chunks past the inline limit: smaller payloads never reach a data plane.
    beyond = (agreement.INLINE_BYTES // chunk + 1) * per
    return [beyond + per * 2 + 1, beyond + per * 3 - size - 1]


def run_on(plane_setter, name: str, fn, *args, **kwargs):
    plane_setter(name)
    return fn(*args, **kwargs)


pytestmark = pytest.mark.mpi(min_size=2)


def test_data_plane_setting_is_checked(plane):
    """Only mpi, shm and auto are data planes; set_data_plane returns the previous one."""
    previous = plane("shm")
    assert plane("mpi") == "shm"
    assert dataplane.get_data_plane() == "mpi"
    with pytest.raises(ValueError, match="not a data plane"):
        plane("nvlink")
    assert dataplane.get_data_plane() == "mpi"
    assert previous in dataplane.PLANES


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("op", ["all_sum", "all_max", "all_min"])
def test_reductions_match_numpy_and_the_mpi_plane(world, comm, plane, path, op, dtype_name):
    """Every dtype and reduction, across chunk boundaries: numpy's rank-order result, the same
    bits on every rank, and for everything but float sums the MPI plane's exact bits."""
    sub = small_chunk_group(world, path)
    for salt, count in enumerate(counts_for(dtype_name, comm.size, SMALL_CHUNK)):
        inputs = world_data(comm.size, (count,), NUMPY_DTYPES[dtype_name], salt)
        got = run_on(plane, "shm", getattr(reference, op), inputs[comm.rank], group=sub)
        via_mpi = run_on(plane, "mpi", getattr(reference, op), inputs[comm.rank], group=sub)
        want = expected_reduction(op, inputs)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        if not (
            op == "all_sum"
            and dtype_name in ("float16", "bfloat16", "float32", "float64", "complex64")
        ):
            assert got.tobytes() == via_mpi.tobytes()
        everyone = allgather(comm, got.tobytes())
        assert all(bits == everyone[0] for bits in everyone)


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_all_gather_matches_numpy(world, comm, plane, path, dtype_name):
    """all_gather on shared memory concatenates every rank's array in rank order, bit for bit,
    for 2-d inputs whose size crosses chunk boundaries."""
    sub = small_chunk_group(world, path)
    for salt, count in enumerate(counts_for(dtype_name, comm.size, SMALL_CHUNK)):
        inputs = world_data(comm.size, (count, 1), NUMPY_DTYPES[dtype_name], salt)
        got = run_on(plane, "shm", reference.all_gather, inputs[comm.rank], group=sub)
        want = np.concatenate(inputs)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_sum_scatter_matches_numpy(world, comm, plane, path, dtype_name):
    """sum_scatter on shared memory gives each rank its block of the rank-order sum, for blocks
    that cross chunk boundaries; integers and bool bit for bit as on the MPI plane."""
    sub = small_chunk_group(world, path)
    size, rank = comm.size, comm.rank
    itemsize = NUMPY_DTYPES[dtype_name].itemsize
    per = SMALL_CHUNK // size // itemsize
    beyond = agreement.INLINE_BYTES // (size * 2 * itemsize) + 1  # past the inline limit
    for salt, rows in enumerate([beyond + per * 2 + 1, beyond + per + size + 2]):
        inputs = world_data(size, (size * rows, 2), NUMPY_DTYPES[dtype_name], salt)
        got = run_on(plane, "shm", reference.sum_scatter, inputs[rank], group=sub)
        via_mpi = run_on(plane, "mpi", reference.sum_scatter, inputs[rank], group=sub)
        want = expected_reduction("all_sum", inputs)[rank * rows : (rank + 1) * rows]
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        if got.dtype.kind in "biu":
            assert got.tobytes() == via_mpi.tobytes()


@pytest.mark.parametrize("single_copy", [False, True], ids=["copy", "default"])
def test_default_chunks_and_a_long_sequence(world, comm, plane, single_copy):
    """The real chunk size and thresholds: a payload of 2.5 chunks (read directly where the
    ranks can read each other, else copied through the segment), then many calls of different
    sizes in a row, each checked against numpy (the counters carry over from call to call)."""
    plane("shm")
    sub = world.split(0)
    sub._segment = shm.Segment.create(sub._comm, TimeoutError, single_copy=single_copy)
    count = int(shm.CHUNK_BYTES * 2.5) // 4 + 3
    inputs = world_data(comm.size, (count,), np.int32)
    np.testing.assert_array_equal(
        reference.all_sum(inputs[comm.rank], group=sub), expected_reduction("all_sum", inputs)
    )
    for salt in range(30):
        inputs = world_data(comm.size, (200 + 997 * salt,), np.int64, salt)
        got = reference.all_max(inputs[comm.rank], group=sub)
        np.testing.assert_array_equal(got, expected_reduction("all_max", inputs))
    assert sub._segment and sub._segment.chunk_bytes == shm.CHUNK_BYTES


def test_both_paths_interleave_on_one_segment(world, comm, plane):
    """Calls just below and just above the direct-read threshold, of every op, one after the
    other on one segment: each checked against numpy (both paths share the counters)."""
    plane("shm")
    sub = world.split(0)
    # Direct reads where the ranks can read each other (else this checks the copy path alone).
    sub._segment = shm.Segment.create(sub._comm, TimeoutError, chunk_bytes=SMALL_CHUNK)
    threshold = agreement.INLINE_BYTES + 40_000
    sub._segment.direct_from = dict.fromkeys(shm.DIRECT_FROM, threshold)
    size, rank = comm.size, comm.rank
    for salt, count in enumerate([19_997, 30_011, 19_999, 29_993, 30_007, 20_011]):
        count -= count % size  # sum_scatter needs whole blocks
        inputs = world_data(size, (count,), np.int32, salt)
        np.testing.assert_array_equal(
            reference.all_sum(inputs[rank], group=sub), expected_reduction("all_sum", inputs)
        )
        got = reference.all_gather(inputs[rank], group=sub)
        assert got.tobytes() == np.concatenate(inputs).tobytes()
        block = count // size
        got = reference.sum_scatter(inputs[rank], group=sub)
        want = expected_reduction("all_sum", inputs)[rank * block : (rank + 1) * block]
        np.testing.assert_array_equal(got, want)


def _agreed_single_copy(world) -> bool:
    """Whether a default segment of this job reads its peers directly (the same on every rank)."""
    probe = world.split(0)
    probe._segment = shm.Segment.create(probe._comm, TimeoutError)
    return probe._segment.single_copy


def _every_rank_can_read_every_peer(comm) -> bool:
    """Found out here, apart from the segment: each rank reads every peer's marker itself."""
    marker = np.array([1000 + comm.rank], np.int64)
    where = allgather(comm, (os.getpid(), crossmemory.address(marker)))
    readable = True
    for peer, (pid, address) in enumerate(where):
        got = np.zeros(1, np.int64)
        try:
            crossmemory.read(pid, address, got)
        except crossmemory.ReadFailed:
            readable = False
        readable = readable and got[0] == 1000 + peer
    return all(allgather(comm, readable))  # the marker lives until every rank has read it


def test_direct_reads_are_agreed_by_every_rank(world, comm):
    """A segment reads its peers directly exactly when every rank can read every peer, the
    same on every rank; one rank that does not ask for it makes every rank copy."""
    everyone = allgather(comm, _agreed_single_copy(world))
    assert len(set(everyone)) == 1, everyone
    assert everyone[0] == (crossmemory.available() and _every_rank_can_read_every_peer(comm))
    sub = world.split(0)
    segment = shm.Segment.create(sub._comm, TimeoutError, single_copy=comm.rank != 0)
    assert segment and segment.single_copy is False


def _direct_group(world):
    sub = small_chunk_group(world, "direct")
    previous = reference.set_timeout(SHORT)
    return sub, previous


def test_a_peer_that_gives_up_invalidates_what_was_read_of_it(world, comm, plane):
    """The last rank gives up after every byte moved (its caller may change its input now):
    the others must not return what they read of it, but raise TimeoutError saying so."""
    plane("shm")
    sub, previous = _direct_group(world)
    last = comm.size - 1
    original = shm.Segment._finish

    def give_up_at_the_end(self, call):
        self._give_up()
        self._publish(shm._COPIED_OUT, call + 1)
        raise shm.Stalled([0], SHORT, shm.Stalled.STOPPED)

    if comm.rank == last:
        shm.Segment._finish = give_up_at_the_end
    try:
        outcome = attempt(reference.all_gather, np.arange(20_000, dtype=np.int32), group=sub)
    finally:
        shm.Segment._finish = original
        reference.set_timeout(previous)
    sync(comm)
    kind, message = outcome
    assert kind == "TimeoutError", outcome
    if comm.rank != last:
        assert last in _named(message, shm.Stalled.GAVE_UP), message


def _named(message: str, reason: str) -> set[int]:
    """The ranks a TimeoutError's message names for ``reason`` (others may follow the first
    rank that gave up, and are named with it)."""
    found = re.search(rf"rank\(s\) ([\d, ]+) {reason}", message)
    return {int(r) for r in found.group(1).split(",")} if found else set()


def test_an_unreadable_peer_is_named_and_every_rank_raises(world, comm, plane, monkeypatch):
    """When the kernel refuses a direct read on the last rank, it raises TimeoutError naming the
    peer it could not read; the others raise too (it gave up), none returns a result."""
    plane("shm")
    sub, previous = _direct_group(world)
    last = comm.size - 1
    if comm.rank == last:

        def refuse(pid, remote, into):
            raise crossmemory.ReadFailed(1, "refused for the test")

        monkeypatch.setattr(crossmemory, "read", refuse)
    try:
        outcome = attempt(reference.all_sum, np.ones(20_000, np.float32), group=sub)
    finally:
        reference.set_timeout(previous)
    sync(comm)
    kind, message = outcome
    assert kind == "TimeoutError", outcome
    if comm.rank == last:
        assert _named(message, shm.Stalled.UNREADABLE) == {0}, message
    else:
        assert last in _named(message, shm.Stalled.GAVE_UP), message


def test_mpi_plane_never_maps_a_segment(world, comm, plane):
    """With the mpi plane, or auto below its threshold, no shared memory is set up."""
    plane("mpi")
    sub = world.split(0)
    reference.all_sum(np.ones(100_000, np.float32), group=sub)
    assert sub._segment is None
    plane("auto")
    reference.all_sum(np.ones(1024, np.float32), group=sub)  # inline: no data plane at all
    assert sub._segment is None


_SEGMENT_METHOD = {
    "all_sum": "all_reduce",
    "all_max": "all_reduce",
    "all_gather": "all_gather",
    "sum_scatter": "sum_scatter",
}


def _calls_through_segment(monkeypatch, op: str) -> list[int]:
    """Record each call of ``op``'s segment method (its input's bytes), still doing the work."""
    calls: list[int] = []
    name = _SEGMENT_METHOD[op]
    real = getattr(shm.Segment, name)

    def recorded(self, *args):
        calls.append(args[-2].nbytes)
        return real(self, *args)

    monkeypatch.setattr(shm.Segment, name, recorded)
    return calls


def _auto_run(world, comm, op: str, per_rank_elements: int, sub=None):
    """``op`` under auto on a fresh subgroup (or ``sub``), its result checked against numpy."""
    sub = sub or world.split(0)
    count = comm.size * per_rank_elements
    x = np.full(count, comm.rank + 1, np.float32)
    got = getattr(reference, op)(x, group=sub)
    total = comm.size * (comm.size + 1) / 2
    want = {
        "all_sum": np.full(count, total),
        "all_max": np.full(count, comm.size),
        "all_gather": np.repeat(np.arange(1, comm.size + 1), count),
        "sum_scatter": np.full(per_rank_elements, total),
    }[op]
    np.testing.assert_array_equal(got, want.astype(np.float32))
    return sub, x.nbytes


@pytest.mark.parametrize("op", ["all_sum", "all_max", "all_gather", "sum_scatter"])
def test_auto_follows_its_measured_ranges(world, comm, plane, monkeypatch, op):
    """auto moves a payload in the op's ranges for the group's size (``auto_ranges``) through the
    segment (the ranks share a node and read each other here) and maps no segment for one
    outside; the result is right either way."""
    plane("auto")
    calls = _calls_through_segment(monkeypatch, op)
    for per_rank in (20_000, 300_000, 1_100_000):  # 80 KB to 4.4 MB a rank: past the inline limit
        calls.clear()
        sub, nbytes = _auto_run(world, comm, op, per_rank)
        bounds = dataplane.auto_ranges(sub.size())[op]
        in_range = bounds is not None and bounds[0] <= nbytes < bounds[1]
        assert bool(sub._segment) == in_range, (op, bounds, nbytes)
        if in_range and not sub._segment.single_copy:
            in_range = dataplane._in(dataplane.COPYING_RANGES, op, nbytes)
        assert calls == ([nbytes] if in_range else []), (op, nbytes, calls)


@pytest.mark.parametrize("op", ["all_sum", "all_gather", "sum_scatter"])
def test_auto_on_a_segment_that_copies_keeps_to_the_copying_ranges(
    world, comm, plane, monkeypatch, op
):
    """When the ranks cannot read each other, auto uses the segment only in COPYING_RANGES."""
    plane("auto")
    sub = world.split(0)
    sub._segment = shm.Segment.create(sub._comm, TimeoutError, single_copy=False)
    calls = _calls_through_segment(monkeypatch, op)
    for per_rank in (20_000, 300_000, 1_100_000):
        calls.clear()
        _, nbytes = _auto_run(world, comm, op, per_rank, sub)
        used = dataplane._in(dataplane.auto_ranges(sub.size()), op, nbytes) and dataplane._in(
            dataplane.COPYING_RANGES, op, nbytes
        )
        assert calls == ([nbytes] if used else []), (op, nbytes, calls)


def stall_on(rank_to_stall: int, comm, behaviour):
    """Make rank ``rank_to_stall``'s data phase run ``behaviour`` instead (other ranks: real)."""
    if comm.rank != rank_to_stall:
        return None
    original = shm.Segment.all_reduce
    shm.Segment.all_reduce = behaviour
    return original


@pytest.mark.parametrize("late", ["last", "first"])
def test_a_peer_that_stops_in_the_data_phase_is_named(world, comm, plane, path, late):
    """A rank that passed the agreement round but never moves its data: the others raise
    TimeoutError within the deadline naming exactly that rank, and the group is retired."""
    plane("shm")
    sub = small_chunk_group(world, path)
    stalled = comm.size - 1 if late == "last" else 0
    x = np.arange(20_000, dtype=np.float32)
    original = stall_on(stalled, comm, lambda self, kind, src, out: None)
    elapsed = 0.0
    try:
        previous = reference.set_timeout(SHORT)
        start = time.monotonic()
        outcome = attempt(reference.all_sum, x, group=sub)
        elapsed = time.monotonic() - start
        reference.set_timeout(previous)
    finally:
        if original is not None:
            shm.Segment.all_reduce = original
    sync(comm)
    if comm.rank == stalled:
        return
    after = attempt(reference.all_sum, x, group=sub)
    kind, message = outcome
    assert kind == "TimeoutError", outcome
    assert SHORT * 0.9 <= elapsed < SHORT + 10
    named = re.search(r"rank\(s\) ([\d, ]+) stopped", message)
    assert named is not None, message
    assert {int(r) for r in named.group(1).split(",")} == {stalled}
    assert "all_sum" in message and "shared memory" in message
    assert after[0] == "RuntimeError" and "timed out" in after[1]
    assert any(item is sub._segment for item in sub._orphans)


def test_a_late_peer_cannot_touch_results_already_returned(world, comm, plane, path):
    """Rank 0's data phase comes after the others gave up: it raises too (never a result), and
    when it finally writes the segment or reads its peers, nothing the others hold changes."""
    plane("shm")
    sub = small_chunk_group(world, path)
    good = [world_data(comm.size, (20000,), np.int32, salt)[comm.rank] for salt in range(2)]
    kept = reference.all_sum(good[0], group=sub)
    snapshot = kept.copy()
    late_rank = 0

    def late(self, kind, src, out):
        time.sleep(3 * SHORT)
        original(self, kind, src, out)

    original = stall_on(late_rank, comm, late)
    try:
        previous = reference.set_timeout(SHORT)
        outcome = attempt(reference.all_sum, good[1], group=sub)
        reference.set_timeout(previous)
    finally:
        if original is not None:
            shm.Segment.all_reduce = original
    sync(comm)
    outcomes = allgather(comm, outcome[0])
    assert all(kind == "TimeoutError" for kind in outcomes), outcomes
    assert kept.tobytes() == snapshot.tobytes()
    assert reference.all_sum(np.int32(1), group=world) == comm.size


class _SplitNode:
    """A communicator whose node-local split is smaller than itself: ranks on several nodes."""

    def __init__(self, comm) -> None:
        self._comm = comm

    def Ibarrier(self):
        return self._comm.Ibarrier()

    def Get_size(self) -> int:
        return self._comm.Get_size()

    def Split_type(self, split_type):
        return _OneRankNode()


class _OneRankNode:
    def Get_size(self) -> int:
        return 1

    def Free(self) -> None:
        pass


def test_a_group_spanning_nodes_never_maps_a_segment(world, comm, plane):
    """When the node-local split is smaller than the group, no segment is mapped and the
    collective moves its data over MPI, even with the shm plane forced."""
    plane("shm")
    assert shm.Segment.create(_SplitNode(comm), TimeoutError) is None
    sub = world.split(0)
    sub._segment = False  # what segment_for records for a group that spans nodes
    inputs = world_data(comm.size, (20000,), np.int32)  # past the inline limit
    got = reference.all_sum(inputs[comm.rank], group=sub)
    np.testing.assert_array_equal(got, expected_reduction("all_sum", inputs))
    assert sub._segment is False
