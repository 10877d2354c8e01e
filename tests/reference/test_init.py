"""init, is_available, Group construction, and the rules of singleton groups (reference.group)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from transport_helpers import DTYPES, allgather, encode

import reference
import reference.group
from reference.dtypes import NUMPY_DTYPES

OTHER_BACKENDS = ["ring", "nccl", "jaccl"]
COLLECTIVES = ["all_sum", "all_max", "all_min", "all_gather", "sum_scatter"]


@pytest.fixture
def fresh_init(monkeypatch):
    """init() starts from an empty cache (restored afterwards), as in a new process."""
    monkeypatch.setattr(reference.group, "_groups", {})


def test_init_is_cached_with_the_world_rank_and_size(comm, fresh_init):
    """init() again gives the same rank and size, and with peers the very same group object;
    init(backend="mpi") has the world's rank and size too."""
    first = reference.init()
    again = [reference.init(), reference.init(backend="any"), reference.init(False, "any")]
    if comm.size > 1:
        again.append(reference.init(strict=True))
    for group in again:
        assert (group.rank(), group.size()) == (comm.rank, comm.size)
        if comm.size > 1:
            assert group is first
    mpi = reference.init(backend="mpi")
    assert (mpi.rank(), mpi.size()) == (comm.rank, comm.size)
    if comm.size > 1:
        assert reference.init(backend="mpi") is mpi
    assert (first.rank(), first.size()) == (comm.rank, comm.size)


@pytest.mark.mpi(min_size=2)
def test_init_mpi_after_any_is_the_same_group(fresh_init):
    """The MPI world group is formed once, whichever of 'any' and 'mpi' is asked for first, and
    init() keeps returning the group it returned first."""
    first = reference.init()
    mpi = reference.init(backend="mpi")
    assert (mpi is first, reference.init() is first) == (True, True)


def test_every_rank_sees_the_same_world_size_and_distinct_ranks(comm):
    """The world group's ranks are 0..N-1, one per process, all reporting the same size."""
    group = reference.init()
    seen = allgather(comm, (group.rank(), group.size()))
    assert sorted(seen) == [(r, comm.size) for r in range(comm.size)]


@pytest.mark.parametrize("backend", ["any", "mpi"])
def test_strict_init_without_peers_is_a_runtime_error(comm, backend):
    """A world of one process cannot form an MPI group: strict init raises RuntimeError."""
    if comm.size > 1:
        pytest.skip("only a world of one process has no peers")
    with pytest.raises(RuntimeError) as caught:
        reference.init(strict=True, backend=backend)
    if backend == "any":
        assert str(caught.value) == "[distributed] Couldn't initialize any backend"
    else:
        assert "[mpi]" in str(caught.value)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backends_the_reference_lacks_give_a_singleton_or_strict_error(backend):
    """ring, nccl and jaccl are valid names but never available: singleton, or strict error."""
    group = reference.init(backend=backend)
    assert (group.rank(), group.size()) == (0, 1)
    with pytest.raises(RuntimeError, match=backend):
        reference.init(strict=True, backend=backend)


@pytest.mark.parametrize("bogus", ["bogus", "", "MPI", "any "])
def test_unknown_backend_name_is_mlx_value_error(bogus):
    """An unknown name raises ValueError with MLX's exact text."""
    with pytest.raises(ValueError) as caught:
        reference.init(backend=bogus)
    assert str(caught.value) == (
        "[distributed] The only valid values for backend are 'any', 'mpi', 'nccl', 'jaccl' and "
        f"'ring' but '{bogus}' was provided."
    )


@pytest.mark.parametrize("bad", [3, None, b"mpi", ["mpi"]], ids=["int", "None", "bytes", "list"])
def test_non_string_backend_is_a_type_error(bad):
    """init and is_available reject a backend that is not a str with TypeError."""
    with pytest.raises(TypeError):
        reference.init(backend=bad)
    with pytest.raises(TypeError):
        reference.is_available(bad)


def test_is_available_for_every_name():
    """any and mpi are built in (mpi4py is installed); the others and unknown names are not."""
    assert reference.is_available() is True
    assert reference.is_available("any") is True
    assert reference.is_available("mpi") is True
    for name in [*OTHER_BACKENDS, "bogus", ""]:
        assert reference.is_available(name) is False


def test_group_cannot_be_constructed():
    """Group() and Group(anything) raise TypeError: groups come from init() or split()."""
    with pytest.raises(TypeError):
        reference.Group()
    with pytest.raises(TypeError):
        reference.Group(0, 1)


@pytest.fixture
def singleton():
    """A singleton group at any world size: the reference cannot form a ring group."""
    return reference.init(backend="ring")


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("op", COLLECTIVES)
@pytest.mark.parametrize("shape", [(), (0,), (5, 3), (4,)], ids=str)
def test_singleton_collectives_are_the_identity(singleton, op, name, shape):
    """At size 1 every collective returns a copy of its input: same shape (0-d stays 0-d),
    dtype and bits."""
    x = encode(0, shape, NUMPY_DTYPES[name], salt=3)
    original = x.copy()
    result = getattr(reference, op)(x, group=singleton)
    assert type(result) is np.ndarray
    assert result.shape == shape and result.dtype == x.dtype
    assert result.tobytes() == original.tobytes()
    assert not np.shares_memory(result, x)
    assert x.tobytes() == original.tobytes()


@pytest.mark.parametrize("op", COLLECTIVES)
def test_singleton_collectives_convert_python_scalars(singleton, op):
    """Python scalars become MLX's dtypes even at size 1 (int -> int32, float -> float32)."""
    for value, dtype in ((7, np.int32), (1.5, np.float32), (True, np.bool_), (2j, np.complex64)):
        result = getattr(reference, op)(value, group=singleton)
        assert result.shape == () and result.dtype == dtype and result.item() == value


@pytest.mark.parametrize("op", COLLECTIVES)
def test_singleton_collectives_reject_unsupported_dtypes(singleton, op):
    """At size 1 an unsupported dtype is still a TypeError."""
    with pytest.raises(TypeError):
        getattr(reference, op)(np.zeros(3, np.complex128), group=singleton)


def test_singleton_send_and_recv_are_value_errors(singleton):
    """send, recv and recv_like on a singleton raise ValueError with MLX's texts."""
    x = np.arange(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"^Cannot send to a singleton group$"):
        reference.send(x, 0, group=singleton)
    with pytest.raises(ValueError, match=r"^Cannot recv from a singleton group$"):
        reference.recv((3,), "float32", 0, group=singleton)
    with pytest.raises(ValueError, match=r"^Cannot recv from a singleton group$"):
        reference.recv_like(x, 0, group=singleton)


def test_singleton_split_is_a_runtime_error(singleton):
    """A singleton group cannot be split (RuntimeError, MLX's text)."""
    with pytest.raises(RuntimeError, match=r"^Cannot split the distributed group further\.$"):
        singleton.split(0)
    with pytest.raises(RuntimeError):
        singleton.split(0, 0)


def test_group_and_stream_are_keyword_only(singleton):
    """Passing group or stream positionally is a TypeError; stream by keyword is ignored."""
    x = np.ones(2, np.float32)
    for op in COLLECTIVES:
        fn = getattr(reference, op)
        with pytest.raises(TypeError):
            fn(x, singleton)
        assert fn(x, group=singleton, stream=object()).tolist() == [1.0, 1.0]
    with pytest.raises(TypeError):
        reference.send(x, 0, singleton)
    with pytest.raises(TypeError):
        reference.recv((2,), "float32", 0, singleton)


def test_group_argument_must_be_a_group(singleton):
    """Anything but a Group or None as group= is a TypeError."""
    for op in COLLECTIVES:
        with pytest.raises(TypeError, match="group"):
            getattr(reference, op)(np.ones(2), group="world")


def test_bfloat16_through_a_singleton(singleton):
    """bfloat16 (ml_dtypes) round-trips through the identity collectives bit for bit."""
    x = np.array([1.5, -0.0, np.inf, np.nan], ml_dtypes.bfloat16)
    result = reference.all_max(x, group=singleton)
    assert result.dtype == x.dtype and result.tobytes() == x.tobytes()
